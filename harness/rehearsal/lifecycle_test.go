package rehearsal_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/internal/proctree"
)

// A setup whose istiod never runs (its pods select no node) fails with the
// reason, writes the failure into JUnit and results.json and leaves
// nothing on the cluster.
func TestIstiodNeverReadyFailsTheSetup(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "testdata/istiod-unschedulable.yaml", rehearsal.WithIstioReadyTimeout(20*time.Second))
	sum := execute(t, c, r)
	if !sum.SetupFailed || sum.Passed != 0 {
		t.Fatalf("summary %+v, want the setup failed and nothing passed", sum)
	}
	f := readFolder(t, r.Dir())
	var setup *results.Verdict
	for i, v := range f.verdicts {
		if v.Step == results.SetupStep && v.Scenario == "" {
			setup = &f.verdicts[i]
		}
	}
	if setup == nil || setup.Status != results.Failed {
		t.Fatalf("results.json has no failed setup verdict: %+v", f.verdicts)
	}
	t.Logf("setup failure: %s", setup.Reason)
	if !strings.Contains(setup.Reason, "istiod") {
		t.Errorf("the setup's reason does not name istiod: %s", setup.Reason)
	}
	if f.junit.Failures == 0 {
		t.Error("junit.xml records no failure")
	}
	f.bannerTells(t, sum)
	if setup.Diagnostics == "" {
		t.Error("the failed setup has no diagnostics")
	} else if _, err := os.Stat(filepath.Join(r.Dir(), setup.Diagnostics)); err != nil {
		t.Errorf("diagnostics: %v", err)
	}
	f.labelled(t)
}

// A second run right after the first meets the first run's namespace still
// terminating and waits for it before it deploys its fixtures there, then
// passes. A ConfigMap with a finalizer (as a user's controller may leave)
// keeps the first run's namespace terminating until the second run's
// sweep of leftovers has begun.
func TestRerunWaitsForTheFirstRunsNamespace(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	const ns, finalizer = "rehearsal-rerun", "meshproof.dev/test-hold"
	first := newRun(t, c, "testdata/rerun.yaml")
	held := make(chan error, 1)
	go func() {
		held <- wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "hold", Namespace: ns, Finalizers: []string{finalizer}}}
			_, err := c.kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
			return err == nil, nil
		})
	}()
	if sum := execute(t, c, first); !sum.OK() {
		t.Fatalf("first run: %+v", sum)
	}
	if err := <-held; err != nil {
		t.Fatalf("holding the first run's namespace: %v", err)
	}
	if got, err := c.kube.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); err != nil || got.DeletionTimestamp == nil {
		t.Fatalf("after the first run namespace %s is not terminating (err %v)", ns, err)
	}
	sweepBegan := make(chan struct{})
	progress := &lines{}
	second := newRunLogging(t, c, "testdata/rerun.yaml", lineWatcher{progressLog(t), "leftovers of earlier runs ...", sweepBegan, progress})
	var released time.Time
	go func() {
		select {
		case <-sweepBegan:
		case <-t.Context().Done():
			return
		}
		time.Sleep(3 * time.Second)
		released = time.Now()
		patch := []byte(`{"metadata":{"finalizers":null}}`)
		if _, err := c.kube.CoreV1().ConfigMaps(ns).Patch(context.Background(), "hold", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Errorf("releasing the namespace: %v", err)
		}
	}()
	if sum := execute(t, c, second); !sum.OK() {
		t.Fatalf("second run: %+v", sum)
	}
	if released.IsZero() {
		t.Fatal("the second run never began its sweep of leftovers")
	}
	if want := `waiting for a leftover of an earlier run to finish terminating cluster=local object="Namespace ` + ns + `"`; !strings.Contains(progress.String(), want) {
		t.Errorf("the second run's progress does not say %q", want)
	}
	got, err := c.kube.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
	if err == nil && got.CreationTimestamp.Time.Before(released) && got.DeletionTimestamp == nil {
		t.Errorf("the second run deployed into the first run's namespace (created %s, released %s)", got.CreationTimestamp, released)
	}
}

// lineWatcher passes progress lines to log (progressLog) and to all, and
// closes seen at the first line holding want.
type lineWatcher struct {
	log  io.Writer
	want string
	seen chan struct{}
	all  *lines
}

func (w lineWatcher) Write(p []byte) (int, error) {
	w.log.Write(p)
	w.all.Write(p)
	if strings.Contains(string(p), w.want) {
		select {
		case <-w.seen:
		default:
			close(w.seen)
		}
	}
	return len(p), nil
}

// SIGINT to `meshproof run --rehearse` in the middle of two scenarios
// running at once, each in namespaces of its own with its own proxyless
// processes: the run stops, removes each scenario's namespaces through the
// ledger, cleans up, still writes junit.xml and results.json, exits 1, and
// no process it started is left.
func TestInterruptedCommandLeavesNothing(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "meshproof")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/meshproof/meshproof/cmd/meshproof")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	reports := t.TempDir()
	cmd := exec.Command(bin, "run", "testdata/interrupted.yaml", "--rehearse", "--reports", reports)
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
	begun := map[string]bool{} // scenarios whose first step passed
	for len(begun) < 2 {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("meshproof ended before the step to interrupt; output:\n%s\nstderr:\n%s", output.String(), stderr.String())
			}
			output.WriteString(line + "\n")
			if strings.Contains(line, "step passed") && strings.Contains(line, `step="1 mtls`) {
				_, name, _ := strings.Cut(line, "scenario=")
				name, _, _ = strings.Cut(name, " ")
				begun[name] = true
			}
		case <-deadline:
			t.Fatalf("no step began within 10 minutes; output:\n%s", output.String())
		}
	}
	// Both expect steps have begun; interrupt once each has recorded a
	// round from both data planes (results.json is written as the run
	// goes), so that the interrupt lands among running probes, not on a
	// guess of how long a round takes on a loaded machine.
	probed := func() bool {
		dir, err := filepath.EvalSymlinks(filepath.Join(reports, report.LatestLink))
		if err != nil {
			return false
		}
		obs, _, _ := report.ReadResults(filepath.Join(dir, report.ResultsFile))
		seen := map[string]bool{}
		for _, o := range obs {
			if o.Step == "never" {
				seen[o.Scenario+"|"+o.DataPlane] = true
			}
		}
		return len(seen) == 4
	}
	for tick := time.Tick(200 * time.Millisecond); !probed(); {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("meshproof ended before the interrupt; output:\n%s\nstderr:\n%s", output.String(), stderr.String())
			}
			output.WriteString(line + "\n")
		case <-tick:
		case <-deadline:
			t.Fatalf("the interrupted steps recorded no round of both data planes within 10 minutes; output:\n%s", output.String())
		}
	}
	if descendants, err = proctree.Descendants(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
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
		t.Errorf("meshproof exited with %v, want status 1", err)
	}
	if len(descendants) < 6 {
		t.Errorf("only %d processes under meshproof before the interrupt (%v), want the local cluster's parts and istiod", len(descendants), descendants)
	}
	// grpc-a's pod and its client pod in each scenario's copy: a
	// pilot-agent and an echo each, serving or idle. (legacy's probes run as "echo
	// probe" for as long as a request, so the snapshot may hold one.)
	if running := proctree.Running(descendants); proctree.Names(descendants)["pilot-agent"] != 4 || running["echo serve"]+running["echo idle"] != 4 {
		t.Errorf("processes under meshproof before the interrupt: %v, want the pilot-agent and echo (server or idle client) of grpc-a's two pods in each of the two scenarios' namespaces", running)
	}
	for _, p := range descendants {
		if p.Alive() {
			t.Errorf("process %d (%s) outlived meshproof", p.Pid, p.Name)
		}
	}
	for _, bad := range []string{"clean-up stopped", "teardown:", "undoing what the run created"} {
		if strings.Contains(output.String()+stderr.String(), bad) {
			t.Errorf("the clean-up did not finish cleanly (%q in the output)", bad)
		}
	}
	if n := strings.Count(output.String(), "scenario's namespaces removed"); n != 2 {
		t.Errorf("the output shows %d scenarios' namespaces removed, want both", n)
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(reports, report.LatestLink))
	if err != nil {
		t.Fatal(err)
	}
	f := readFolder(t, dir)
	nevers := 0
	for _, v := range f.verdicts {
		if v.Step != "never" {
			continue
		}
		nevers++
		if v.Status == results.Passed {
			t.Errorf("the interrupted step of %s passed", v.Scenario)
		}
	}
	if nevers != 2 {
		t.Errorf("%d verdicts of the interrupted steps, want 2 (failed or skipped)", nevers)
	}
	var rec ledger.Record
	if data, err := os.ReadFile(filepath.Join(dir, ledger.FileName)); err != nil {
		t.Error(err)
	} else if err := json.Unmarshal(data, &rec); err != nil {
		t.Error(err)
	} else if len(rec.Removed) != 2 {
		t.Errorf("the ledger lists %d namespaces removed (%v), want each scenario's", len(rec.Removed), rec.Removed)
	}
	if f.junit.Tests == 0 {
		t.Error("junit.xml has no testcase")
	}
	f.proxylessLabelled(t, 7070, "grpc-a")
}

// The root CA is rotated (Istio's multi-root procedure) and Istio upgraded
// in place from 1.29.6's charts to 1.30.3's under traffic. One istiod build
// serves both versions' charts; the report's label says so.
func TestRotateRootAndUpgradeInPlace(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "testdata/upgrade-in-place.yaml")
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() {
		t.Errorf("summary %+v; failed: %q", sum, f.failedCases())
	}
	f.labelled(t)
}

// The upgrade-validation recipe the README shows, examples/upgrade.yaml,
// passes as written: Istio 1.29.6 upgraded to 1.30.3 by a canary revision
// (a second istiod revision, its own real istiod process, the namespaces
// relabelled, the workloads restarted onto it) and in place, each under
// continuous traffic, then STRICT and certificate rotation checked on the
// new version. One method per local cluster, as
// `meshproof run --label-filter` selects them.
func TestUpgradeExample(t *testing.T) {
	for _, method := range []string{"canary", "in-place"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			c := takeCluster(t)
			r := newRunSelecting(t, c, "../../examples/upgrade.yaml", method, progressLog(t))
			if got := len(r.Scenarios()); got != 1 {
				t.Fatalf("--label-filter %s selects %d scenarios, want 1", method, got)
			}
			sum := execute(t, c, r)
			f := readFolder(t, r.Dir())
			if !sum.OK() || sum.Passed != 5 {
				t.Errorf("summary %+v, want the 5 steps passed; failed: %q", sum, f.failedCases())
			}
			kinds := map[string]bool{}
			for _, v := range f.verdicts {
				if v.Status == results.Passed {
					kinds[v.Kind] = true
				}
			}
			for _, k := range []string{"upgrade", "expect", "rotate"} {
				if !kinds[k] {
					t.Errorf("no passed %s step: %v", k, f.verdicts)
				}
			}
			f.bannerTells(t, sum)
			f.labelled(t)
		})
	}
}
