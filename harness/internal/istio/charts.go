package istio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
)

// The charts of a control plane: base and istiod, and for ambient mode
// cni and ztunnel.
const (
	baseChart    = istiocharts.Base
	istiodChart  = istiocharts.Istiod
	cniChart     = istiocharts.CNI
	ztunnelChart = istiocharts.Ztunnel
)

// chartSource says where the charts of one Istio version come from: a local
// directory holding base/ and istiod/, or a chart repository plus a cache
// directory for the downloaded archives.
type chartSource struct {
	version string
	// dir is set for local charts.
	dir string
	// repoURL and cacheRoot are set for charts pulled from a repository;
	// archives are cached under cacheRoot/<version>/.
	repoURL   string
	cacheRoot string
}

func newChartSource(version, dir, repoURL, cacheRoot string, names []string) (chartSource, error) {
	if dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return chartSource{}, fmt.Errorf("istio charts dir %q: %w", dir, err)
		}
		if err := checkChartsDir(abs, names); err != nil {
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
	return chartSource{version: version, repoURL: repoURL, cacheRoot: cacheRoot}, nil
}

// defaultChartCacheRoot is <meshproof cache>/charts: $MESHPROOF_CACHE/charts,
// else <user cache dir>/meshproof/charts ($HOME/.cache/meshproof/charts on
// Linux).
func defaultChartCacheRoot() (string, error) {
	root, err := istiocharts.DefaultCacheRoot()
	if err != nil {
		return "", fmt.Errorf("istio: chart cache: %w (or use WithChartCacheDir, or local charts with WithChartsDir)", err)
	}
	return root, nil
}

// checkChartsDir fails early, naming what is missing, when dir is not a
// directory with <name>/Chart.yaml for each chart of names.
func checkChartsDir(dir string, names []string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("istio charts dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("istio charts dir %s is not a directory", dir)
	}
	var missing []error
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name, "Chart.yaml")); err != nil {
			missing = append(missing, fmt.Errorf("no %s chart: %s/%s/Chart.yaml is missing", name, dir, name))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("istio charts dir %s must contain the %s/ charts of one Istio version: %w", dir, strings.Join(names, "/, "), errors.Join(missing...))
	}
	return nil
}

// archivePath is where the pulled archive of chart name is cached.
func (c chartSource) archivePath(name string) string {
	return istiocharts.ArchivePath(c.cacheRoot, name, c.version)
}

// describe names the source in messages.
func (c chartSource) describe() string {
	if c.dir != "" {
		return c.dir
	}
	return fmt.Sprintf("chart repository %s (version %s, archives cached in %s)", c.repoURL, c.version, filepath.Join(c.cacheRoot, c.version))
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
	if err := istiocharts.Pull(c.repoURL, name, c.version, path); err != nil {
		return fmt.Errorf("%w (offline? point %s at a directory holding Istio's charts as <version>/<chart>, or istio.charts in the scenario file at one version's charts)", err, istiocharts.Env)
	}
	return nil
}
