package testsupport

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	repo "helm.sh/helm/v4/pkg/repo/v1"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
)

// IstioChartVersions are the Istio versions whose charts the tests use.
var IstioChartVersions = []string{"1.29.6", "1.30.3"}

// unpackedChartsDir is where pulled charts are unpacked, under meshproof's
// cache directory, laid out like a local charts directory.
const unpackedChartsDir = "istio-charts"

// IstioCharts returns the directory holding Istio's charts for the tests,
// <dir>/<version>/{base,istiod,cni,ztunnel} for each of IstioChartVersions. It is, in
// order:
//   - $MESHPROOF_ISTIO_CHARTS when set (set, it must hold them);
//   - ../shared/istio-charts beside the meshproof checkout, when it exists
//     (this project's machines);
//   - else the charts pulled from Istio's chart repository into meshproof's
//     cache ($HOME/.cache/meshproof/charts, unpacked into
//     $HOME/.cache/meshproof/istio-charts) on first use.
//
// When the charts cannot be pulled either, the test is skipped, naming what
// to set; with CI=true it fails instead, because CI must run every test.
// Every test needing Istio's charts gets them here.
func IstioCharts(t testing.TB) string {
	t.Helper()
	resolvedCharts.once.Do(func() {
		cache, err := istiocharts.CacheDir()
		if err != nil {
			resolvedCharts.err = &chartsUnavailableError{err: err}
			return
		}
		resolvedCharts.dir, resolvedCharts.err = findIstioCharts(chartSearch{
			envDir:    os.Getenv(istiocharts.Env),
			sharedDir: sharedChartsDir(),
			repoURL:   istiocharts.DefaultRepository,
			cacheDir:  cache,
			versions:  IstioChartVersions,
		})
	})
	dir, err := resolvedCharts.dir, resolvedCharts.err
	var unavailable *chartsUnavailableError
	switch {
	case err == nil:
		return dir
	case errors.As(err, &unavailable) && !inCI():
		t.Skipf("%v; set %s to a directory holding <version>/{base,istiod,cni,ztunnel} to run this test", err, istiocharts.Env)
	default:
		t.Fatal(err)
	}
	return ""
}

// resolvedCharts is IstioCharts' answer, found once per test binary so that
// an unreachable repository costs one attempt, not one per test.
var resolvedCharts struct {
	once sync.Once
	dir  string
	err  error
}

// chartsUnavailableError says there are no charts here and they could not
// be pulled: a reason to skip outside CI, not a misconfiguration.
type chartsUnavailableError struct{ err error }

func (e *chartsUnavailableError) Error() string {
	return "no local Istio charts and none could be pulled: " + e.err.Error()
}

func (e *chartsUnavailableError) Unwrap() error { return e.err }

// inCI reports whether CI is set to true, as CI services (and .ci/run) do.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// chartSearch is where findIstioCharts looks.
type chartSearch struct {
	envDir    string // $MESHPROOF_ISTIO_CHARTS
	sharedDir string // ../shared/istio-charts, "" when it does not exist
	repoURL   string // the chart repository to pull from
	cacheDir  string // meshproof's cache directory
	versions  []string
}

func findIstioCharts(s chartSearch) (string, error) {
	if s.envDir != "" {
		dir, err := filepath.Abs(s.envDir)
		if err == nil {
			err = checkChartVersions(dir, s.versions)
		}
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", istiocharts.Env, s.envDir, err)
		}
		return dir, nil
	}
	if s.sharedDir != "" {
		if err := checkChartVersions(s.sharedDir, s.versions); err != nil {
			return "", err
		}
		return s.sharedDir, nil
	}
	dir := filepath.Join(s.cacheDir, unpackedChartsDir)
	for _, v := range s.versions {
		for _, name := range istiocharts.Names {
			if err := pullAndUnpack(s.repoURL, filepath.Join(s.cacheDir, "charts"), dir, name, v); err != nil {
				return "", &chartsUnavailableError{err: err}
			}
		}
	}
	return dir, nil
}

// pullAndUnpack makes <dir>/<version>/<name> the chart from the repository,
// pulling its archive into the charts cache root unless it is cached there
// (the same cache harness/internal/istio pulls into). Both steps are atomic, so an
// interrupted run leaves nothing half-written to be mistaken for a chart.
func pullAndUnpack(repoURL, cacheRoot, dir, name, version string) error {
	dest := filepath.Join(dir, version, name)
	if _, err := os.Stat(filepath.Join(dest, "Chart.yaml")); err == nil {
		return nil
	}
	archive := istiocharts.ArchivePath(cacheRoot, name, version)
	if _, err := os.Stat(archive); err != nil {
		if err := istiocharts.Pull(repoURL, name, version, archive); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), "."+name+".*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := chartutil.ExpandFile(tmp, archive); err != nil {
		return fmt.Errorf("unpacking %s: %w (delete it to pull it again)", archive, err)
	}
	if err := os.Rename(filepath.Join(tmp, name), dest); err != nil {
		// Test binaries run in parallel: another may have just unpacked it.
		if _, statErr := os.Stat(filepath.Join(dest, "Chart.yaml")); statErr == nil {
			return nil
		}
		return fmt.Errorf("unpacking %s: %w", archive, err)
	}
	return nil
}

// checkChartVersions fails, naming what is missing, unless dir holds
// <version>/<chart>/Chart.yaml for every version and chart of
// istiocharts.Names.
func checkChartVersions(dir string, versions []string) error {
	var missing []error
	for _, v := range versions {
		for _, name := range istiocharts.Names {
			if _, err := os.Stat(filepath.Join(dir, v, name, "Chart.yaml")); err != nil {
				missing = append(missing, err)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("Istio charts dir %s must hold <version>/{%s} for %v: %w", dir, strings.Join(istiocharts.Names, ","), versions, errors.Join(missing...))
	}
	return nil
}

// sharedChartsDir is ../shared/istio-charts beside the meshproof checkout
// the tests run in, or "" when there is none.
func sharedChartsDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return ""
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			shared := filepath.Join(filepath.Dir(dir), "shared", "istio-charts")
			if st, err := os.Stat(shared); err == nil && st.IsDir() {
				return shared
			}
			return ""
		}
		if filepath.Dir(dir) == dir {
			return ""
		}
	}
}

// ChartRepository is a Helm chart repository served on 127.0.0.1.
type ChartRepository struct {
	// URL is the repository's URL, for istio.WithChartRepository.
	URL string
	srv *httptest.Server

	mu       sync.Mutex
	requests int
}

// Requests is the number of requests the repository has served.
func (r *ChartRepository) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Close stops serving, as a repository that became unreachable; the test's
// cleanup closes it too.
func (r *ChartRepository) Close() { r.srv.Close() }

// ServeIstioChartRepository serves, on 127.0.0.1 until the test ends, a
// Helm chart repository holding the charts of versions found in chartsDir
// (<chartsDir>/<version>/{base,istiod,cni,ztunnel}), packaged and indexed with Helm's
// own tools the way Istio publishes them, under /charts like Istio's.
func ServeIstioChartRepository(t testing.TB, chartsDir string, versions ...string) *ChartRepository {
	t.Helper()
	root := t.TempDir()
	repoDir := filepath.Join(root, "charts")
	if err := os.Mkdir(repoDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		for _, name := range istiocharts.Names {
			ch, err := loader.LoadDir(filepath.Join(chartsDir, v, name))
			if err != nil {
				t.Fatal(err)
			}
			// Istio's source charts carry placeholder versions that its
			// release tooling rewrites; so does this.
			ch.Metadata.Version, ch.Metadata.AppVersion = v, v
			if _, err := chartutil.Save(ch, repoDir); err != nil {
				t.Fatal(err)
			}
		}
	}
	r := &ChartRepository{}
	files := http.FileServer(http.Dir(root))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests++
		r.mu.Unlock()
		files.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.URL = r.srv.URL + "/charts"
	idx, err := repo.IndexDirectory(repoDir, r.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := idx.WriteFile(filepath.Join(repoDir, "index.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}
