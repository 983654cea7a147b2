package binaries

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// The tools' cache directories are named by these constants, the binaries come
// from the wrapper modules: they must agree.
func TestToolVersionsMatchWrapperModules(t *testing.T) {
	for _, tc := range []struct{ module, path, want string }{
		{"kwok", "sigs.k8s.io/kwok", KwokVersion},
		{"istiod", "istio.io/istio", IstioVersion},
	} {
		if got := requiredVersion(readWrapperModFile(t, tc.module), tc.path); got != tc.want {
			t.Errorf("%s/go.mod requires %s %q, the constant says %q", tc.module, tc.path, got, tc.want)
		}
	}
}

// Every tool is declared as a tool of its wrapper module, so `go mod tidy` there
// keeps the dependencies its build needs and go.sum verifies all of them.
func TestEveryToolIsDeclaredInItsWrapperModule(t *testing.T) {
	for _, tool := range []Tool{KubeControllerManager, KubeScheduler, Kwok, KwokStages, PilotDiscovery, PilotAgent} {
		f := readWrapperModFile(t, tool.module)
		if strings.HasPrefix(tool.pkg, f.Module.Mod.Path+"/") {
			continue // the wrapper module's own program
		}
		if !slices.ContainsFunc(f.Tool, func(d *modfile.Tool) bool { return d.Path == tool.pkg }) {
			t.Errorf("%s/go.mod does not declare tool %s", tool.module, tool.pkg)
		}
		sum, err := os.ReadFile(filepath.Join("assets", tool.module, "go.sum"))
		if err != nil || len(sum) == 0 {
			t.Errorf("%s has no go.sum: %v", tool.module, err)
		}
	}
}

func TestEnsureToolUsesMeshproofTools(t *testing.T) {
	tools := t.TempDir()
	t.Setenv(ToolsEnv, tools)
	t.Setenv(CacheEnv, t.TempDir())
	writeExecutable(t, filepath.Join(tools, "kwok"))
	var log bytes.Buffer
	got, err := EnsureTool(context.Background(), Kwok, &log)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(tools, "kwok"); got != want || log.Len() != 0 {
		t.Errorf("EnsureTool = %q (log %q), want %q without a build", got, log.String(), want)
	}
}

func TestEnsureToolReusesItsCache(t *testing.T) {
	t.Setenv(ToolsEnv, "")
	t.Setenv(CacheEnv, t.TempDir())
	dir, err := ToolDir(KubeScheduler)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(dir) != "kubernetes-"+KubernetesVersion {
		t.Errorf("kube-scheduler is cached in %s, want a directory named for its Kubernetes release", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, filepath.Join(dir, "kube-scheduler"))
	var log bytes.Buffer
	got, err := EnsureTool(context.Background(), KubeScheduler, &log)
	if err != nil {
		t.Fatal(err)
	}
	if got != filepath.Join(dir, "kube-scheduler") || log.Len() != 0 {
		t.Errorf("EnsureTool = %q (log %q): the cached binary should be used as is", got, log.String())
	}
}
