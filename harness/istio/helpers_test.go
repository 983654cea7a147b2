package istio

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// chartsEnv names the directory with <version>/base and <version>/istiod.
const chartsEnv = "MESHPROOF_ISTIO_CHARTS"

// testVersions are the Istio versions the project tests against.
var testVersions = []string{"1.29.6", "1.30.3"}

// localChartsRoot finds Istio's charts for tests: $MESHPROOF_ISTIO_CHARTS,
// else <repo root>/../shared/istio-charts. It returns "" when neither
// exists.
func localChartsRoot(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(chartsEnv); dir != "" {
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("%s=%s: %v", chartsEnv, dir, err)
		}
		return dir
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			shared := filepath.Join(dir, "..", "shared", "istio-charts")
			if _, err := os.Stat(shared); err == nil {
				return shared
			}
			return ""
		}
		if filepath.Dir(dir) == dir {
			return ""
		}
	}
}

// chartOptions returns the options that point an Installer at the charts of
// version: the local copy when there is one, else the official repository
// (with a per-test cache). The bool reports whether the charts are remote.
func chartOptions(t testing.TB, version string) ([]Option, bool) {
	t.Helper()
	if root := localChartsRoot(t); root != "" {
		return []Option{WithVersion(version), WithChartsDir(filepath.Join(root, version))}, false
	}
	t.Setenv("HELM_CACHE_HOME", t.TempDir()) // Helm's index scratch space
	return []Option{WithVersion(version), WithChartCacheDir(t.TempDir())}, true
}

// render renders version's charts with opts, skipping the test (naming the
// variable to set) only when there are no local charts and the official
// repository cannot be reached.
func render(t testing.TB, version string, opts ...Option) Manifests {
	t.Helper()
	base, remote := chartOptions(t, version)
	in, err := New(nil, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := in.Render(ctx)
	if err != nil {
		if remote {
			t.Skipf("no local Istio charts and %s is unreachable (%v); set %s to a directory holding <version>/base and <version>/istiod", DefaultChartRepository, err, chartsEnv)
		}
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
