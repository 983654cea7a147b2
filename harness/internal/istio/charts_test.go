package istio

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

func TestChartSourceDefaultsToOfficialRepository(t *testing.T) {
	cache := t.TempDir()
	in, err := New(nil, WithVersion("1.29.6"), WithChartCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	src := in.current.charts
	if src.dir != "" || src.repoURL != "https://istio-release.storage.googleapis.com/charts" || src.version != "1.29.6" {
		t.Errorf("source = %+v, want the official repository at 1.29.6", src)
	}
	if want := filepath.Join(cache, "1.29.6", "istiod-1.29.6.tgz"); src.archivePath(istiodChart) != want {
		t.Errorf("istiod archive cached at %s, want %s", src.archivePath(istiodChart), want)
	}
	if want := filepath.Join(cache, "1.29.6", "base-1.29.6.tgz"); src.archivePath(baseChart) != want {
		t.Errorf("base archive cached at %s, want %s", src.archivePath(baseChart), want)
	}

	// Without WithChartCacheDir the cache is $MESHPROOF_CACHE/charts/<version>,
	// else <user cache>/meshproof/charts/<version>.
	t.Setenv(istiocharts.CacheEnv, filepath.Join(cache, "meshproof-cache"))
	in, err = New(nil, WithVersion("1.30.3"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "meshproof-cache", "charts"); in.current.charts.cacheRoot != want {
		t.Errorf("cache root = %s, want %s", in.current.charts.cacheRoot, want)
	}
	t.Setenv(istiocharts.CacheEnv, "")
	t.Setenv("XDG_CACHE_HOME", filepath.Join(cache, "xdg"))
	in, err = New(nil, WithVersion("1.30.3"), WithChartRepository("https://mirror.example/istio"))
	if err != nil {
		t.Fatal(err)
	}
	src = in.current.charts
	if src.repoURL != "https://mirror.example/istio" {
		t.Errorf("repo = %s, want the mirror", src.repoURL)
	}
	if want := filepath.Join(cache, "xdg", "meshproof", "charts"); src.cacheRoot != want {
		t.Errorf("cache root = %s, want %s", src.cacheRoot, want)
	}
}

func TestChartSourceLocalDir(t *testing.T) {
	root := t.TempDir()
	for _, c := range []string{"base", "istiod"} {
		if err := os.MkdirAll(filepath.Join(root, "full", c), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "full", c, "Chart.yaml"), []byte("apiVersion: v2\nname: "+c+"\nversion: 1.0.0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	in, err := New(nil, WithVersion("1.30.3"), WithChartsDir(filepath.Join(root, "full")), WithChartRepository("https://unused.example"))
	if err != nil {
		t.Fatal(err)
	}
	if src := in.current.charts; src.dir != filepath.Join(root, "full") || src.repoURL != "" {
		t.Errorf("source = %+v, want the local dir and no repository", src)
	}

	// A dir with only base/ names the missing istiod chart.
	if err := os.MkdirAll(filepath.Join(root, "partial", "base"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "partial", "base", "Chart.yaml"), []byte("name: base\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = New(nil, WithChartsDir(filepath.Join(root, "partial")))
	if err == nil || !strings.Contains(err.Error(), "no istiod chart") || strings.Contains(err.Error(), "no base chart") {
		t.Errorf("partial dir: err = %v, want one naming only the missing istiod chart", err)
	}
	_, err = New(nil, WithChartsDir(filepath.Join(root, "missing")))
	if err == nil || !strings.Contains(err.Error(), filepath.Join(root, "missing")) {
		t.Errorf("missing dir: err = %v, want one naming the dir", err)
	}
	empty := filepath.Join(root, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = New(nil, WithChartsDir(empty))
	if err == nil || !strings.Contains(err.Error(), "no base chart") || !strings.Contains(err.Error(), "no istiod chart") {
		t.Errorf("empty dir: err = %v, want one naming both missing charts", err)
	}
}

// TestPullFromChartRepository runs the repository path end to end against a
// chart repository served locally: the real charts, packaged and indexed
// with Helm's own tools, the way Istio publishes them.
func TestPullFromChartRepository(t *testing.T) {
	const version = "1.30.3"
	repo := testsupport.ServeIstioChartRepository(t, testsupport.IstioCharts(t), version)

	t.Setenv("HELM_CACHE_HOME", t.TempDir()) // Helm's index scratch space
	cache := t.TempDir()
	in, err := New(nil, WithVersion(version), WithChartRepository(repo.URL), WithChartCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	m, err := in.Render(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Istiod.Find("Deployment", "istiod"); d == nil {
		t.Fatal("pulled istiod chart rendered no istiod Deployment")
	}
	for _, name := range []string{baseChart, istiodChart} {
		if _, err := os.Stat(filepath.Join(cache, version, name+"-"+version+".tgz")); err != nil {
			t.Errorf("%s archive not cached: %v", name, err)
		}
	}
	pulled := repo.Requests()
	if pulled == 0 {
		t.Fatal("the repository was never asked")
	}

	// Cached: a second render works with the repository gone.
	repo.Close()
	if _, err := in.Render(t.Context()); err != nil {
		t.Fatalf("render from cache: %v", err)
	}
	if repo.Requests() != pulled {
		t.Errorf("render from cache made %d more requests", repo.Requests()-pulled)
	}

	// An unknown version fails with a message naming the repository.
	in, err = New(nil, WithVersion("1.0.99"), WithChartRepository("http://127.0.0.1:1/charts"), WithChartCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Render(t.Context()); err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:1/charts") || !strings.Contains(err.Error(), istiocharts.Env) || !strings.Contains(err.Error(), "istio.charts") {
		t.Errorf("unreachable repository: err = %v, want one naming the repository and the offline alternative", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for name, opts := range map[string][]Option{
		"version not semver":   {WithVersion("latest")},
		"version with slash":   {WithVersion("1.30.3/../x")},
		"revision with dots":   {WithRevision("1.30.3")},
		"revision default":     {WithRevision("default")},
		"namespace uppercase":  {WithNamespace("Istio")},
		"empty hub":            {WithHub("")},
		"negative cert TTL":    {WithWorkloadCertTTL(-1)},
		"zero ready timeout":   {WithReadyTimeout(0)},
		"zero operation bound": {WithOperationTimeout(0)},
	} {
		if _, err := New(nil, opts...); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	in, err := New(nil, WithRevision("1-30-3"), WithNamespace("mesh"))
	if err != nil {
		t.Fatal(err)
	}
	if in.Revision() != "1-30-3" || in.Namespace() != "mesh" || in.Version() != DefaultVersion {
		t.Errorf("got revision %q namespace %q version %q", in.Revision(), in.Namespace(), in.Version())
	}
}

func TestDeepMergeLeavesInputsAlone(t *testing.T) {
	base := map[string]any{"a": map[string]any{"x": 1, "y": 2}, "l": []any{map[string]any{"k": "v"}}}
	over := map[string]any{"a": map[string]any{"y": 3, "z": 4}, "b": "new"}
	got := deepMerge(base, over)
	want := map[string]any{"a": map[string]any{"x": 1, "y": 3, "z": 4}, "l": []any{map[string]any{"k": "v"}}, "b": "new"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("deepMerge = %v, want %v", got, want)
	}
	got["a"].(map[string]any)["x"] = 100
	got["l"].([]any)[0].(map[string]any)["k"] = "changed"
	if base["a"].(map[string]any)["x"] != 1 || base["l"].([]any)[0].(map[string]any)["k"] != "v" {
		t.Errorf("deepMerge result shares memory with its input: %v", base)
	}
	if over["a"].(map[string]any)["x"] != nil {
		t.Errorf("deepMerge modified over: %v", over)
	}
}

func TestRESTClientGetterFromBareRestConfig(t *testing.T) {
	cfg := &rest.Config{Host: "https://127.0.0.1:6443", BearerToken: "t"}
	g := newRESTClientGetter(cfg, "istio-system")
	got, err := g.ToRESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	if got == cfg || got.Host != cfg.Host || got.BearerToken != "t" {
		t.Errorf("ToRESTConfig = %p %+v, want a copy of %p", got, got, cfg)
	}
	ns, overridden, err := g.ToRawKubeConfigLoader().Namespace()
	if err != nil || ns != "istio-system" || !overridden {
		t.Errorf("Namespace() = %q, %v, %v; want istio-system, true, nil", ns, overridden, err)
	}
	d1, err := g.ToDiscoveryClient()
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := g.ToDiscoveryClient()
	if d1 != d2 {
		t.Error("discovery client is not shared between calls; Helm's cache invalidation would not reach the one in use")
	}
	m, err := g.ToRESTMapper()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m.(meta.ResettableRESTMapper); !ok {
		t.Errorf("REST mapper %T is not resettable; Helm could not make new CRDs mappable", m)
	}
}
