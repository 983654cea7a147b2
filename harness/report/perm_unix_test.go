//go:build unix

package report

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func setUmask(mask int) int { return syscall.Umask(mask) }

func TestPermissions(t *testing.T) {
	// A restrictive umask must not make the report unreadable to artifact
	// collectors; results hold no secrets.
	old := setUmask(0o077)
	defer setUmask(old)

	root := filepath.Join(t.TempDir(), "reports")
	r := open(t, root, "run-1")
	r.Record(observation(1))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mode := func(path string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if got := mode(r.Dir); got != 0o755 {
		t.Errorf("run folder mode %v, want 0755", got)
	}
	for _, path := range []string{r.ResultsPath(), r.EventsPath(), r.HTMLPath()} {
		if got := mode(path); got != 0o644 {
			t.Errorf("%s mode %v, want 0644", filepath.Base(path), got)
		}
	}
}
