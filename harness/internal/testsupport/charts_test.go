package testsupport

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/v2/loader"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
)

// writeCharts makes dir/<version>/<chart>/Chart.yaml for versions and every
// chart of istiocharts.Names.
func writeCharts(t *testing.T, dir string, versions ...string) {
	t.Helper()
	for _, v := range versions {
		for _, name := range istiocharts.Names {
			if err := os.MkdirAll(filepath.Join(dir, v, name), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, v, name, "Chart.yaml"), []byte("apiVersion: v2\nname: "+name+"\nversion: 1.0.0\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestFindIstioChartsLocalDirs(t *testing.T) {
	versions := []string{"1.29.6", "1.30.3"}
	envDir, sharedDir := t.TempDir(), t.TempDir()
	writeCharts(t, envDir, versions...)
	writeCharts(t, sharedDir, versions...)
	unreachable := "http://127.0.0.1:1/charts"

	dir, err := findIstioCharts(chartSearch{envDir: envDir, sharedDir: sharedDir, repoURL: unreachable, cacheDir: t.TempDir(), versions: versions})
	if err != nil || dir != envDir {
		t.Errorf("with %s set: %q, %v; want %s", "MESHPROOF_ISTIO_CHARTS", dir, err, envDir)
	}
	dir, err = findIstioCharts(chartSearch{sharedDir: sharedDir, repoURL: unreachable, cacheDir: t.TempDir(), versions: versions})
	if err != nil || dir != sharedDir {
		t.Errorf("with the shared dir only: %q, %v; want %s", dir, err, sharedDir)
	}

	// A variable naming a dir without the charts is a mistake to fix, not a
	// reason to skip, and the message names the variable and what is missing.
	partial := t.TempDir()
	writeCharts(t, partial, "1.29.6")
	_, err = findIstioCharts(chartSearch{envDir: partial, sharedDir: sharedDir, repoURL: unreachable, cacheDir: t.TempDir(), versions: versions})
	var unavailable *chartsUnavailableError
	if err == nil || errors.As(err, &unavailable) || !strings.Contains(err.Error(), "MESHPROOF_ISTIO_CHARTS="+partial) || !strings.Contains(err.Error(), filepath.Join("1.30.3", "istiod")) {
		t.Errorf("partial dir: err = %v, want a misconfiguration naming the variable and the missing 1.30.3 charts", err)
	}
}

// TestFindIstioChartsPullsFromRepository runs the pull path end to end
// against a chart repository served on 127.0.0.1 with the real charts, the
// way a machine without local charts gets them from Istio's repository.
func TestFindIstioChartsPullsFromRepository(t *testing.T) {
	source := IstioCharts(t)
	versions := IstioChartVersions
	repo := ServeIstioChartRepository(t, source, versions...)
	t.Setenv("HELM_CACHE_HOME", t.TempDir()) // Helm's index scratch space
	cache := t.TempDir()
	search := chartSearch{repoURL: repo.URL, cacheDir: cache, versions: versions}

	dir, err := findIstioCharts(search)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "istio-charts"); dir != want {
		t.Errorf("charts dir = %s, want %s", dir, want)
	}
	for _, v := range versions {
		for _, name := range istiocharts.Names {
			ch, err := loader.LoadDir(filepath.Join(dir, v, name))
			if err != nil {
				t.Fatalf("unpacked %s %s: %v", name, v, err)
			}
			if ch.Name() != name || ch.Metadata.Version != v {
				t.Errorf("unpacked %s %s is chart %s %s", name, v, ch.Name(), ch.Metadata.Version)
			}
			// The archive is cached where harness/internal/istio caches pulled charts.
			if _, err := os.Stat(filepath.Join(cache, "charts", v, name+"-"+v+".tgz")); err != nil {
				t.Errorf("archive not cached: %v", err)
			}
		}
	}
	if err := checkChartVersions(dir, versions); err != nil {
		t.Error(err)
	}
	served := repo.Requests()
	if served == 0 {
		t.Fatal("the repository was never asked")
	}

	// Cached: with the repository gone and the unpacked charts deleted, the
	// cached archives are unpacked again.
	repo.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := findIstioCharts(search); err != nil {
		t.Fatalf("from the cache: %v", err)
	}
	if repo.Requests() != served {
		t.Errorf("the cached run asked the repository %d more times", repo.Requests()-served)
	}

	// Nothing cached and the repository unreachable: unavailable (a skip
	// outside CI), naming the repository.
	search.cacheDir = t.TempDir()
	_, err = findIstioCharts(search)
	var unavailable *chartsUnavailableError
	if !errors.As(err, &unavailable) || !strings.Contains(err.Error(), repo.URL) {
		t.Errorf("unreachable repository: err = %v, want a chartsUnavailableError naming %s", err, repo.URL)
	}
}

func TestInCI(t *testing.T) {
	for value, want := range map[string]bool{"true": true, "1": true, "": false, "false": false} {
		t.Setenv("CI", value)
		if got := inCI(); got != want {
			t.Errorf("CI=%q: inCI() = %v, want %v", value, got, want)
		}
	}
}
