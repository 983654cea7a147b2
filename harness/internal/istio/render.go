package istio

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// Releases are the rendered releases in install order.
func (m Manifests) Releases() []RenderedRelease {
	out := []RenderedRelease{m.Base, m.Istiod}
	if m.CNI.Name != "" {
		out = append(out, m.CNI, m.Ztunnel)
	}
	return out
}

// RenderedRelease is the rendered manifest of one Helm release.
type RenderedRelease struct {
	Name      string // Helm release name, e.g. "istio-base", "istiod-canary"
	Namespace string
	Chart     string // "base" or "istiod"
	Version   string // Istio version of the chart
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

// Render renders the base and istiod releases (and for ambient mode the
// istio-cni and ztunnel ones) with the Installer's values, without a
// cluster (like `helm template`). It is what Install would apply.
func (i *Installer) Render(ctx context.Context) (Manifests, error) {
	p := i.current
	base, err := i.renderRelease(ctx, p.charts, baseChart, BaseReleaseName, i.baseValues(p.revision))
	if err != nil {
		return Manifests{}, err
	}
	istiod, err := i.renderRelease(ctx, p.charts, istiodChart, istiodReleaseName(p.revision), i.istiodValues(p))
	if err != nil {
		return Manifests{}, err
	}
	m := Manifests{Base: base, Istiod: istiod}
	if !i.s.ambient {
		return m, nil
	}
	if m.CNI, err = i.renderRelease(ctx, p.charts, cniChart, CNIReleaseName, i.cniValues(p)); err != nil {
		return Manifests{}, err
	}
	if m.Ztunnel, err = i.renderRelease(ctx, p.charts, ztunnelChart, ZtunnelReleaseName, i.ztunnelValues(p)); err != nil {
		return Manifests{}, err
	}
	return m, nil
}

func (i *Installer) renderRelease(ctx context.Context, src chartSource, chartName, releaseName string, values map[string]any) (RenderedRelease, error) {
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
	return RenderedRelease{
		Name:      releaseName,
		Namespace: i.s.namespace,
		Chart:     chartName,
		Version:   src.version,
		YAML:      manifest,
		Objects:   objs,
	}, nil
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
