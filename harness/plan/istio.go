package plan

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// IstioCharts is what a run's installer makes of Istio's charts on one
// cluster: where they come from, its Helm releases in install order, and
// their objects rendered with its values. run.IstioCharts is the run's own
// (harness/internal/mesh's installer), for WithIstioCharts.
type IstioCharts interface {
	// Source says where the charts come from, as the run resolves them.
	Source() string
	// Releases are the Helm releases in install order, without objects.
	Releases() []Release
	// Uncached are the charts that come from a chart repository and are
	// not in meshproof's cache yet: installing or rendering pulls them.
	Uncached() []string
	// Render renders the releases' objects; on an error, it returns the
	// releases it rendered before it, in order.
	Render(ctx context.Context) ([]Release, error)
}

// WithIstioCharts has the plan show, for each cluster whose file has
// meshproof install Istio, the Helm releases charts(cluster) says a run
// installs there, where their charts come from, and (RenderCharts) their
// objects. `meshproof plan` passes run.IstioCharts, the run's installer.
// Without it the plan names no release and renders none.
func WithIstioCharts(charts func(*scenario.Cluster) (IstioCharts, error)) Option {
	return func(o *options) { o.charts = charts }
}

// IstioInstall is the Istio a run installs on a cluster whose file has
// meshproof install it (never on one that says use-existing): Istio's
// namespace, and the Helm releases of Istio's charts in the order the run
// installs them, with the values it gives them (WithIstioCharts).
type IstioInstall struct {
	// Namespace is Istio's namespace as the run creates it when it is
	// missing: labelled as the run's, so that teardown deletes it.
	Namespace *corev1.Namespace
	// Charts says where the charts come from, as the run resolves them:
	// istio.charts, else $MESHPROOF_ISTIO_CHARTS/<version>, else Istio's
	// chart repository and meshproof's cache of it.
	Charts string
	// Releases are the Helm releases, in install order: base, istiod, and
	// for ambient mode istio-cni then ztunnel.
	Releases []Release
	// Err says why the releases without objects have none: the charts
	// could not be found, pulled or rendered (RenderCharts), the installer
	// refused the cluster's Istio settings (Build), or the plan was built
	// without WithIstioCharts.
	Err error

	charts IstioCharts
}

// Release is one Helm release of Istio's charts a run installs.
type Release struct {
	Name      string // the Helm release, e.g. "istiod"
	Chart     string // "base", "istiod", "cni" or "ztunnel"
	Version   string // Istio version of the chart
	Namespace string
	// Objects are what the release applies, rendered from its chart with
	// the run's values as `helm template` renders them, in Helm's install
	// order; none until RenderCharts, or when it could not render them
	// (IstioInstall.Err says why).
	Objects []*unstructured.Unstructured
}

// String names the release as the plan's outputs do.
func (r Release) String() string {
	return fmt.Sprintf("chart %s %s (release %s, namespace %s)", r.Chart, r.Version, r.Name, r.Namespace)
}

// errNotRendered is why a release has no objects before RenderCharts.
var errNotRendered = errors.New("the plan was built without rendering Istio's charts (Plan.RenderCharts)")

// errNoCharts is why a plan built without WithIstioCharts shows no release.
var errNoCharts = errors.New("the plan was built without Istio's charts (plan.WithIstioCharts)")

// istioInstall plans the Istio install of c, or returns nil when c's file
// says to use the Istio already there.
func istioInstall(c *scenario.Cluster, runID string, charts func(*scenario.Cluster) (IstioCharts, error)) *IstioInstall {
	if c.Istio.Mode == scenario.IstioUseExisting {
		return nil
	}
	in := &IstioInstall{
		Namespace: &corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: scenario.IstioRootNamespace, Labels: ownership.Labels(runID)},
		},
	}
	if charts == nil {
		in.Err = errNoCharts
		in.Charts = "the charts a run takes (istio.charts, else $MESHPROOF_ISTIO_CHARTS/<version>, else Istio's chart repository)"
		if c.Istio.Charts != "" {
			in.Charts = c.Istio.Charts
		}
		return in
	}
	ic, err := charts(c)
	if err != nil {
		in.Err = err
		in.Charts = "(unknown: " + err.Error() + ")"
		return in
	}
	in.charts = ic
	in.Charts = ic.Source()
	in.Releases = ic.Releases()
	return in
}

// RenderCharts renders the objects of every Istio release the plan
// installs, from the charts the run would use, with the run's values: a
// local directory, or Istio's chart repository through meshproof's cache
// (pulled into it when missing, as a run does). A cluster whose charts
// cannot be had or rendered keeps the releases it could not render without
// objects, and its IstioInstall.Err says why; RenderCharts returns those
// reasons joined, for the caller to show, and the plan stays whole:
// WriteYAML names each missing release and why it is missing.
func (p *Plan) RenderCharts(ctx context.Context) error {
	var errs []error
	for i := range p.Clusters {
		in := p.Clusters[i].Istio
		if in == nil || in.charts == nil {
			continue
		}
		rendered, err := in.charts.Render(ctx)
		for j := range in.Releases {
			in.Releases[j].Objects = nil
			for _, r := range rendered {
				if r.Name == in.Releases[j].Name {
					in.Releases[j].Objects = r.Objects
				}
			}
		}
		in.Err = err
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: Istio's charts: %w", p.Clusters[i].Cluster.Name, err))
		}
	}
	return errors.Join(errs...)
}

// missing are the releases without objects and why they have none.
func (in *IstioInstall) missing() ([]string, error) {
	var names []string
	for _, r := range in.Releases {
		if len(r.Objects) == 0 {
			names = append(names, r.Name)
		}
	}
	why := in.Err
	if why == nil {
		why = errNotRendered
	}
	return names, why
}

// uncached says which charts a run (and RenderCharts) must pull first,
// when they come from Istio's chart repository and are not in meshproof's
// cache yet.
func (in *IstioInstall) uncached() string {
	if in.charts == nil {
		return ""
	}
	missing := in.charts.Uncached()
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf(" (charts %s are not in the cache yet: the run pulls them, and so does `plan -o yaml` to render them)", strings.Join(missing, ", "))
}

// describeReleases lists the releases for the text plan, in order.
func (in *IstioInstall) describeReleases() string {
	var rs []string
	for _, r := range in.Releases {
		rs = append(rs, fmt.Sprintf("%s (chart %s %s)", r.Name, r.Chart, r.Version))
	}
	ns := scenario.IstioRootNamespace
	if len(in.Releases) > 0 {
		ns = in.Releases[0].Namespace
	}
	return fmt.Sprintf("Helm releases, in this order, in namespace %s: %s", ns, strings.Join(rs, ", "))
}
