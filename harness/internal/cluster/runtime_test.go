package cluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	kindlog "sigs.k8s.io/kind/pkg/log"
)

// engineAnswers checks, independently of the code under test, whether any
// container engine kind supports answers on this machine.
func engineAnswers(t *testing.T) (bool, string) {
	t.Helper()
	for _, bin := range []string{"docker", "podman", "nerdctl", "finch"} {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, bin, "info")
		cmd.WaitDelay = time.Second
		err := cmd.Run()
		cancel()
		if err == nil {
			return true, bin
		}
	}
	return false, ""
}

// TestRuntimeCheckOnThisMachine runs the real check. On a machine without a
// working engine (like meshproof's build machine, which has the docker
// client but no daemon) it must return the one clear error, and Create must
// return it too, before touching anything; where an engine answers, the
// check must pass.
func TestRuntimeCheckOnThisMachine(t *testing.T) {
	t.Setenv("KIND_EXPERIMENTAL_PROVIDER", "")
	available, bin := engineAnswers(t)
	ctx := context.Background()
	option, err := checkContainerRuntime(ctx)
	if available {
		if err != nil || option == nil {
			t.Fatalf("`%s info` works here, but the runtime check failed: %v", bin, err)
		}
		return
	}
	if !errors.Is(err, ErrNoContainerRuntime) {
		t.Fatalf("no engine answers here, but the runtime check returned %v", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "meshproof needs a container runtime for kind: install Docker or Podman and make sure `docker info`") {
		t.Errorf("error does not lead with what is missing and how to fix it: %s", msg)
	}
	if _, lookErr := exec.LookPath("docker"); lookErr == nil && !strings.Contains(msg, "the docker client is installed but") {
		t.Errorf("the docker client is on PATH, but the error does not say its engine is what is missing: %s", msg)
	}
	t.Logf("runtime check says: %s", msg)

	runDir := filepath.Join(t.TempDir(), "run")
	k, err := NewKind("mp", WithKubeconfigDir(runDir))
	if err != nil {
		t.Fatal(err)
	}
	_, createErr := k.Create(ctx)
	if !errors.Is(createErr, ErrNoContainerRuntime) {
		t.Fatalf("Create without an engine returned %v", createErr)
	}
	if _, statErr := os.Stat(runDir); !os.IsNotExist(statErr) {
		t.Errorf("Create did work before reporting the missing engine: %s exists", runDir)
	}
}

// fakeClients puts shell scripts standing in for container engine clients on
// an otherwise empty PATH.
func fakeClients(t *testing.T, scripts map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	t.Setenv("KIND_EXPERIMENTAL_PROVIDER", "")
}

const (
	deadDocker = `case "$1" in
-v) echo "Docker version 28.2.2, build e6534b4";;
info) echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2; exit 1;;
esac
`
	liveDocker = `case "$1" in
-v) echo "Docker version 28.2.2, build e6534b4";;
info) echo "28.2.2";;
esac
`
	livePodman = `case "$1" in
-v) echo "podman version 5.4.0";;
info) [ "$3" = "{{.Version.Version}}" ] && echo "5.4.0";;
esac
`
)

func TestRuntimeCheckWithFakeClients(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Fatalf("the fake clients need /bin/sh: %v", err)
	}
	cases := []struct {
		desc    string
		scripts map[string]string
		forced  string
		wantErr []string // empty: the check must pass
	}{
		{"no client at all", nil, "", []string{"meshproof needs a container runtime for kind", "none of docker, podman, nerdctl or finch is on PATH"}},
		{"docker client without engine", map[string]string{"docker": deadDocker}, "", []string{
			"meshproof needs a container runtime for kind: install Docker or Podman",
			"the docker client is installed but its engine does not answer: `docker info` said: Cannot connect to the Docker daemon",
			"start the engine",
		}},
		{"docker engine answers", map[string]string{"docker": liveDocker}, "", nil},
		{"dead docker, live podman", map[string]string{"docker": deadDocker, "podman": livePodman}, "", nil},
		{"forced podman absent", map[string]string{"docker": liveDocker}, "podman", []string{"podman is not on PATH"}},
		{"forced unknown provider", map[string]string{"docker": liveDocker}, "lxc", []string{`KIND_EXPERIMENTAL_PROVIDER="lxc" is not one of`}},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			fakeClients(t, tc.scripts)
			if tc.forced != "" {
				t.Setenv("KIND_EXPERIMENTAL_PROVIDER", tc.forced)
			}
			option, err := checkContainerRuntime(context.Background())
			if len(tc.wantErr) == 0 {
				if err != nil || option == nil {
					t.Fatalf("check failed: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrNoContainerRuntime) {
				t.Fatalf("check returned %v, want ErrNoContainerRuntime", err)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestRuntimeErrorComesFirst checks that every Kind operation that needs
// kind reports a missing engine before any other work or validation.
func TestRuntimeErrorComesFirst(t *testing.T) {
	missing := errors.New("no engine")
	dir := filepath.Join(t.TempDir(), "never-created")
	k, err := NewKind("mp", WithKubeconfigDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	checks := 0
	k.check = func(context.Context) (kindcluster.ProviderOption, error) {
		checks++
		return nil, errors.Join(ErrNoContainerRuntime, missing)
	}
	k.newProvider = func(kindcluster.ProviderOption, kindlog.Logger) kindProvider {
		t.Error("kind's provider was built although the runtime check failed")
		return nil
	}
	ctx := context.Background()
	calls := map[string]func() error{
		"Create":             func() error { _, err := k.Create(ctx, "--bad-arg"); return err },
		"CreateWithConfig":   func() error { _, err := k.CreateWithConfig(ctx, "missing.yaml"); return err },
		"ExportLogs":         func() error { return k.ExportLogs(ctx, filepath.Join(dir, "logs")) },
		"LoadImageArchive":   func() error { return k.LoadImageArchive(ctx, "/does/not/exist.tar") },
		"GenerateKubeconfig": func() error { _, err := k.GenerateKubeconfig(); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, missing) {
			t.Errorf("%s returned %v, want the runtime error first", name, err)
		}
	}
	if checks != len(calls) {
		t.Errorf("runtime checked %d times for %d failing calls", checks, len(calls))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s was created despite the missing engine", dir)
	}
	// Nothing was created, so Destroy has nothing to do and needs no engine.
	if err := k.Destroy(ctx); err != nil {
		t.Errorf("Destroy after failed Create: %v", err)
	}
}
