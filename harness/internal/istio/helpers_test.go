package istio

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

// testVersions are the Istio versions the project tests against.
var testVersions = testsupport.IstioChartVersions

// chartOptions returns the options that point an Installer at the charts of
// version, from the tests' one charts resolver.
func chartOptions(t testing.TB, version string) []Option {
	t.Helper()
	return []Option{WithVersion(version), WithChartsDir(filepath.Join(testsupport.IstioCharts(t), version))}
}

// render renders version's charts with opts.
func render(t testing.TB, version string, opts ...Option) Manifests {
	t.Helper()
	in, err := New(nil, append(chartOptions(t, version), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	m, err := in.Render(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// typed converts a rendered object to its Go type.
func typed[T any](t testing.TB, o *unstructured.Unstructured) *T {
	t.Helper()
	if o == nil {
		t.Fatal("object not rendered")
	}
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

func istiodDeployment(t testing.TB, m Manifests, name string) *appsv1.Deployment {
	t.Helper()
	return typed[appsv1.Deployment](t, m.Istiod.Find("Deployment", name))
}

func discoveryContainer(t testing.TB, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "discovery" {
			return c
		}
	}
	t.Fatalf("Deployment %s has no discovery container", d.Name)
	return corev1.Container{}
}

// meshConfig parses the "mesh" key of the istio ConfigMap named name.
func meshConfig(t testing.TB, m Manifests, name string) map[string]any {
	t.Helper()
	cm := typed[corev1.ConfigMap](t, m.Istiod.Find("ConfigMap", name))
	var mesh map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["mesh"]), &mesh); err != nil {
		t.Fatalf("ConfigMap %s mesh: %v\n%s", name, err, cm.Data["mesh"])
	}
	return mesh
}

func proxyMetadata(t testing.TB, mesh map[string]any) map[string]any {
	t.Helper()
	md, _, err := unstructured.NestedMap(mesh, "defaultConfig", "proxyMetadata")
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}
