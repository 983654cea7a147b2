package meshtest_test

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
)

// event is one line of go test -json (test2json's TestEvent).
type event struct {
	Action string
	Test   string
	Output string
}

// childRun is what go test -json showed of a child run and the run folder
// it wrote.
type childRun struct {
	final  map[string]string   // test → pass, fail or skip
	output map[string][]string // test → its output lines
	order  []string            // tests in the order they started
	dir    string              // the run folder
}

// runChild runs TestChild on file in a child process of this test binary,
// selected by the -run pattern runPattern, with env (KEY=VALUE) added to its
// environment and flags to its command line, through test2json as go test
// -json does, and reads its events and run folder.
func runChild(t *testing.T, file, runPattern string, env []string, flags ...string) childRun {
	t.Helper()
	reports := t.TempDir()
	args := append([]string{"tool", "test2json", "-t", os.Args[0],
		"-test.run=" + runPattern, "-test.v=test2json", "-test.count=1", "-test.timeout=15m"}, flags...)
	cmd := exec.CommandContext(t.Context(), "go", args...)
	cmd.Env = append(append(os.Environ(), childFileEnv+"="+file, childReportsEnv+"="+reports), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("go tool test2json: %v\n%s", err, stderr.String())
	}
	r := childRun{final: map[string]string{}, output: map[string][]string{}}
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		var e event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a test2json event: %q: %v", line, err)
		}
		if e.Test == "" {
			continue
		}
		switch e.Action {
		case "run":
			r.order = append(r.order, e.Test)
		case "output":
			r.output[e.Test] = append(r.output[e.Test], strings.TrimRight(e.Output, "\n"))
		case "pass", "fail", "skip":
			r.final[e.Test] = e.Action
		}
	}
	if t.Failed() || len(r.final) == 0 {
		t.Logf("child output:\n%s\nstderr:\n%s", out, stderr.String())
	}
	if dir, err := filepath.EvalSymlinks(filepath.Join(reports, report.LatestLink)); err == nil {
		r.dir = dir
	}
	return r
}

// folder is the run folder the child wrote.
func (r childRun) folder(t *testing.T) string {
	t.Helper()
	if r.dir == "" {
		t.Fatal("the child wrote no run folder")
	}
	return r.dir
}

// with are the tests that ended with action, sorted.
func (r childRun) with(action string) []string {
	var out []string
	for name, a := range r.final {
		if a == action {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// hasText reports whether test's output holds text's lines in a row, as
// testing prints a message: its first line after the call site, the others
// indented.
func (r childRun) hasText(test, text string) bool {
	want := strings.Split(text, "\n")
	lines := r.output[test]
	for i := range lines {
		if !strings.HasSuffix(lines[i], ": "+want[0]) || i+len(want) > len(lines) {
			continue
		}
		ok := true
		for j := 1; j < len(want); j++ {
			ok = ok && strings.TrimSpace(lines[i+j]) == strings.TrimSpace(want[j])
		}
		if ok {
			return true
		}
	}
	return false
}

// junitCases are the testcases of a run folder's junit.xml: name → failure
// text ("" for none) and whether it was skipped.
type junitCase struct {
	Name    string `xml:"name,attr"`
	Status  string `xml:"status,attr"`
	Failure *struct {
		Text string `xml:",chardata"`
	} `xml:"failure"`
}

func junitCases(t *testing.T, dir string) []junitCase {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, report.JUnitFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var out []junitCase
	for _, s := range doc.Suites {
		out = append(out, s.Cases...)
	}
	return out
}

// A file whose expectations contradict Istio fails exactly the subtests of
// the steps that hold them, each with the text junit.xml gives its
// testcase; the step after a failed one is skipped, the others pass.
func TestContradictionsFailExactlyTheirStepsSubtests(t *testing.T) {
	t.Parallel()
	r := runChild(t, "../harness/rehearsal/testdata/contradicting.yaml", "^TestChild$", nil)
	steps := func(action string) []string {
		return slices.DeleteFunc(r.with(action), func(n string) bool { return strings.Count(n, "/") != 2 })
	}
	want := map[string][]string{
		"fail": {"TestChild/permissive-expected-strict/expect_legacy_reset", "TestChild/strict-expected-open/expect_legacy_plaintext"},
		"pass": {"TestChild/permissive-expected-strict/1_mtls_namespace_PERMISSIVE", "TestChild/strict-expected-open/1_mtls_namespace_STRICT", "TestChild/strict-expected-open/expect_in-mesh"},
		"skip": {"TestChild/permissive-expected-strict/expect_in-mesh"},
	}
	for action, names := range want {
		if got := steps(action); !slices.Equal(got, names) {
			t.Errorf("step subtests that ended %s: %q, want %q", action, got, names)
		}
	}
	// Each failed subtest says what junit.xml says of its testcase.
	failures := 0
	for _, c := range junitCases(t, r.folder(t)) {
		if c.Failure == nil {
			continue
		}
		failures++
		// "[It] <scenario> <step> [<labels>]": the subtest is
		// <scenario>/<step> with go test's underscores for spaces.
		name := strings.TrimPrefix(c.Name, "[It] ")
		name = name[:strings.LastIndex(name, " [")]
		scenario, step, _ := strings.Cut(name, " ")
		test := "TestChild/" + scenario + "/" + strings.ReplaceAll(step, " ", "_")
		if r.final[test] != "fail" {
			t.Errorf("junit.xml fails %q; its subtest %s ended %q", c.Name, test, r.final[test])
			continue
		}
		if !r.hasText(test, c.Failure.Text) {
			t.Errorf("subtest %s does not fail with junit.xml's text\n%s\nits output:\n%s", test, c.Failure.Text, strings.Join(r.output[test], "\n"))
		}
	}
	if failures != 2 {
		t.Errorf("junit.xml has %d failures, want 2", failures)
	}
}

// -run selects a scenario and a step of it: only their subtests run, the
// step -run left out that the selected one follows runs first (recorded in
// the run folder, without a subtest), and every other step of the file is
// recorded as not selected.
func TestRunSelectsScenariosAndSteps(t *testing.T) {
	t.Parallel()
	r := runChild(t, "../scenarios.yaml", "^TestChild$/^strict$/^2", nil)
	wantRun := []string{"TestChild", "TestChild/strict", "TestChild/strict/2_expect_(4_pairs)"}
	if !slices.Equal(r.order, wantRun) {
		t.Errorf("subtests run: %q, want %q", r.order, wantRun)
	}
	if got := slices.Sorted(maps.Keys(r.final)); !slices.Equal(got, wantRun) || len(r.with("pass")) != len(wantRun) {
		t.Errorf("subtests ended: %v, want %q passed", r.final, wantRun)
	}
	_, verdicts, err := report.ReadResults(filepath.Join(r.folder(t), report.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	var passed []string
	notSelected := 0
	for _, v := range verdicts {
		switch {
		case v.Status == results.Passed:
			passed = append(passed, v.Scenario+"/"+v.Step)
		case v.Status == results.Skipped && v.Reason == "not run: not selected by go test -run":
			notSelected++
		default:
			t.Errorf("verdict %s", v)
		}
	}
	wantPassed := []string{"/setup", "strict/1 mtls namespace STRICT", "strict/2 expect (4 pairs)"}
	if slices.Sort(passed); !slices.Equal(passed, wantPassed) {
		t.Errorf("passed verdicts %q, want %q", passed, wantPassed)
	}
	if notSelected < 10 {
		t.Errorf("%d steps recorded as not selected, want every step of the other scenarios", notSelected)
	}
	if !r.hasLine("TestChild/strict/2_expect_(4_pairs)", `step "1 mtls namespace STRICT" runs first`) {
		t.Error("the selected step's output does not say that the step before it ran first")
	}
}

// hasLine reports whether a line of test's output contains s.
func (r childRun) hasLine(test, s string) bool {
	return slices.ContainsFunc(r.output[test], func(l string) bool { return strings.Contains(l, s) })
}

// Under go test -short a scenario labelled slow is skipped with the reason;
// the steps of the others stop at the test's deadline less the grace
// period, which fails the test with what happened and leaves the rest to
// teardown: the binary ends by itself, not by go test's timeout panic.
func TestShortSkipsSlowAndTheDeadlineStopsTheSteps(t *testing.T) {
	t.Parallel()
	start := time.Now()
	const timeout, grace = 150 * time.Second, 70 * time.Second
	r := runChild(t, "testdata/short-deadline.yaml", "^TestChild$", []string{childGraceEnv + "=" + grace.String()}, "-test.short", "-test.timeout="+timeout.String())
	if took := time.Since(start); took >= timeout {
		t.Errorf("the child took %s, its -timeout is %s", took.Round(time.Second), timeout)
	}
	if r.final["TestChild/slow-one"] != "skip" || !r.hasLine("TestChild/slow-one", "go test -short skips scenarios labelled slow") {
		t.Errorf("the slow scenario ended %q, want skipped for -short; output %q", r.final["TestChild/slow-one"], r.output["TestChild/slow-one"])
	}
	if r.final["TestChild"] != "fail" || !r.hasLine("TestChild", "less the grace period was reached: the steps stopped at") {
		t.Errorf("TestChild ended %q, want failed saying the deadline stopped the steps; output %q", r.final["TestChild"], r.output["TestChild"])
	}
	for test, lines := range r.output {
		for _, l := range lines {
			if strings.Contains(l, "panic: test timed out") || strings.Contains(l, "meshproof teardown:") {
				t.Errorf("%s: %s", test, l)
			}
		}
	}
	_, verdicts, err := report.ReadResults(filepath.Join(r.folder(t), report.ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	stopped := ""
	for _, v := range verdicts {
		if v.Scenario == "slow-one" && (v.Status != results.Skipped || v.Reason != "not run: go test -short skips scenarios labelled slow") {
			t.Errorf("verdict %s, want skipped for -short", v)
		}
		// The step the deadline stopped; on a machine so busy that the
		// setup takes the steps' whole time, the setup.
		if v.Status == results.Failed && (v.Step == "never" || v.Step == results.SetupStep) {
			stopped = v.String()
		}
	}
	if stopped == "" {
		t.Errorf("no verdict says the deadline stopped the step never (or the setup): %v", verdicts)
	}
	t.Logf("stopped by the deadline: %s", stopped)
}

// A label filter that selects no scenario of the file fails the test
// saying so, before anything is set up or written.
func TestLabelFilterSelectingNothingFailsTheTest(t *testing.T) {
	t.Parallel()
	r := runChild(t, "../scenarios.yaml", "^TestChild$", []string{childLabelsEnv + "=no-such-label"})
	if r.final["TestChild"] != "fail" || !r.hasLine("TestChild", `no scenario of ../scenarios.yaml matches the label filter "no-such-label"`) {
		t.Errorf("TestChild ended %q with %q, want it failed naming the label filter", r.final["TestChild"], r.output["TestChild"])
	}
	if r.dir != "" {
		t.Errorf("the child wrote a run folder: %s", r.dir)
	}
}
