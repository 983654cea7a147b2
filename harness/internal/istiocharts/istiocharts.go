// Package istiocharts says where Istio's Helm charts of one version come
// from and fetches them: a local directory named by $MESHPROOF_ISTIO_CHARTS
// (air-gapped machines), else Istio's chart repository, whose archives are
// cached in meshproof's cache directory. harness/internal/istio installs from them;
// the tests find theirs through harness/internal/local/controlplane.
package istiocharts

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"helm.sh/helm/v4/pkg/getter"
	repo "helm.sh/helm/v4/pkg/repo/v1"
)

const (
	// Env names a directory holding Istio's charts of one or more versions,
	// <dir>/<version>/{base,istiod,cni,ztunnel}.
	Env = "MESHPROOF_ISTIO_CHARTS"
	// DefaultRepository is Istio's official Helm chart repository.
	DefaultRepository = "https://istio-release.storage.googleapis.com/charts"
	// CacheEnv overrides the root of meshproof's cache directory.
	CacheEnv = "MESHPROOF_CACHE"
)

// The charts of an Istio control plane: base and istiod for sidecars,
// and for ambient mode also cni (the istio-cni node agent) and ztunnel.
const (
	Base    = "base"
	Istiod  = "istiod"
	CNI     = "cni"
	Ztunnel = "ztunnel"
)

// Names are the charts of one Istio version, in install order (Istio's
// documented order for ambient: base, istiod, cni, ztunnel).
var Names = []string{Base, Istiod, CNI, Ztunnel}

// pullTimeout bounds each HTTP request to the chart repository.
const pullTimeout = 2 * time.Minute

// CacheDir is meshproof's cache directory: $MESHPROOF_CACHE, else
// <user cache dir>/meshproof ($HOME/.cache/meshproof on Linux).
func CacheDir() (string, error) {
	if dir := os.Getenv(CacheEnv); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("%s=%s: %w", CacheEnv, dir, err)
		}
		return abs, nil
	}
	userCache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache dir: %w (set %s)", err, CacheEnv)
	}
	return filepath.Join(userCache, "meshproof"), nil
}

// Pull downloads chart name at version from the chart repository at
// repoURL into path, atomically, so that an interrupted pull never leaves a
// truncated archive in a cache.
func Pull(repoURL, name, version, path string) error {
	getters := getter.Getters(getter.WithTimeout(pullTimeout))
	chartURL, err := repo.FindChartInRepoURL(repoURL, name, getters, repo.WithChartVersion(version))
	if err != nil {
		return fmt.Errorf("finding istio %s chart %s in %s: %w", name, version, repoURL, err)
	}
	u, err := url.Parse(chartURL)
	if err != nil {
		return fmt.Errorf("chart repository %s gave an invalid chart URL %q: %w", repoURL, chartURL, err)
	}
	g, err := getters.ByScheme(u.Scheme)
	if err != nil {
		return fmt.Errorf("downloading %s: %w", chartURL, err)
	}
	data, err := g.Get(chartURL, getter.WithURL(repoURL))
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
	_, werr := tmp.Write(data.Bytes())
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("caching istio %s chart: %w", name, err)
	}
	return nil
}

// ArchivePath is where the archive of chart name at version is cached under
// a charts cache root: <root>/<version>/<name>-<version>.tgz.
func ArchivePath(root, name, version string) string {
	return filepath.Join(root, version, fmt.Sprintf("%s-%s.tgz", name, version))
}

// DefaultCacheRoot is the charts cache root in meshproof's cache directory:
// <cache dir>/charts.
func DefaultCacheRoot() (string, error) {
	dir, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "charts"), nil
}
