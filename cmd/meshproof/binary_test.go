package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	builtOnce sync.Once
	builtDir  string
	builtPath string
	builtErr  error
)

// TestMain removes the built command's directory after the tests: 170 MB
// each run would otherwise leave in the machine's temporary directory.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtDir != "" {
		if err := os.RemoveAll(builtDir); err != nil {
			fmt.Fprintln(os.Stderr, "removing the built meshproof:", err)
		}
	}
	os.Exit(code)
}

// binary builds the meshproof command once per test process, as a user
// builds it (go build, so the build info carries the VCS stamp), and
// returns its path.
func binary(t *testing.T) string {
	t.Helper()
	builtOnce.Do(func() {
		dir, err := os.MkdirTemp("", "meshproof-cli-")
		if err != nil {
			builtErr = err
			return
		}
		builtDir, builtPath = dir, filepath.Join(dir, "meshproof")
		// -buildvcs=auto: the build stamps the commit as a user's build of
		// a clone does, whatever GOFLAGS says.
		out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			builtErr = errors.New(string(out))
		}
	})
	if builtErr != nil {
		t.Fatalf("building meshproof: %v", builtErr)
	}
	return builtPath
}

// runBinary runs the built command with stdout and stderr as pipes (not a
// terminal), in dir, and returns its exit code and output.
func runBinary(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

// A usage error of `meshproof run` (a label filter that selects nothing, or
// one that does not parse) exits 2 before anything exists: no run folder,
// and reports/latest still points at the last real run. Nothing it prints
// holds an ANSI escape: stdout and stderr are pipes here.
func TestRunUsageErrorLeavesTheReportsAlone(t *testing.T) {
	reports := t.TempDir()
	if err := os.Mkdir(filepath.Join(reports, "20260101-000000-aaaaaaaa"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("20260101-000000-aaaaaaaa", filepath.Join(reports, "latest")); err != nil {
		t.Fatal(err)
	}
	scenarios, err := filepath.Abs(defaultScenarios)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ filter, want string }{
		{"nothing", `no scenario of ` + scenarios + ` matches --label-filter "nothing"; its scenarios' labels are ambient, destination-rule, disable,`},
		{"((", "label filter \"((\": syntax error parsing label filter: Mismatched '(' - could not find matching ')'.\n  ((\n  ^\n"},
	} {
		code, stdout, stderr := runBinary(t, t.TempDir(), "run", scenarios, "--label-filter", tc.filter, "--reports", reports)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("--label-filter %q: exit %d (want 2), stdout %q, stderr:\n%s\nwant it to say:\n%s", tc.filter, code, stdout, stderr, tc.want)
		}
		if strings.Contains(stdout+stderr, "\x1b") {
			t.Errorf("--label-filter %q: an ANSI escape in output that is not a terminal: %q", tc.filter, stderr)
		}
		entries, err := os.ReadDir(reports)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 2 {
			t.Errorf("--label-filter %q: the reports folder holds %d entries, want the earlier run and latest", tc.filter, len(entries))
		}
		if target, err := os.Readlink(filepath.Join(reports, "latest")); err != nil || target != "20260101-000000-aaaaaaaa" {
			t.Errorf("--label-filter %q: latest points at %q (%v), want the earlier run", tc.filter, target, err)
		}
	}
}

// meshproof version says the commit the binary was built from, as the
// build info holds it (go version -m reads the same stamp); a build without
// a VCS stamp (outside a clone, -buildvcs=false) says (devel) only.
func TestVersionOfTheBuiltBinary(t *testing.T) {
	code, out, _ := runBinary(t, t.TempDir(), "version")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	info, err := exec.Command("go", "version", "-m", binary(t)).Output()
	if err != nil {
		t.Fatal(err)
	}
	stamp := map[string]string{}
	for _, line := range strings.Split(string(info), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "build" {
			k, v, _ := strings.Cut(f[1], "=")
			stamp[k] = v
		}
	}
	if rev := stamp["vcs.revision"]; rev != "" {
		want := "meshproof (devel) commit " + rev[:12] + " " + stamp["vcs.time"]
		if !strings.HasPrefix(out, want) || strings.Contains(out, "uncommitted") != (stamp["vcs.modified"] == "true") {
			t.Errorf("version %q, want it to begin %q and say whether the tree was modified (%s)", out, want, stamp["vcs.modified"])
		}
		t.Logf("stamped: %s", strings.TrimSpace(out))
	} else if !strings.HasPrefix(out, "meshproof (devel) (go") {
		t.Errorf("version %q of a build without a VCS stamp", out)
	}
}
