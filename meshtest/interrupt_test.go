package meshtest_test

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/internal/proctree"
)

// SIGINT to a test binary running meshtest.Run in the middle of a step, as
// a Ctrl-C at the terminal reaches what go test runs: the step stops, the
// run tears down what it created (its local cluster and every namespace in
// it, the proxyless pods' processes), writes junit.xml and results.json,
// and the test fails and reports as usual. No process it started is left,
// nor the local cluster's directory (its etcd: the namespaces).
//
// The checks are harness/rehearsal's for `meshproof run --rehearse`
// (TestInterruptedCommandLeavesNothing), on the test binary instead of the
// CLI.
func TestInterruptedGoTestLeavesNothing(t *testing.T) {
	t.Parallel()
	reports := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChild$", "-test.v", "-test.count=1", "-test.timeout=15m")
	cmd.Env = append(os.Environ(), childFileEnv+"=../harness/rehearsal/testdata/interrupted.yaml", childReportsEnv+"="+reports)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches a terminal's foreground group
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	var output strings.Builder
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var descendants []proctree.Process
	deadline := time.After(10 * time.Minute)
	for interrupted := false; !interrupted; {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the test ended before the step to interrupt; output:\n%s\nstderr:\n%s", output.String(), stderr.String())
			}
			output.WriteString(line + "\n")
			if strings.Contains(line, "=== RUN   TestChild/strict/never") {
				// The expect step has begun; let it run a little.
				time.Sleep(3 * time.Second)
				if descendants, err = proctree.Descendants(cmd.Process.Pid); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
				interrupted = true
			}
		case <-deadline:
			t.Fatalf("no step began within 10 minutes; output:\n%s", output.String())
		}
	}
	for line := range lines {
		output.WriteString(line + "\n")
	}
	err = cmd.Wait()
	// The output last, after what the checks say, so that a CI log cut to
	// its first lines after the failure shows why.
	defer func() { t.Logf("output:\n%s\nstderr:\n%s", output.String(), stderr.String()) }()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("the test binary ended with %v, want status 1 (a test failed)", err)
	}

	if len(descendants) < 6 {
		t.Errorf("only %d processes under the test before the interrupt (%v), want the local cluster's parts and istiod", len(descendants), descendants)
	}
	// grpc-a's pod and its client pod: a pilot-agent and an echo server
	// each (an out-of-mesh client's probe, "echo probe", may be running
	// too).
	if running := proctree.Running(descendants); proctree.Names(descendants)["pilot-agent"] != 2 || running["echo serve"]+running["echo idle"] != 2 {
		t.Errorf("processes under the test before the interrupt: %v, want the pilot-agent and echo (server or idle client) of grpc-a's two pods", running)
	}
	for _, p := range descendants {
		if p.Alive() {
			t.Errorf("process %d (%s) outlived the test", p.Pid, p.Name)
		}
	}
	// The local cluster's directory lives in the binary's scratch
	// directory, /tmp/meshproof-<pid>-*; Destroy removes it.
	left, _ := filepath.Glob(filepath.Join(os.TempDir(), "meshproof-"+strconv.Itoa(cmd.Process.Pid)+"-*", "localcluster-*"))
	for _, dir := range left {
		t.Errorf("the local cluster's directory is left: %s", dir)
	}
	// The rehearsal's own local cluster is destroyed whole (nothing is
	// swept from it first): its parts say so as they stop.
	for _, want := range []string{"go test was interrupted", "the cluster is being destroyed", "--- FAIL: TestChild/strict/never", "--- FAIL: TestChild "} {
		if !strings.Contains(output.String(), want) {
			t.Errorf("the output does not say %q", want)
		}
	}
	for _, bad := range []string{"meshproof teardown:", "may be left:"} {
		if strings.Contains(output.String(), bad) {
			t.Errorf("the teardown did not finish cleanly (%q in the output)", bad)
		}
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(reports, report.LatestLink))
	if err != nil {
		t.Fatal(err)
	}
	_, verdicts, err := report.ReadResults(filepath.Join(dir, report.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var never *results.Verdict
	for i, v := range verdicts {
		if v.Scenario == "strict" && v.Step == "never" {
			never = &verdicts[i]
		}
	}
	if never == nil || never.Status != results.Failed || !strings.HasPrefix(never.Reason, "interrupted: ") {
		t.Errorf("the interrupted step's verdict is %+v, want failed and interrupted", never)
	}
	if _, err := os.Stat(filepath.Join(dir, report.JUnitFile)); err != nil {
		t.Error(err)
	}
}
