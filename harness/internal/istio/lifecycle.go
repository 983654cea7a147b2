package istio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"helm.sh/helm/v4/pkg/action"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/kube"
	release "helm.sh/helm/v4/pkg/release/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshproof/meshproof/harness/ownership"
)

// actionConfig returns a fresh Helm action configuration for one operation:
// release records in Secrets (the "secret" driver, Helm's default) in the
// Installer's namespace. Fresh per operation because a configuration caches
// the cluster's capabilities, which change once the CRDs exist.
func (i *Installer) actionConfig() (*action.Configuration, error) {
	if i.getter == nil {
		return nil, errNoCluster
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(i.helmLogHandler()))
	if err := cfg.Init(i.getter, i.s.namespace, "secret"); err != nil {
		return nil, fmt.Errorf("initialising helm: %w", err)
	}
	return cfg, nil
}

func (i *Installer) clientset() (*kubernetes.Clientset, error) {
	if i.restConfig == nil {
		return nil, errNoCluster
	}
	cs, err := kubernetes.NewForConfig(i.restConfig)
	if err != nil {
		return nil, fmt.Errorf("creating kubernetes client: %w", err)
	}
	return cs, nil
}

// planeCharts are the charts of one control plane by chart name; cni and
// ztunnel only for ambient mode.
type planeCharts map[string]*chart.Chart

// loadCharts loads every chart of control plane p before anything touches
// the cluster, so that a bad chart source fails without a half install.
func (i *Installer) loadCharts(p plane) (planeCharts, error) {
	pc := planeCharts{}
	for _, r := range i.releasesOf(p) {
		ch, err := p.charts.load(r.Chart)
		if err != nil {
			return nil, err
		}
		pc[r.Chart] = ch
	}
	return pc, nil
}

// applyReleases installs or upgrades the releases of control plane p in
// releasesOf's order, Istio's documented one: base (the CRDs, which the
// API server must know before anything uses them), istiod, then for
// ambient mode istio-cni, so that no ambient pod starts before something
// redirects its traffic, and ztunnel after istiod, whose xDS and CA it
// needs. Readiness is WaitReady's, in the same order.
func (i *Installer) applyReleases(ctx context.Context, pc planeCharts, p plane, apply func(context.Context, *chart.Chart, string, map[string]any) error, verb string, attrs ...any) error {
	for _, r := range i.releasesOf(p) {
		log := i.s.log.With("release", r.Name, "version", p.version).With(attrs...)
		switch r.Chart {
		case baseChart:
			log.Info(verb+" Istio's CRDs", "namespace", r.Namespace)
		case istiodChart:
			log.Info(verb+" istiod", "revision", revisionLabelValue(p.revision))
		case cniChart:
			log.Info(verb+" the istio-cni node agent", "profile", AmbientProfile)
		default:
			log.Info(verb+" "+r.Chart, "profile", AmbientProfile)
		}
		if err := apply(ctx, pc[r.Chart], r.Name, r.values); err != nil {
			return err
		}
		if r.Chart == baseChart {
			i.getter.resetMapper()
		}
	}
	return nil
}

// Install installs the base release (CRDs, default validating webhook) and
// then the istiod release (and for ambient mode istio-cni and ztunnel),
// creating the namespace if it is missing. It does
// not wait for istiod to run: that is WaitReady, a separate phase, because
// applying and becoming ready fail for different reasons (API objects versus
// images, scheduling, webhooks).
func (i *Installer) Install(ctx context.Context) error {
	if i.getter == nil {
		return errNoCluster
	}
	pc, err := i.loadCharts(i.current)
	if err != nil {
		return err
	}
	if err := i.ensureNamespace(ctx); err != nil {
		return err
	}
	return i.applyReleases(ctx, pc, i.current, i.installRelease, "installing")
}

// Upgrade upgrades the control plane in place to toVersion: base (CRDs)
// first, then istiod, keeping the revision. chartsDir holds the target
// version's base/ and istiod/ charts; "" pulls them from the chart
// repository. Image tags follow toVersion.
func (i *Installer) Upgrade(ctx context.Context, toVersion, chartsDir string) error {
	if i.getter == nil {
		return errNoCluster
	}
	if i.canary != nil {
		return fmt.Errorf("istio: a canary (revision %q) is in progress: finish it with RemoveRevision before an in-place upgrade", i.canary.revision)
	}
	target, err := i.targetPlane(i.current.revision, toVersion, chartsDir)
	if err != nil {
		return err
	}
	pc, err := i.loadCharts(target)
	if err != nil {
		return err
	}
	// Istio's upgrade guides: the CRDs, then the control plane, then
	// istio-cni, then ztunnel (whose pods' restart resets the connections
	// they carry).
	if err := i.applyReleases(ctx, pc, target, i.upgradeRelease, "upgrading", "from", i.current.version); err != nil {
		return err
	}
	i.current = target
	return nil
}

// InstallCanary starts a canary upgrade: it upgrades the base release (CRDs)
// to toVersion's charts, keeping the current control plane as the default
// revision, and installs a second istiod release for revision next to the
// current one. Then: RelabelNamespaces(ctx, revision, ...), restart the
// workloads (the caller's job), and RemoveRevision(ctx, oldRevision).
func (i *Installer) InstallCanary(ctx context.Context, revision, toVersion, chartsDir string) error {
	if i.getter == nil {
		return errNoCluster
	}
	if revision == "" {
		return errors.New("istio: a canary needs a revision name (e.g. 1-30-3)")
	}
	if err := validateRevision(revision); err != nil {
		return fmt.Errorf("istio: %w", err)
	}
	if revision == i.current.revision {
		return fmt.Errorf("istio: revision %q is already the current control plane", revision)
	}
	if i.canary != nil {
		return fmt.Errorf("istio: canary revision %q is already installed", i.canary.revision)
	}
	if i.s.ambient {
		return errors.New("istio: a canary upgrade of ambient mode is not supported: istio-cni and ztunnel serve every revision of a node and are upgraded in place (use Upgrade)")
	}
	target, err := i.targetPlane(revision, toVersion, chartsDir)
	if err != nil {
		return err
	}
	pc, err := i.loadCharts(target)
	if err != nil {
		return err
	}
	i.s.log.Info("upgrading Istio's CRDs for a canary", "release", BaseReleaseName, "to", toVersion, "revision", revision)
	if err := i.upgradeRelease(ctx, pc[baseChart], BaseReleaseName, i.baseValues(i.current.revision)); err != nil {
		return err
	}
	i.getter.resetMapper()
	name := istiodReleaseName(revision)
	i.s.log.Info("installing a canary istiod", "release", name, "version", toVersion)
	if err := i.installRelease(ctx, pc[istiodChart], name, i.istiodValues(target)); err != nil {
		return err
	}
	i.canary = &target
	return nil
}

// RelabelNamespaces moves namespaces to revision's injector: it removes the
// istio-injection label (which would take precedence) and sets
// istio.io/rev=<revision> ("default" for ""). Running pods keep their old
// sidecars until restarted.
func (i *Installer) RelabelNamespaces(ctx context.Context, revision string, namespaces ...string) error {
	cs, err := i.clientset()
	if err != nil {
		return err
	}
	if revision == "default" {
		revision = ""
	}
	if err := validateRevision(revision); err != nil {
		return fmt.Errorf("istio: %w", err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{
		"istio-injection": nil, // JSON merge patch: null removes the label
		"istio.io/rev":    revisionLabelValue(revision),
	}}})
	if err != nil {
		return err
	}
	for _, ns := range namespaces {
		if _, err := cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("istio: relabelling namespace %s for revision %q: %w", ns, revisionLabelValue(revision), err)
		}
	}
	return nil
}

// RemoveRevision uninstalls the istiod release of revision ("" or "default"
// for the unrevisioned one). Removing the current control plane after
// InstallCanary completes the canary: the canary becomes the current control
// plane and the base release's default validator is repointed at it.
// Removing the canary instead rolls it back.
func (i *Installer) RemoveRevision(ctx context.Context, revision string) error {
	if i.getter == nil {
		return errNoCluster
	}
	if revision == "default" {
		revision = ""
	}
	switch {
	case i.canary != nil && revision == i.canary.revision:
		if err := i.uninstallRelease(ctx, istiodReleaseName(revision)); err != nil {
			return err
		}
		i.canary = nil
		return nil
	case i.canary != nil && revision == i.current.revision:
		if err := i.uninstallRelease(ctx, istiodReleaseName(revision)); err != nil {
			return err
		}
		next := *i.canary
		base, err := next.charts.load(baseChart)
		if err != nil {
			return err
		}
		i.s.log.Info("making a revision the default", "revision", revisionLabelValue(next.revision), "release", BaseReleaseName)
		if err := i.upgradeRelease(ctx, base, BaseReleaseName, i.baseValues(next.revision)); err != nil {
			return err
		}
		i.current, i.canary = next, nil
		return nil
	default:
		canary := "none"
		if i.canary != nil {
			canary = revisionLabelValue(i.canary.revision)
		}
		return fmt.Errorf("istio: revision %q is not one this Installer can remove (current %q, canary %s): remove the old revision only after InstallCanary, or use Uninstall",
			revisionLabelValue(revision), revisionLabelValue(i.current.revision), canary)
	}
}

// Uninstall uninstalls every istiod release and then the base release in
// the namespace (like `helm uninstall`, which keeps Istio's CRDs because the
// chart marks them helm.sh/resource-policy=keep). With purge it also deletes
// whatever Istio leaves behind, like `istioctl uninstall --purge`: every
// *.istio.io CRD, Istio's webhook configurations, validating admission
// policies, ClusterRoles and ClusterRoleBindings, istio GatewayClasses, the
// istio-ca-root-cert ConfigMaps istiod copies into every namespace, and the
// namespace itself if meshproof created it.
func (i *Installer) Uninstall(ctx context.Context, purge bool) error {
	cfg, err := i.actionConfig()
	if err != nil {
		return err
	}
	list := action.NewList(cfg)
	list.StateMask = action.ListAll
	rels, err := list.Run()
	if err != nil {
		return fmt.Errorf("istio: listing helm releases in %s: %w", i.s.namespace, err)
	}
	// Removed in the reverse of Istio's install order: ztunnel, istio-cni,
	// then every istiod, then base (Istio's ambient uninstall guide).
	var ztunnels, cnis, istiods, bases []string
	for _, r := range rels {
		rel, ok := r.(*release.Release)
		if !ok || rel.Chart == nil || rel.Chart.Metadata == nil {
			continue
		}
		if !i.ownRelease(rel.Name) {
			i.s.log.Info("keeping a release meshproof's ledger does not list", "release", rel.Name)
			continue
		}
		switch rel.Chart.Metadata.Name {
		case ztunnelChart:
			ztunnels = append(ztunnels, rel.Name)
		case cniChart:
			cnis = append(cnis, rel.Name)
		case istiodChart:
			istiods = append(istiods, rel.Name)
		case baseChart:
			bases = append(bases, rel.Name)
		}
	}
	// Keep going on errors: an uninstall is often cleanup after a failure,
	// and everything removable should go.
	var errs []error
	for _, name := range slices.Concat(ztunnels, cnis, istiods, bases) {
		i.s.log.Info("uninstalling", "release", name)
		if err := i.uninstallRelease(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	i.canary = nil
	if purge && i.s.ledger != nil {
		// Istio's CRDs and cluster objects serve every release left.
		left, err := i.Releases(ctx)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if len(left) > 0 {
			i.s.log.Info("not purging Istio's CRDs and cluster objects: releases meshproof did not install still use them", "releases", left)
			purge = false
		}
	}
	if purge {
		if err := i.purge(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (i *Installer) targetPlane(revision, version, chartsDir string) (plane, error) {
	if err := validateVersion(version); err != nil {
		return plane{}, fmt.Errorf("istio: %w", err)
	}
	src, err := newChartSource(version, chartsDir, i.s.chartRepository, i.s.chartCacheDir, i.s.chartNames())
	if err != nil {
		return plane{}, err
	}
	return plane{revision: revision, version: version, tag: version, charts: src}, nil
}

func (i *Installer) installRelease(ctx context.Context, ch *chart.Chart, name string, values map[string]any) error {
	cfg, err := i.actionConfig()
	if err != nil {
		return err
	}
	if err := i.claimRelease(ctx, cfg, name); err != nil {
		return err
	}
	// A reused cluster already has the release from an earlier run: an
	// upgrade to the same or another version converges on what was asked,
	// where an install would fail on the name.
	if _, err := cfg.Releases.Deployed(name); err == nil {
		i.s.log.Info("release already deployed (a reused cluster): upgrading it in place", "release", name)
		return i.upgradeRelease(ctx, ch, name, values)
	}
	ctx, cancel := context.WithTimeout(ctx, i.s.operationTimeout)
	defer cancel()
	in := action.NewInstall(cfg)
	in.ReleaseName = name
	in.Namespace = i.s.namespace
	in.Timeout = i.s.operationTimeout
	// Readiness is WaitReady's job; HookOnly makes Helm apply and return
	// (the charts have no hooks).
	in.WaitStrategy = kube.HookOnlyStrategy
	in.ServerSideApply = true
	in.PostRenderer = i.s.postRenderer
	crdsBefore, err := i.istioCRDNames(ctx)
	if err != nil {
		return err
	}
	if _, err := in.RunWithContext(ctx, ch, values); err != nil {
		return fmt.Errorf("istio: helm install %s (chart %s %s) in %s: %w", name, ch.Name(), ch.Metadata.Version, i.s.namespace, err)
	}
	return i.recordNewCRDs(ctx, crdsBefore)
}

func (i *Installer) upgradeRelease(ctx context.Context, ch *chart.Chart, name string, values map[string]any) error {
	cfg, err := i.actionConfig()
	if err != nil {
		return err
	}
	if err := i.claimRelease(ctx, cfg, name); err != nil {
		return err
	}
	crdsBefore, err := i.istioCRDNames(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, i.s.operationTimeout)
	defer cancel()
	up := action.NewUpgrade(cfg)
	up.Namespace = i.s.namespace
	up.Timeout = i.s.operationTimeout
	up.WaitStrategy = kube.HookOnlyStrategy
	// meshproof computes the complete values every time; values stored in
	// the previous release must not leak into the new one.
	up.ResetValues = true
	// "auto" keeps the apply method the release was installed with:
	// server-side apply for releases meshproof installed.
	up.ServerSideApply = "auto"
	up.PostRenderer = i.s.postRenderer
	if _, err := up.RunWithContext(ctx, name, ch, values); err != nil {
		return fmt.Errorf("istio: helm upgrade %s (chart %s %s) in %s: %w", name, ch.Name(), ch.Metadata.Version, i.s.namespace, err)
	}
	return i.recordNewCRDs(ctx, crdsBefore)
}

func (i *Installer) uninstallRelease(ctx context.Context, name string) error {
	cfg, err := i.actionConfig()
	if err != nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.WaitStrategy = kube.HookOnlyStrategy
	un.Timeout = i.s.operationTimeout
	un.IgnoreNotFound = true
	un.DeletionPropagation = "background"
	// Uninstall.Run takes no context; run it aside so that ctx still bounds
	// the caller's wait.
	done := make(chan error, 1)
	go func() {
		_, err := un.Run(name)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("istio: helm uninstall %s in %s: %w", name, i.s.namespace, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("istio: helm uninstall %s in %s: %w", name, i.s.namespace, ctx.Err())
	}
}

// ensureNamespace creates the Istio namespace if it is missing. With the
// run's ledger it is recorded first and created with the run's labels, as
// the run's other namespaces are: teardown deletes it, with what istiod
// wrote into it (leader-election and CA ConfigMaps, istio-ca-secret), from a
// cluster that stays, and the next run's sweep of leftovers waits until it
// is gone before installing into it. Without a ledger it is labelled as
// meshproof's, so that a purge removes it and nothing else.
func (i *Installer) ensureNamespace(ctx context.Context) error {
	if i.s.ledger != nil {
		if _, err := i.s.ledger.EnsureNamespace(ctx, i.s.namespace, nil); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
		return nil
	}
	cs, err := i.clientset()
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Get(ctx, i.s.namespace, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("istio: reading namespace %s: %w", i.s.namespace, err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   i.s.namespace,
		Labels: map[string]string{ownership.ManagedByLabel: ownership.ManagedByValue},
	}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("istio: creating namespace %s: %w", i.s.namespace, err)
	}
	return nil
}
