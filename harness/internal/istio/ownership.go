package istio

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/kube"
	"github.com/meshproof/meshproof/harness/internal/lease"
	"github.com/meshproof/meshproof/harness/internal/ledger"
)

// WithLedger makes the Installer act only on what meshproof owns, as the
// run's ledger and the ledgers of other runs on the cluster say:
//
//   - Install, Upgrade and InstallCanary record each release in l before
//     installing it, and the Istio CRDs the base release created (not those
//     that existed before). A release that exists but no ledger lists is
//     another installer's: it is refused with a *ForeignReleasesError,
//     unless WithAdoptReleases, and then upgraded but not recorded, so never
//     uninstalled.
//   - Uninstall uninstalls only the releases l lists; its purge runs only
//     when no Istio release is left in the namespace, and deletes only the
//     CRDs l lists (still with the UID recorded).
//
// Without a ledger the Installer treats every Istio release in its
// namespace as its own; that is only right on a cluster meshproof created.
func WithLedger(l *ledger.Ledger) Option { return func(s *settings) { s.ledger = l } }

// WithAdoptReleases lets an Installer with a ledger upgrade Istio releases
// no meshproof ledger lists (a user's), instead of refusing; it still
// never uninstalls them.
func WithAdoptReleases(adopt bool) Option { return func(s *settings) { s.adopt = adopt } }

// HelmRelease is a Helm release of one of Istio's charts.
type HelmRelease struct {
	Namespace    string
	Name         string
	Chart        string // base or istiod
	ChartVersion string
	AppVersion   string
	Status       string
	Revision     int // Helm's release revision (upgrade count), not Istio's
}

func (r HelmRelease) String() string {
	return fmt.Sprintf("%s (chart %s %s, %s)", r.Name, r.Chart, r.ChartVersion, r.Status)
}

// ForeignReleasesError is the refusal to install or upgrade over Istio
// releases that meshproof did not install.
type ForeignReleasesError struct {
	Namespace string
	Releases  []HelmRelease
}

func (e *ForeignReleasesError) Error() string {
	names := make([]string, len(e.Releases))
	for i, r := range e.Releases {
		names[i] = r.String()
	}
	return fmt.Sprintf("istio: namespace %s holds Istio Helm releases that meshproof did not install: %s. meshproof neither upgrades nor removes them. "+
		"To test this Istio as it is, set istio.mode: use-existing; to let meshproof upgrade them with its values (it will still never uninstall them), set istio.adoptReleases: true",
		e.Namespace, strings.Join(names, ", "))
}

// Releases lists the Helm releases of Istio's base and istiod charts in
// the namespace, in any state.
func (i *Installer) Releases(ctx context.Context) ([]HelmRelease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg, err := i.actionConfig()
	if err != nil {
		return nil, err
	}
	list := action.NewList(cfg)
	list.StateMask = action.ListAll
	rels, err := list.Run()
	if err != nil {
		return nil, fmt.Errorf("istio: listing helm releases in %s: %w", i.s.namespace, err)
	}
	var out []HelmRelease
	for _, r := range rels {
		rel, ok := r.(*release.Release)
		if !ok || rel.Chart == nil || rel.Chart.Metadata == nil {
			continue
		}
		md := rel.Chart.Metadata
		if md.Name != baseChart && md.Name != istiodChart {
			continue
		}
		hr := HelmRelease{Namespace: rel.Namespace, Name: rel.Name, Chart: md.Name, ChartVersion: md.Version, AppVersion: md.AppVersion, Revision: rel.Version}
		if rel.Info != nil {
			hr.Status = rel.Info.Status.String()
		}
		out = append(out, hr)
	}
	slices.SortFunc(out, func(a, b HelmRelease) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// ForeignReleases lists the Istio releases in the namespace that no
// meshproof ledger on the cluster lists: another installer's (a user's
// `helm install`, or istioctl's).
func (i *Installer) ForeignReleases(ctx context.Context) ([]HelmRelease, error) {
	rels, err := i.Releases(ctx)
	if err != nil {
		return nil, err
	}
	owned, err := i.ownedReleases(ctx)
	if err != nil {
		return nil, err
	}
	var foreign []HelmRelease
	for _, r := range rels {
		if !owned[ledger.Release{Namespace: r.Namespace, Name: r.Name}] {
			foreign = append(foreign, r)
		}
	}
	return foreign, nil
}

// CheckInstall is install mode's precondition: it fails with a
// *ForeignReleasesError when the namespace holds Istio releases meshproof
// did not install, unless WithAdoptReleases. It changes nothing.
func (i *Installer) CheckInstall(ctx context.Context) error {
	foreign, err := i.ForeignReleases(ctx)
	if err != nil {
		return err
	}
	if len(foreign) == 0 {
		return nil
	}
	if i.s.adopt {
		for _, r := range foreign {
			i.s.log.Info("adopting a release as the file allows: it will be upgraded, never uninstalled", "release", r)
		}
		return nil
	}
	return &ForeignReleasesError{Namespace: i.s.namespace, Releases: foreign}
}

// ownedReleases is the set of releases any meshproof ledger on the
// cluster lists.
func (i *Installer) ownedReleases(ctx context.Context) (map[ledger.Release]bool, error) {
	c, err := i.ledgerClient()
	if err != nil {
		return nil, err
	}
	ns := lease.Namespace
	if i.s.ledger != nil {
		ns = i.s.ledger.Namespace()
	}
	ids, err := ledger.List(ctx, c, ledger.WithNamespace(ns))
	if err != nil {
		return nil, err
	}
	owned := map[ledger.Release]bool{}
	for _, id := range ids {
		l, err := ledger.Load(ctx, c, id, ledger.WithNamespace(ns))
		if err != nil {
			return nil, err
		}
		for _, r := range l.Record().Releases {
			owned[r] = true
		}
	}
	if i.s.ledger != nil {
		for _, r := range i.s.ledger.Record().Releases {
			owned[r] = true
		}
	}
	return owned, nil
}

func (i *Installer) ledgerClient() (client.Client, error) {
	if i.restConfig == nil {
		return nil, errNoCluster
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(i.restConfig, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("istio: creating client: %w", err)
	}
	return c, nil
}

// claimRelease is called before a release is installed or upgraded by an
// Installer with a ledger: a new release is recorded first; an existing
// one must be meshproof's, or adopted.
func (i *Installer) claimRelease(ctx context.Context, cfg *action.Configuration, name string) error {
	if i.s.ledger == nil {
		return nil
	}
	r := ledger.Release{Namespace: i.s.namespace, Name: name}
	if _, err := cfg.Releases.History(name); errors.Is(err, driver.ErrReleaseNotFound) {
		return i.s.ledger.RecordRelease(ctx, r.Namespace, r.Name)
	} else if err != nil {
		return fmt.Errorf("istio: reading the history of release %s in %s: %w", name, i.s.namespace, err)
	}
	owned, err := i.ownedReleases(ctx)
	if err != nil {
		return err
	}
	if owned[r] {
		return nil
	}
	if i.s.adopt {
		i.s.log.Info("adopting a release meshproof did not install: upgrading it, never uninstalling it", "release", name)
		return nil
	}
	rels, err := i.Releases(ctx)
	if err != nil {
		return err
	}
	foreign := &ForeignReleasesError{Namespace: i.s.namespace}
	for _, rel := range rels {
		if !owned[ledger.Release{Namespace: rel.Namespace, Name: rel.Name}] {
			foreign.Releases = append(foreign.Releases, rel)
		}
	}
	return foreign
}

// istioCRDNames lists the names of the Istio CRDs on the cluster.
func (i *Installer) istioCRDNames(ctx context.Context) (map[string]bool, error) {
	if i.s.ledger == nil {
		return nil, nil
	}
	dc, err := i.dynamicClient()
	if err != nil {
		return nil, err
	}
	objs, err := listIstio(ctx, dc, crdKind)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, o := range objs {
		names[o.GetName()] = true
	}
	return names, nil
}

// recordNewCRDs records in the ledger the Istio CRDs that exist now and
// did not before (the base release just created them).
func (i *Installer) recordNewCRDs(ctx context.Context, before map[string]bool) error {
	if i.s.ledger == nil {
		return nil
	}
	now, err := i.istioCRDNames(ctx)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(now)) {
		if !before[name] {
			if err := i.s.ledger.RecordCRD(ctx, name); err != nil {
				return err
			}
		}
	}
	return nil
}

// ownRelease reports whether an Installer may uninstall release name:
// always without a ledger, else only when the ledger lists it.
func (i *Installer) ownRelease(name string) bool {
	if i.s.ledger == nil {
		return true
	}
	return slices.Contains(i.s.ledger.Record().Releases, ledger.Release{Namespace: i.s.namespace, Name: name})
}

// purgeableCRD reports whether purge may delete a CRD: always without a
// ledger, else only one the ledger lists with the same UID.
func (i *Installer) purgeableCRD(name, uid string) bool {
	if i.s.ledger == nil {
		return true
	}
	return slices.ContainsFunc(i.s.ledger.Record().CRDs, func(o ledger.Object) bool { return o.Name == name && string(o.UID) == uid })
}

// UninstallRelease uninstalls one release a ledger lists; it is what
// ledger.Undo takes as its Uninstaller for Istio's releases.
func (i *Installer) UninstallRelease(ctx context.Context, r ledger.Release) error {
	if r.Namespace != i.s.namespace {
		return fmt.Errorf("istio: release %s/%s is not in this Installer's namespace %s", r.Namespace, r.Name, i.s.namespace)
	}
	return i.uninstallRelease(ctx, r.Name)
}
