package binaries

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log written by the builder and the progress ticker.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// First-use builds say which of how many is building, how long it and all
// of them have taken at a steady pace while it builds, and what is left;
// what the cache holds is not counted. The compiler is replaced by a slow
// stand-in: a real first build takes twenty minutes. One build at a time
// here, so that the lines come in one order (builds side by side:
// TestModulesBuildSideBySide).
func TestFirstUseBuildsSayKOfNElapsedAndWhatIsLeft(t *testing.T) {
	t.Setenv(AssetsEnv, "")
	t.Setenv(ToolsEnv, "")
	t.Setenv(CacheEnv, t.TempDir())
	dir, err := ToolDir(Kwok)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, filepath.Join(dir, Kwok.name)) // cached: not built, not counted

	every, build, parallel := progressEvery, buildFunc, parallelBuilds
	t.Cleanup(func() { progressEvery, buildFunc, parallelBuilds = every, build, parallel })
	progressEvery = 40 * time.Millisecond
	parallelBuilds = 1
	buildFunc = func(_ context.Context, _ string, b binary, target string, _ io.Writer) error {
		time.Sleep(150 * time.Millisecond)
		return os.WriteFile(target, []byte("#!/bin/sh\n"), 0o755)
	}
	var log syncBuffer
	assets, paths, err := EnsureAll(t.Context(), &log, KubeScheduler, Kwok, PilotAgent)
	if err != nil {
		t.Fatal(err)
	}
	if checkComplete(assets) != nil || len(paths) != 3 || filepath.Base(paths[2]) != "pilot-agent" {
		t.Fatalf("EnsureAll = %s, %q", assets, paths)
	}
	out := log.String()
	t.Logf("build log:\n%s", out)
	for _, want := range []string{
		"binaries: building 1 of 4: etcd (go.etcd.io/etcd/server/v3), first use only (minutes each on a cold Go build cache); left after it: kube-apiserver, kube-scheduler, pilot-agent\n",
		"binaries: still building etcd (1 of 4): 0s on it, 0s in all; left after it: kube-apiserver, kube-scheduler, pilot-agent\n",
		"binaries: built etcd in 0s (1 of 4 done, 0s in all)\n",
		"binaries: building 3 of 4: kube-scheduler",
		"binaries: building 4 of 4: pilot-agent (istio.io/istio/pilot/cmd/pilot-agent), first use only (minutes each on a cold Go build cache); nothing after it\n",
		"binaries: built pilot-agent in 0s (4 of 4 done, ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the build log lacks %q", want)
		}
	}
	if strings.Contains(out, "kwok (") {
		t.Error("the cached kwok was built again")
	}
	// A steady pace: every build of 150ms says at least twice it still runs.
	if n := strings.Count(out, "still building"); n < 8 {
		t.Errorf("%d progress lines for 4 builds of 150ms at one per 40ms, want at least 8", n)
	}
}

// The binaries of different wrapper modules build side by side, two at a
// time; those of one module one after another (the second reuses what the
// first compiled); each missing binary is built once, and the progress
// says what builds beside each. The stand-in compiler of one module waits
// until another module's build has begun, so builds made one at a time
// would fail the test rather than slow it.
func TestModulesBuildSideBySide(t *testing.T) {
	t.Setenv(AssetsEnv, "")
	t.Setenv(ToolsEnv, "")
	t.Setenv(CacheEnv, t.TempDir())
	build, parallel := buildFunc, parallelBuilds
	t.Cleanup(func() { buildFunc, parallelBuilds = build, parallel })
	parallelBuilds = 2

	var (
		mu       sync.Mutex
		running  = map[string]int{} // wrapper module -> builds running
		atOnce   int                // most builds running at one time
		built    = map[string]int{}
		kubeSeen = make(chan struct{})
		kubeOnce sync.Once
	)
	buildFunc = func(ctx context.Context, _ string, b binary, target string, _ io.Writer) error {
		mu.Lock()
		running[b.module]++
		if running[b.module] > 1 {
			t.Errorf("two builds of wrapper module %s at once", b.module)
		}
		now := 0
		for _, n := range running {
			now += n
		}
		atOnce = max(atOnce, now)
		built[b.name]++
		mu.Unlock()
		defer func() {
			mu.Lock()
			running[b.module]--
			mu.Unlock()
		}()
		switch b.module {
		case "kube-apiserver":
			kubeOnce.Do(func() { close(kubeSeen) })
			time.Sleep(50 * time.Millisecond)
		case "etcd":
			// etcd comes first; the kube module's build must begin beside it.
			select {
			case <-kubeSeen:
			case <-time.After(time.Minute):
				return errors.New("no other module's build began while etcd built")
			}
		}
		return os.WriteFile(target, []byte("#!/bin/sh\n"), 0o755)
	}
	var log syncBuffer
	_, paths, err := EnsureAll(t.Context(), &log, KubeControllerManager, KubeScheduler, Kwok, KwokStages, PilotDiscovery, PilotAgent)
	if err != nil {
		t.Fatal(err)
	}
	out := log.String()
	t.Logf("build log:\n%s", out)
	if len(paths) != 6 {
		t.Fatalf("EnsureAll returned %d tool paths, want 6: %q", len(paths), paths)
	}
	for _, name := range []string{Etcd, KubeAPIServer, "kube-controller-manager", "kube-scheduler", "kwok", "kwok-stages", "pilot-discovery", "pilot-agent"} {
		if built[name] != 1 {
			t.Errorf("%s built %d times, want once", name, built[name])
		}
	}
	if atOnce != 2 {
		t.Errorf("at most %d builds ran at once, want %d", atOnce, parallelBuilds)
	}
	// The first two modules begin at once, so either may be numbered 1;
	// the second says the first builds beside it.
	first, second := "etcd", "kube-apiserver"
	if strings.Contains(out, "building 1 of 8: kube-apiserver") {
		first, second = second, first
	}
	for _, want := range []string{"building 1 of 8: " + first, "building 2 of 8: " + second, "beside it: " + first, "built pilot-agent in", "(8 of 8 done, "} {
		if !strings.Contains(out, want) {
			t.Errorf("the build log lacks %q", want)
		}
	}
}

// The first build that fails stops the builds beside it: EnsureAll names
// the failed binary, and the interrupted build leaves no file.
func TestFailedBuildStopsTheOthers(t *testing.T) {
	t.Setenv(AssetsEnv, "")
	t.Setenv(ToolsEnv, "")
	t.Setenv(CacheEnv, t.TempDir())
	build, parallel := buildFunc, parallelBuilds
	t.Cleanup(func() { buildFunc, parallelBuilds = build, parallel })
	parallelBuilds = 2
	buildFunc = func(ctx context.Context, _ string, b binary, target string, _ io.Writer) error {
		if b.name == Etcd {
			return errors.New("compiler exploded")
		}
		<-ctx.Done() // the kube-apiserver build runs until it is stopped
		return ctx.Err()
	}
	_, _, err := EnsureAll(t.Context(), io.Discard, KubeScheduler)
	if err == nil || !strings.Contains(err.Error(), "building etcd") || !strings.Contains(err.Error(), "compiler exploded") {
		t.Fatalf("EnsureAll = %v, want etcd's failure", err)
	}
	dir, err := Dir()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{Etcd, KubeAPIServer} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s exists after the builds failed", name)
		}
	}
}
