package istio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Manifests are the rendered objects of the releases of a control plane,
// as `helm template` would print them; CNI and Ztunnel only for ambient
// mode (empty otherwise).
type Manifests struct {
	Base    RenderedRelease
	Istiod  RenderedRelease
	CNI     RenderedRelease
	Ztunnel RenderedRelease
}

// Releases are the rendered releases in install order (after an error
// of Render, those rendered before it).
func (m Manifests) Releases() []RenderedRelease {
	var out []RenderedRelease
	for _, r := range []RenderedRelease{m.Base, m.Istiod, m.CNI, m.Ztunnel} {
		if r.Name != "" {
			out = append(out, r)
		}
	}
	return out
}

// RenderedRelease is the rendered manifest of one Helm release.
type RenderedRelease struct {
	ChartRelease
	// YAML is the multi-document manifest Helm applies.
	YAML string
	// Objects are the documents of YAML, in order.
	Objects []*unstructured.Unstructured
}

// Find returns the object of the given kind and name (namespace is not
// compared: each release lives in one namespace), or nil.
func (r RenderedRelease) Find(kind, name string) *unstructured.Unstructured {
	for _, o := range r.Objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// OfKind returns the objects of the given kind.
func (r RenderedRelease) OfKind(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range r.Objects {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// ChartRelease is one Helm release of a control plane, named as Install
// names it.
type ChartRelease struct {
	Name      string // Helm release name, e.g. "istio-base", "istiod-canary"
	Namespace string
	Chart     string // "base", "istiod", "cni" or "ztunnel"
	Version   string // Istio version of the chart
}

// releaseValues is a release of a control plane with its values.
type releaseValues struct {
	ChartRelease
	values map[string]any
}

// releasesOf are the releases of control plane p in the order Install
// and Upgrade apply them (base, istiod, and for ambient mode istio-cni then
// ztunnel), each with the values they give it: the one list Install,
// Upgrade and Render follow.
func (i *Installer) releasesOf(p plane) []releaseValues {
	rel := func(name, chartName string, values map[string]any) releaseValues {
		return releaseValues{ChartRelease{Name: name, Namespace: i.s.namespace, Chart: chartName, Version: p.version}, values}
	}
	out := []releaseValues{
		rel(BaseReleaseName, baseChart, i.baseValues(p.revision)),
		rel(istiodReleaseName(p.revision), istiodChart, i.istiodValues(p)),
	}
	if i.s.ambient {
		out = append(out, rel(CNIReleaseName, cniChart, i.cniValues(p)), rel(ZtunnelReleaseName, ztunnelChart, i.ztunnelValues(p)))
	}
	return out
}

// ChartReleases are the releases Install installs, in its order: base
// (CRDs), istiod, and for ambient mode istio-cni then ztunnel.
func (i *Installer) ChartReleases() []ChartRelease {
	var out []ChartRelease
	for _, r := range i.releasesOf(i.current) {
		out = append(out, r.ChartRelease)
	}
	return out
}

// ChartSource says where the Installer's charts come from: a local
// directory, or a chart repository with the cache its archives are pulled
// into.
func (i *Installer) ChartSource() string { return i.current.charts.describe() }

// UncachedCharts are the charts of the control plane that come from a
// chart repository and are not in the cache yet: Install and Render pull
// them first. None for local charts.
func (i *Installer) UncachedCharts() []string {
	src := i.current.charts
	if src.dir != "" {
		return nil
	}
	var out []string
	for _, r := range i.releasesOf(i.current) {
		if _, err := os.Stat(src.archivePath(r.Chart)); err != nil {
			out = append(out, r.Chart)
		}
	}
	return out
}

// Render renders the base and istiod releases (and for ambient mode the
// istio-cni and ztunnel ones) with the Installer's values, without a
// cluster (like `helm template`). It is what Install would apply. On an
// error (a chart that cannot be loaded or pulled, values a template
// refuses), the releases rendered before it are returned with it, in
// order; ChartReleases says which ones follow.
func (i *Installer) Render(ctx context.Context) (Manifests, error) {
	var m Manifests
	for _, r := range i.releasesOf(i.current) {
		rendered, err := i.renderRelease(ctx, i.current.charts, r.ChartRelease, r.values)
		if err != nil {
			return m, err
		}
		switch r.Chart {
		case baseChart:
			m.Base = rendered
		case istiodChart:
			m.Istiod = rendered
		case cniChart:
			m.CNI = rendered
		case ztunnelChart:
			m.Ztunnel = rendered
		}
	}
	return m, nil
}

func (i *Installer) renderRelease(ctx context.Context, src chartSource, planned ChartRelease, values map[string]any) (RenderedRelease, error) {
	chartName, releaseName := planned.Chart, planned.Name
	ch, err := src.load(chartName)
	if err != nil {
		return RenderedRelease{}, err
	}
	// A fresh configuration per render: a client-side dry run replaces the
	// configuration's kube client and release store with offline fakes.
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(i.helmLogHandler()))
	in := action.NewInstall(cfg)
	in.DryRunStrategy = action.DryRunClient
	in.ReleaseName = releaseName
	in.Namespace = i.s.namespace
	in.PostRenderer = i.s.postRenderer
	rel, err := in.RunWithContext(ctx, ch, values)
	if err != nil {
		return RenderedRelease{}, fmt.Errorf("rendering istio %s chart (%s) as release %s: %w", chartName, src.describe(), releaseName, err)
	}
	r, ok := rel.(*release.Release)
	if !ok {
		return RenderedRelease{}, fmt.Errorf("rendering istio %s chart: unexpected release type %T", chartName, rel)
	}
	manifest := r.Manifest
	for _, h := range r.Hooks {
		manifest += "\n---\n" + h.Manifest
	}
	objs, err := parseManifest(manifest)
	if err != nil {
		return RenderedRelease{}, fmt.Errorf("parsing rendered istio %s chart: %w", chartName, err)
	}
	return RenderedRelease{ChartRelease: planned, YAML: manifest, Objects: objs}, nil
}

// parseManifest splits a multi-document YAML manifest into objects, skipping
// empty documents (templates that rendered to nothing).
func parseManifest(manifest string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}
