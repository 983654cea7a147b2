// Package istio installs, upgrades and removes an Istio control plane (the
// official base and istiod Helm charts) through the Helm SDK, without the
// helm or istioctl binaries.
//
// Usage:
//
//	in, err := istio.New(restConfig, istio.WithVersion("1.30.3"), istio.WithWorkloadCertTTL(time.Minute))
//	err = in.Install(ctx)   // base release (CRDs), then istiod release
//	err = in.WaitReady(ctx) // istiod rolled out, the injector injects this version's proxy
//	...
//	err = in.Uninstall(ctx, true) // releases, then every Istio leftover
//
// Render does what Install would apply, offline, like `helm template`.
// Upgrade upgrades in place; InstallCanary, RelabelNamespaces and
// RemoveRevision do a revision-based canary upgrade.
//
// # Why the Helm v4 SDK
//
//   - It is the version the project pins (helm.sh/helm/v4 v4.3.1 in go.mod),
//     so meshproof installs Istio exactly as `helm install` of that version
//     would, with the same template engine and sprig functions that Istio's
//     charts are written for (its zzz_profile.yaml merging trick relies on
//     them).
//   - It is a library: action.Install, action.Upgrade, action.Uninstall and
//     action.List run in-process against a *rest.Config (see
//     restClientGetter), so meshproof needs no binaries and works against a
//     test apiserver that has no kubeconfig file.
//   - It applies with server-side apply: in v4 action.NewInstall sets
//     ServerSideApply to true (matching the CLI default) and action.Upgrade
//     defaults to "auto", which keeps the apply method the release was
//     installed with. The API server then tracks field ownership: a field
//     another manager owns (istiod patches its webhooks at run time) is
//     reported as a conflict instead of silently overwritten, since
//     meshproof leaves ForceConflicts off.
//   - Its waiting is pluggable (kube.WaitStrategy): meshproof selects
//     kube.HookOnlyStrategy so that Install returns once the objects are
//     applied, and checks readiness in WaitReady, a separate phase with its
//     own bounded timeout and a precise error.
//   - Actions take a context (Install.RunWithContext, Upgrade.RunWithContext),
//     so cancellation and timeouts reach them.
//
// # Charts
//
// By default the charts of the selected version are pulled from Istio's
// chart repository (DefaultChartRepository) and cached as archives in
// $MESHPROOF_CACHE/charts/<version> or, by default,
// <user cache dir>/meshproof/charts/<version>. WithChartsDir uses a local
// directory with base/ and istiod/ instead (air-gapped users; the project's
// tests). Istio's charts ship no image hub/tag of a release, so global.hub
// and global.tag are always set (DefaultHub, and the Istio version).
//
// Release records are Helm's usual Secrets in the Istio namespace.
//
// # Whose Istio
//
// On a cluster meshproof did not create, Istio may be the user's. WithLedger
// makes an Installer act only on what a meshproof ledger (package
// harness/internal/ledger) lists: it records the releases it installs and the CRDs
// they create, refuses releases no ledger lists (ForeignReleasesError,
// unless WithAdoptReleases), uninstalls only its own releases and purges
// only its own CRDs, and only when no other Istio release is left.
// CheckInstall is install mode's check before anything is applied.
// Detect and UseExisting are use-existing mode: they read the installed
// control plane (version, revision, plugged CA, multi-root, health) and
// change nothing.
package istio
