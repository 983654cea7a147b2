package binaries

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

func readWrapperModFile(t *testing.T, module string) *modfile.File {
	t.Helper()
	path := filepath.Join("assets", module, "go.mod")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.Parse(path, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func requiredVersion(f *modfile.File, path string) string {
	for _, r := range f.Require {
		if r.Mod.Path == path {
			return r.Mod.Version
		}
	}
	return ""
}

// The cache key and the /version stamp come from the constants; the binaries come
// from the wrapper modules. They must agree, or the cache would hold a binary under
// the wrong version's name.
func TestConstantsMatchWrapperModules(t *testing.T) {
	kube := readWrapperModFile(t, "kube-apiserver")
	if got := requiredVersion(kube, "k8s.io/kubernetes"); got != KubernetesVersion {
		t.Errorf("kube-apiserver/go.mod requires k8s.io/kubernetes %q, KubernetesVersion is %q", got, KubernetesVersion)
	}
	etcd := readWrapperModFile(t, "etcd")
	if got := requiredVersion(etcd, "go.etcd.io/etcd/server/v3"); got != EtcdVersion {
		t.Errorf("etcd/go.mod requires go.etcd.io/etcd/server/v3 %q, EtcdVersion is %q", got, EtcdVersion)
	}
}

// Every staging module that k8s.io/kubernetes replaces with ./staging/src/... must be
// pinned by the wrapper module to the matching v0.X.Y release, or the build would mix
// staging versions (or fail on the unreachable relative path).
func TestWrapperPinsEveryStagingModule(t *testing.T) {
	kube := readWrapperModFile(t, "kube-apiserver")
	pinned := map[string]string{}
	for _, r := range kube.Replace {
		pinned[r.Old.Path] = r.New.Path + "@" + r.New.Version
	}

	cmd := exec.Command("go", "list", "-mod=readonly", "-m", "-f", "{{.GoMod}}", "k8s.io/kubernetes")
	cmd.Dir = filepath.Join("assets", "kube-apiserver")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("locating k8s.io/kubernetes's go.mod: %v: %s", err, stderr.String())
	}
	upstreamPath := strings.TrimSpace(string(out))
	data, err := os.ReadFile(upstreamPath)
	if err != nil {
		t.Fatal(err)
	}
	upstream, err := modfile.Parse(upstreamPath, data, nil)
	if err != nil {
		t.Fatal(err)
	}

	_, minor, err := majorMinor(KubernetesVersion)
	if err != nil {
		t.Fatal(err)
	}
	want := "v0." + minor + "." + strings.SplitN(KubernetesVersion, ".", 3)[2]
	staging := 0
	for _, r := range upstream.Replace {
		if !strings.HasPrefix(r.New.Path, "./staging/") {
			continue
		}
		staging++
		if got, expected := pinned[r.Old.Path], r.Old.Path+"@"+want; got != expected {
			t.Errorf("staging module %s: wrapper pins %q, want %q", r.Old.Path, got, expected)
		}
	}
	if staging == 0 {
		t.Fatalf("%s has no ./staging replacements; the wrapper's assumptions no longer hold", upstreamPath)
	}
	t.Logf("%d staging modules pinned to %s", staging, want)
}

func TestDirLayoutUnderMeshproofCache(t *testing.T) {
	root := t.TempDir()
	t.Setenv(CacheEnv, root)
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "envtest", "k8s-1.37.2-etcd-3.7.0"); dir != want {
		t.Errorf("Dir() = %q, want %q", dir, want)
	}
}

func TestDirFallsBackToXDGCacheHome(t *testing.T) {
	xdg := t.TempDir()
	t.Setenv(CacheEnv, "")
	t.Setenv("XDG_CACHE_HOME", xdg)
	root, err := CacheRoot()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(xdg, "meshproof"); root != want {
		t.Errorf("CacheRoot() = %q, want %q", root, want)
	}
}

func writeExecutable(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureReturnsKubebuilderAssetsWithoutBuilding(t *testing.T) {
	assets := t.TempDir()
	writeExecutable(t, filepath.Join(assets, KubeAPIServer))
	writeExecutable(t, filepath.Join(assets, Etcd))
	t.Setenv(AssetsEnv, assets)
	// An empty cache proves nothing was looked up or built there.
	cache := t.TempDir()
	t.Setenv(CacheEnv, cache)

	var log bytes.Buffer
	dir, err := EnsureWithLog(context.Background(), &log)
	if err != nil {
		t.Fatal(err)
	}
	if dir != assets {
		t.Errorf("Ensure() = %q, want KUBEBUILDER_ASSETS %q", dir, assets)
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 0 {
		t.Errorf("cache %s was written to: %v", cache, entries)
	}
	if log.Len() != 0 {
		t.Errorf("unexpected build log: %s", log.String())
	}
}

func TestEnsureRejectsIncompleteKubebuilderAssets(t *testing.T) {
	assets := t.TempDir()
	writeExecutable(t, filepath.Join(assets, KubeAPIServer))
	t.Setenv(AssetsEnv, assets)

	_, err := EnsureWithLog(context.Background(), &bytes.Buffer{})
	if err == nil {
		t.Fatal("Ensure accepted a KUBEBUILDER_ASSETS without etcd")
	}
	for _, want := range []string{AssetsEnv, Etcd} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestEnsureReusesCompleteCache(t *testing.T) {
	t.Setenv(AssetsEnv, "")
	t.Setenv(CacheEnv, t.TempDir())
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, filepath.Join(dir, KubeAPIServer))
	writeExecutable(t, filepath.Join(dir, Etcd))

	var log bytes.Buffer
	got, err := EnsureWithLog(context.Background(), &log)
	if err != nil {
		t.Fatal(err)
	}
	if got != dir {
		t.Errorf("Ensure() = %q, want cached %q", got, dir)
	}
	if log.Len() != 0 {
		t.Errorf("a complete cache was rebuilt: %s", log.String())
	}
}

// buildOne is exercised on a tiny module so the temp-file-and-rename path and the
// ldflags plumbing are proven without a multi-minute Kubernetes build.
func TestBuildOneInstallsAtomicallyWithLDFlags(t *testing.T) {
	module := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/stamp\n\ngo 1.26.0\n",
		"main.go": "package main\n\nvar stamp = \"unset\"\n\nfunc main() { println(stamp) }\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(module, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	target := filepath.Join(out, "stamp")
	b := binary{
		name: "stamp",
		pkg:  "example.com/stamp",
		ldflags: func(context.Context, string) (string, error) {
			return "-X main.stamp=stamped", nil
		},
	}
	var log bytes.Buffer
	if err := buildOne(context.Background(), module, b, target, &log); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if err := checkExecutable(target); err != nil {
		t.Fatal(err)
	}
	run, err := exec.Command(target).CombinedOutput()
	if err != nil {
		t.Fatalf("running built binary: %v: %s", err, run)
	}
	if got := strings.TrimSpace(string(run)); got != "stamped" {
		t.Errorf("built binary printed %q, want the ldflags stamp %q", got, "stamped")
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("output dir holds %d entries, want only the final binary (no temp leftovers): %v", len(entries), entries)
	}
}

func TestBuildOneFailureLeavesNoFile(t *testing.T) {
	module := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/broken\n\ngo 1.26.0\n",
		"main.go": "package main\n\nfunc main() { undefinedFunction() }\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(module, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	var log bytes.Buffer
	err := buildOne(context.Background(), module, binary{name: "broken", pkg: "example.com/broken"}, filepath.Join(out, "broken"), &log)
	if err == nil {
		t.Fatal("a module that does not compile was reported as built")
	}
	if !strings.Contains(log.String(), "undefinedFunction") {
		t.Errorf("compiler output was not passed to the log: %q", log.String())
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a failed build left files behind: %v", entries)
	}
}

func TestKubeVersionLDFlagsStampBothVersionPackages(t *testing.T) {
	flags, err := kubeVersionLDFlags(context.Background(), filepath.Join("assets", "kube-apiserver"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"-X k8s.io/component-base/version.gitVersion=v1.37.2",
		"-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2",
		"-X k8s.io/component-base/version.gitMajor=1",
		"-X k8s.io/component-base/version.gitMinor=37",
	} {
		if !strings.Contains(flags, want) {
			t.Errorf("ldflags %q lack %q", flags, want)
		}
	}
	if strings.Contains(flags, "buildDate=1970") {
		t.Errorf("build date was not taken from the module's publication time: %q", flags)
	}
}

func TestBuildOneCancelledLeavesNoFile(t *testing.T) {
	module := t.TempDir()
	files := map[string]string{
		"go.mod":  "module example.com/cancelled\n\ngo 1.26.0\n",
		"main.go": "package main\n\nfunc main() {}\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(module, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := t.TempDir()
	err := buildOne(ctx, module, binary{name: "cancelled", pkg: "example.com/cancelled"}, filepath.Join(out, "cancelled"), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("cancelled build returned %v, want an interruption error", err)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a cancelled build left files behind: %v", entries)
	}
}
