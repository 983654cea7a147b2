package istio

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/getter"
	repo "helm.sh/helm/v4/pkg/repo/v1"
)

// The two charts an Istio sidecar-mode control plane needs.
const (
	baseChart   = "base"
	istiodChart = "istiod"
)

// chartPullTimeout bounds each HTTP request to the chart repository.
const chartPullTimeout = 2 * time.Minute

// chartSource says where the charts of one Istio version come from: a local
// directory holding base/ and istiod/, or a chart repository plus a cache
// directory for the downloaded archives.
type chartSource struct {
	version string
	// dir is set for local charts.
	dir string
	// repoURL and cacheDir are set for charts pulled from a repository;
	// archives are cached under cacheDir/<version>/.
	repoURL  string
	cacheDir string
}

func newChartSource(version, dir, repoURL, cacheRoot string) (chartSource, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return chartSource{}, fmt.Errorf("istio charts dir %q: %w", dir, err)
		}
		if err := checkChartsDir(abs); err != nil {
			return chartSource{}, err
		}
		return chartSource{version: version, dir: abs}, nil
	}
	if repoURL == "" {
		return chartSource{}, errors.New("istio: neither a charts dir nor a chart repository URL is set")
	}
	if cacheRoot == "" {
		root, err := defaultChartCacheRoot()
		if err != nil {
			return chartSource{}, err
		}
		cacheRoot = root
	}
	return chartSource{version: version, repoURL: repoURL, cacheDir: filepath.Join(cacheRoot, version)}, nil
}

// cacheEnv overrides the root of meshproof's cache directory (shared with
// the other meshproof caches).
const cacheEnv = "MESHPROOF_CACHE"

// defaultChartCacheRoot is <meshproof cache>/charts: $MESHPROOF_CACHE/charts,
// else <user cache dir>/meshproof/charts ($HOME/.cache/meshproof/charts on
// Linux).
func defaultChartCacheRoot() (string, error) {
	if dir := os.Getenv(cacheEnv); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("istio: %s=%s: %w", cacheEnv, dir, err)
		}
		return filepath.Join(abs, "charts"), nil
	}
	userCache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("istio: no chart cache dir: %w (set %s or use WithChartCacheDir, or use local charts with WithChartsDir)", err, cacheEnv)
	}
	return filepath.Join(userCache, "meshproof", "charts"), nil
}

// checkChartsDir fails early, naming what is missing, when dir is not a
// directory with base/Chart.yaml and istiod/Chart.yaml.
func checkChartsDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("istio charts dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("istio charts dir %s is not a directory", dir)
	}
	var missing []error
	for _, name := range []string{baseChart, istiodChart} {
		if _, err := os.Stat(filepath.Join(dir, name, "Chart.yaml")); err != nil {
			missing = append(missing, fmt.Errorf("no %s chart: %s/%s/Chart.yaml is missing", name, dir, name))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("istio charts dir %s must contain the base/ and istiod/ charts of one Istio version: %w", dir, errors.Join(missing...))
	}
	return nil
}

// archivePath is where the pulled archive of chart name is cached.
func (c chartSource) archivePath(name string) string {
	return filepath.Join(c.cacheDir, fmt.Sprintf("%s-%s.tgz", name, c.version))
}

// describe names the source in messages.
func (c chartSource) describe() string {
	if c.dir != "" {
		return c.dir
	}
	return fmt.Sprintf("%s (version %s, cache %s)", c.repoURL, c.version, c.cacheDir)
}

// load returns chart name ("base" or "istiod"), pulling and caching it first
// when it comes from a repository.
func (c chartSource) load(name string) (*chart.Chart, error) {
	if c.dir != "" {
		ch, err := loader.LoadDir(filepath.Join(c.dir, name))
		if err != nil {
			return nil, fmt.Errorf("loading istio %s chart from %s: %w", name, c.dir, err)
		}
		// Istio's source charts carry placeholder versions (1.0.0) that its
		// release tooling rewrites; do the same so that release records and
		// the helm.sh/chart / app.kubernetes.io/version labels name the real
		// version.
		ch.Metadata.Version = c.version
		ch.Metadata.AppVersion = c.version
		return ch, nil
	}
	path := c.archivePath(name)
	if _, err := os.Stat(path); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("istio %s chart cache: %w", name, err)
		}
		if err := c.pull(name, path); err != nil {
			return nil, err
		}
	}
	ch, err := loader.LoadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading istio %s chart %s: %w (delete the file to pull it again)", name, path, err)
	}
	return ch, nil
}

// pull downloads chart name at c.version from the repository into path,
// atomically so that an interrupted pull never leaves a truncated archive in
// the cache.
func (c chartSource) pull(name, path string) error {
	getters := getter.Getters(getter.WithTimeout(chartPullTimeout))
	chartURL, err := repo.FindChartInRepoURL(c.repoURL, name, getters, repo.WithChartVersion(c.version))
	if err != nil {
		return fmt.Errorf("finding istio %s chart %s in %s: %w (offline? use local charts with WithChartsDir)", name, c.version, c.repoURL, err)
	}
	u, err := url.Parse(chartURL)
	if err != nil {
		return fmt.Errorf("chart repository %s gave an invalid chart URL %q: %w", c.repoURL, chartURL, err)
	}
	g, err := getters.ByScheme(u.Scheme)
	if err != nil {
		return fmt.Errorf("downloading %s: %w", chartURL, err)
	}
	data, err := g.Get(chartURL, getter.WithURL(c.repoURL))
	if err != nil {
		return fmt.Errorf("downloading istio %s chart from %s: %w", name, chartURL, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating chart cache dir: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	return nil
}
