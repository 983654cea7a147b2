package binaries

import (
	"bytes"
	"context"
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
// stand-in: a real first build takes twenty minutes.
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

	every, build := progressEvery, buildFunc
	t.Cleanup(func() { progressEvery, buildFunc = every, build })
	progressEvery = 40 * time.Millisecond
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
