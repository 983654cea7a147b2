package run

import (
	"context"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
)

// IstioCharts is the Istio a run installs on cluster c as its installer
// (harness/internal/mesh) makes it: the same charts, release names,
// namespace, revision, values and order, rendered without a cluster. It is
// for plan.WithIstioCharts, so that `meshproof plan -o yaml` prints the
// objects a run installs; an error says why the cluster's Istio settings
// cannot be used.
func IstioCharts(c *scenario.Cluster) (plan.IstioCharts, error) {
	in, err := mesh.Renderer(c)
	if err != nil {
		return nil, err
	}
	return istioCharts{in}, nil
}

// istioCharts is plan.IstioCharts over an Installer without a cluster.
type istioCharts struct{ in *istio.Installer }

func (ic istioCharts) Source() string     { return ic.in.ChartSource() }
func (ic istioCharts) Uncached() []string { return ic.in.UncachedCharts() }

func (ic istioCharts) Releases() []plan.Release {
	var out []plan.Release
	for _, r := range ic.in.ChartReleases() {
		out = append(out, plan.Release{Name: r.Name, Chart: r.Chart, Version: r.Version, Namespace: r.Namespace})
	}
	return out
}

func (ic istioCharts) Render(ctx context.Context) ([]plan.Release, error) {
	m, err := ic.in.Render(ctx)
	var out []plan.Release
	for _, r := range m.Releases() {
		out = append(out, plan.Release{Name: r.Name, Chart: r.Chart, Version: r.Version, Namespace: r.Namespace, Objects: r.Objects})
	}
	return out, err
}
