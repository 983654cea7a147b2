// Package binaries builds, caches and locates the binaries of the local stack:
// kube-apiserver and etcd, which every Kubernetes-facing test runs against, and
// the local cluster's kube-controller-manager, kube-scheduler, kwok, istiod and
// pilot-agent (tools.go).
//
// No prebuilt binaries can be downloaded where meshproof is tested, so all are
// compiled from source fetched through the Go module proxy. The exact module
// versions are pinned by small wrapper modules kept in the repository
// (harness/internal/local/binaries/assets/<name>), so that their dependency
// versions never touch meshproof's go.mod; their go.sum files make the build
// reproducible. The resulting binaries are cached per
// version in a directory laid out the way controller-runtime's envtest expects
// (KUBEBUILDER_ASSETS): a directory holding `kube-apiserver` and `etcd`.
package binaries

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"golang.org/x/mod/modfile"
)

const (
	// KubernetesVersion is the k8s.io/kubernetes release kube-apiserver is built from.
	// It must match the require line of harness/internal/local/binaries/assets/kube-apiserver/go.mod.
	KubernetesVersion = "v1.37.2"
	// EtcdVersion is the go.etcd.io/etcd/server/v3 release etcd is built from: the one
	// Kubernetes v1.37.2 is tested with (its build/dependencies.yaml). It must match the
	// require line of harness/internal/local/binaries/assets/etcd/go.mod.
	EtcdVersion = "v3.7.0"

	// AssetsEnv is the variable through which envtest, and this package, accept a
	// directory of already available binaries.
	AssetsEnv = "KUBEBUILDER_ASSETS"
	// CacheEnv overrides the root of meshproof's cache directory.
	CacheEnv = "MESHPROOF_CACHE"

	// KubeAPIServer and Etcd are the binary names inside an assets directory.
	KubeAPIServer = "kube-apiserver"
	Etcd          = "etcd"

	mainModulePath = "github.com/meshproof/meshproof"
	// wrapperModulesDir is where the wrapper modules live, relative to the main module root.
	wrapperModulesDir = "harness/internal/local/binaries/assets"
)

// binary describes how one cached binary is produced.
type binary struct {
	name string
	// module is the wrapper module directory below wrapperModulesDir.
	module string
	// pkg is the main package built inside that module.
	pkg string
	// ldflags computes the linker flags; it may consult the module graph.
	ldflags func(ctx context.Context, moduleDir string) (string, error)
}

var binariesToBuild = []binary{
	{name: Etcd, module: "etcd", pkg: "go.etcd.io/etcd/server/v3"},
	{name: KubeAPIServer, module: "kube-apiserver", pkg: "k8s.io/kubernetes/cmd/kube-apiserver", ldflags: kubeVersionLDFlags},
}

// Ensure returns a directory containing kube-apiserver and etcd, building them first
// when the cache does not hold them yet. Progress is logged to os.Stderr.
//
// When KUBEBUILDER_ASSETS is set, it is returned as is (after checking that it holds
// both binaries) and nothing is built: that is how a caller opts out of the build.
func Ensure(ctx context.Context) (string, error) {
	return EnsureWithLog(ctx, os.Stderr)
}

// EnsureWithLog is Ensure with build progress written to log.
func EnsureWithLog(ctx context.Context, log io.Writer) (string, error) {
	if dir, ok := os.LookupEnv(AssetsEnv); ok && dir != "" {
		if err := checkComplete(dir); err != nil {
			return "", fmt.Errorf("%s=%s is set but unusable: %w (unset it to let meshproof build the binaries, or point it at a directory holding %s and %s)", AssetsEnv, dir, err, KubeAPIServer, Etcd)
		}
		return dir, nil
	}
	dir, err := Dir()
	if err != nil {
		return "", err
	}
	if checkComplete(dir) == nil {
		return dir, nil
	}
	root, err := mainModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	if err := build(ctx, root, dir, log); err != nil {
		return "", fmt.Errorf("building kube-apiserver %s and etcd %s from source into %s: %w (alternatively set %s to a directory holding both binaries)", KubernetesVersion, EtcdVersion, dir, err, AssetsEnv)
	}
	return dir, nil
}

// CacheRoot returns meshproof's cache directory: $MESHPROOF_CACHE, else
// $XDG_CACHE_HOME/meshproof, else $HOME/.cache/meshproof (os.UserCacheDir's rules).
func CacheRoot() (string, error) {
	if dir := os.Getenv(CacheEnv); dir != "" {
		return filepath.Abs(dir)
	}
	userCache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the control-plane binaries: %w (set %s)", err, CacheEnv)
	}
	return filepath.Join(userCache, "meshproof"), nil
}

// Dir returns the versioned assets directory, whether or not it is populated yet:
// <cache root>/envtest/k8s-<version>-etcd-<version>.
func Dir() (string, error) {
	root, err := CacheRoot()
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("k8s-%s-etcd-%s", strings.TrimPrefix(KubernetesVersion, "v"), strings.TrimPrefix(EtcdVersion, "v"))
	return filepath.Join(root, "envtest", name), nil
}

// checkComplete reports why dir cannot serve as an assets directory, or nil.
func checkComplete(dir string) error {
	for _, name := range []string{KubeAPIServer, Etcd} {
		if err := checkExecutable(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func checkExecutable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}

// build produces every missing binary of binariesToBuild in dir.
func build(ctx context.Context, root, dir string, log io.Writer) error {
	if err := buildInto(ctx, root, dir, binariesToBuild, log, nil); err != nil {
		return err
	}
	return checkComplete(dir)
}

// buildInto produces every missing one of bins in dir, reporting to p (a
// progress of bins' missing ones when nil). A file lock per binary
// serialises concurrent callers (parallel test binaries of `go test ./...`),
// so a multi-minute build happens once and the others wait for it, while
// builds of other binaries go on beside it.
func buildInto(ctx context.Context, root, dir string, bins []binary, log io.Writer, p *progress) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if p == nil {
		var names []string
		for _, b := range bins {
			if checkExecutable(filepath.Join(dir, b.name)) != nil {
				names = append(names, b.name)
			}
		}
		p = newProgress(log, names)
	}
	for _, b := range bins {
		if err := buildLocked(ctx, root, filepath.Join(dir, b.name), b, log, p); err != nil {
			return err
		}
	}
	return nil
}

// buildLocked builds b into target unless it is there, under target's lock.
func buildLocked(ctx context.Context, root, target string, b binary, log io.Writer, p *progress) error {
	lock := flock.New(filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".lock"))
	locked, err := lock.TryLock()
	if err != nil {
		return fmt.Errorf("locking %s: %w", lock.Path(), err)
	}
	if !locked {
		fmt.Fprintf(log, "binaries: another process is building %s; waiting for it\n", target)
		if locked, err = lock.TryLockContext(ctx, time.Second); err != nil || !locked {
			return fmt.Errorf("waiting for lock %s: %w", lock.Path(), errors.Join(err, ctx.Err()))
		}
	}
	defer lock.Unlock()
	if checkExecutable(target) == nil {
		return nil
	}
	done := p.building(b)
	err = buildFunc(ctx, filepath.Join(root, wrapperModulesDir, b.module), b, target, log)
	done(err)
	return err
}

// buildOne compiles b into a temporary file beside target and renames it into place,
// so an interrupted build never leaves a truncated binary under the final name.
func buildOne(ctx context.Context, moduleDir string, b binary, target string, log io.Writer) error {
	if _, err := os.Stat(filepath.Join(moduleDir, "go.mod")); err != nil {
		return fmt.Errorf("wrapper module for %s: %w", b.name, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(target), "."+b.name+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // no-op once renamed

	// -s -w drops the symbol table and DWARF, as release builds do: the binaries are
	// run, never debugged, and kube-apiserver shrinks from ~170 MB to ~115 MB.
	ldflags := "-s -w"
	if b.ldflags != nil {
		flags, err := b.ldflags(ctx, moduleDir)
		if err != nil {
			return err
		}
		ldflags += " " + flags
	}
	args := []string{"build", "-mod=readonly", "-trimpath", "-ldflags=" + ldflags, "-o", tmpName, b.pkg}
	cmd := goCommand(ctx, moduleDir, args...)
	// Static binaries, as Kubernetes and etcd release them.
	cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	cmd.Stdout = log
	cmd.Stderr = log
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("build of %s interrupted, nothing was installed: %w", b.name, context.Cause(ctx))
		}
		return fmt.Errorf("go %s (in %s): %w", strings.Join(args, " "), moduleDir, err)
	}
	if err := os.Chmod(tmpName, 0o755); err != nil {
		return err
	}
	return os.Rename(tmpName, target)
}

// kubeVersionLDFlags stamps the version that kube-apiserver reports on /version, the
// way Kubernetes' hack/lib/version.sh does for a release build. The git commit is not
// known from a module download, so it is left empty rather than invented; the build
// date is the module's publication time, which keeps the binary reproducible.
func kubeVersionLDFlags(ctx context.Context, moduleDir string) (string, error) {
	major, minor, err := majorMinor(KubernetesVersion)
	if err != nil {
		return "", err
	}
	buildDate := "1970-01-01T00:00:00Z"
	out, err := goOutput(ctx, moduleDir, "list", "-mod=readonly", "-m", "-f", `{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}`, "k8s.io/kubernetes")
	if err != nil {
		return "", err
	}
	if t := strings.TrimSpace(out); t != "" {
		buildDate = t
	}
	vars := []struct{ key, value string }{
		{"gitVersion", KubernetesVersion},
		{"gitMajor", major},
		{"gitMinor", minor},
		{"gitCommit", ""},
		{"gitTreeState", "clean"},
		{"buildDate", buildDate},
	}
	var flags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		for _, v := range vars {
			flags = append(flags, fmt.Sprintf("-X %s.%s=%s", pkg, v.key, v.value))
		}
	}
	return strings.Join(flags, " "), nil
}

// majorMinor splits "v1.37.2" into "1" and "37".
func majorMinor(version string) (string, string, error) {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) != 3 {
		return "", "", fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH", version)
	}
	return parts[0], parts[1], nil
}

// mainModuleRoot finds the meshproof checkout that holds the wrapper modules: the main
// module of the working directory, as the go command sees it.
func mainModuleRoot(ctx context.Context) (string, error) {
	out, err := goOutput(ctx, "", "env", "GOMOD")
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(out)
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("the working directory is not inside the meshproof checkout, so the pinned wrapper modules under %s cannot be found: run from the checkout, or set %s", wrapperModulesDir, AssetsEnv)
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	if path := modfile.ModulePath(data); path != mainModulePath {
		return "", fmt.Errorf("%s declares module %q, not %s: run from the meshproof checkout, or set %s", gomod, path, mainModulePath, AssetsEnv)
	}
	return filepath.Dir(gomod), nil
}

// goCommand prepares the go tool in dir. GOWORK is turned off so a go.work the
// developer may have does not pull the wrapper modules into another build list.
func goCommand(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	killProcessGroupOnCancel(cmd)
	return cmd
}

func goOutput(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := goCommand(ctx, dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("the go command is needed to build the control-plane binaries: %w", err)
		}
		return "", fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
