package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// closedRun makes a run folder the way a test run does, through
// report.Open and Close, with a passing cell, a failing one and an event.
func closedRun(t *testing.T) (root string, run *report.Run) {
	t.Helper()
	root = filepath.Join(t.TempDir(), "reports")
	r, err := report.Open(root, "20261126-230000-1a2b3c4d")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)
	for i := range 3 {
		r.Record(results.Observation{Time: at.Add(time.Duration(i) * time.Second), Scenario: "strict", Step: "on",
			From: "service-a", To: "service-b", Port: 8080, Result: scenario.ResultMTLS, Expected: "mtls"})
		r.Record(results.Observation{Time: at.Add(time.Duration(i) * time.Second), Scenario: "strict", Step: "on",
			From: "legacy", To: "service-b", Port: 8080, Result: scenario.ResultPlaintext, Expected: "fail (reset)"})
	}
	r.RecordEvent(results.Event{Time: at.Add(time.Second), Scenario: "strict", Step: "on", Kind: "policy-change", Detail: "applying STRICT"})
	r.RecordVerdict(results.Verdict{Scenario: "strict", Step: "on", Kind: "expect", Status: results.Failed, Started: at, Duration: 3 * time.Second,
		Reason: "step \"on\": expectations did not hold", Diagnostics: "diagnostics/strict/on"})
	if err := os.WriteFile(r.JUnitPath(), []byte("<testsuites/>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return root, r
}

// cellText returns the text of the matrix cell for a pair, or "" if the
// page has none.
func cellText(t *testing.T, page []byte, from, target string) string {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	var found string
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && n.Data == "td" {
			var f, tg string
			for _, a := range n.Attr {
				switch a.Key {
				case "data-from":
					f = a.Val
				case "data-target":
					tg = a.Val
				}
			}
			if f == from && tg == target {
				var b strings.Builder
				var text func(*html.Node)
				text = func(n *html.Node) {
					if n.Type == html.TextNode {
						b.WriteString(n.Data)
					}
					for c := n.FirstChild; c != nil; c = c.NextSibling {
						text(c)
					}
				}
				text(n)
				found = b.String()
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return found
}

// Regenerating a closed run's page through reports/latest reproduces the
// page the run wrote, verdicts and links included.
func TestReportReproducesTheRunsPage(t *testing.T) {
	root, r := closedRun(t)
	out := filepath.Join(root, report.LatestLink, "again.html")
	code, stdout, stderr := runCLI("report", filepath.Join(root, report.LatestLink, report.ResultsFile), "-o", out)
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if want := "wrote " + out + ": 1 verdict, 6 observations and 1 event\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(r.HTMLPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("meshproof report's page differs from the one the run wrote on Close")
	}
	if c := cellText(t, got, "legacy", "service-b:8080"); c != "plaintext 3✗ expected fail (reset): 3 of 3 differ" {
		t.Errorf("legacy cell reads %q", c)
	}
	for _, want := range []string{`<span class="headline">FAILED</span>`, `<a href="junit.xml">junit.xml</a>`, `<a href="diagnostics/strict/on">diagnostics/strict/on</a>`} {
		if !bytes.Contains(got, []byte(want)) {
			t.Errorf("the page lacks %s", want)
		}
	}
}

// A page written outside the run folder links its files from there.
func TestReportLinksFromElsewhere(t *testing.T) {
	root, _ := closedRun(t)
	out := filepath.Join(root, "pages", "run.html")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI("report", filepath.Join(root, report.LatestLink, report.ResultsFile), "-o", out)
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	page, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`href="../latest/junit.xml"`, `href="../latest/diagnostics/strict/on"`} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("the page lacks %s", want)
		}
	}
}

// Without -o the page goes next to the results; -o - prints it.
func TestReportOutputs(t *testing.T) {
	_, r := closedRun(t)
	dir := t.TempDir()
	for _, name := range []string{report.ResultsFile, report.EventsFile} {
		data, err := os.ReadFile(r.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	results := filepath.Join(dir, report.ResultsFile)
	code, stdout, stderr := runCLI("report", results)
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	page, err := os.ReadFile(filepath.Join(dir, report.HTMLFile))
	if err != nil {
		t.Fatalf("no report.html next to the results: %v (stdout %q)", err, stdout)
	}
	if c := cellText(t, page, "service-a", "service-b:8080"); c != "mtls 3✓ expected mtls" {
		t.Errorf("service-a cell reads %q", c)
	}
	// Flags may also come before the file.
	code, stdout, stderr = runCLI("report", "-o", "-", results)
	if code != exitOK || stderr != "" {
		t.Fatalf("-o -: exit %d, stderr:\n%s", code, stderr)
	}
	if stdout != string(page) {
		t.Error("-o - printed a different page than the file")
	}
}

// A run killed mid-write: the page shows what was read and says so.
func TestReportInterruptedRun(t *testing.T) {
	_, r := closedRun(t)
	data, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// Cut inside the last observation.
	cut := data[:bytes.LastIndex(data, []byte("}"))-3]
	if err := os.WriteFile(filepath.Join(dir, report.ResultsFile), cut, 0o644); err != nil {
		t.Fatal(err)
	}
	// And an events file that never got its closing bracket.
	if err := os.WriteFile(filepath.Join(dir, report.EventsFile), []byte("[\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI("report", filepath.Join(dir, report.ResultsFile), "-o", "-")
	if code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stderr, "warning: ") || !strings.Contains(stderr, "complete elements read") {
		t.Errorf("stderr %q does not warn that the results were cut short", stderr)
	}
	if !strings.Contains(stdout, "complete elements read") {
		t.Error("the page does not say the results were cut short")
	}
	if c := cellText(t, []byte(stdout), "service-a", "service-b:8080"); !strings.HasPrefix(c, "mtls ") {
		t.Errorf("service-a cell reads %q", c)
	}
}

func TestReportErrors(t *testing.T) {
	dir := t.TempDir()
	notArray := filepath.Join(dir, "results.json")
	if err := os.WriteFile(notArray, []byte(`{"from":"a"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	badEventsDir := filepath.Join(dir, "bad-events")
	if err := os.MkdirAll(badEventsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badEventsDir, report.ResultsFile), []byte("[\n]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badEventsDir, report.EventsFile), []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A run with no observations and no events.json renders; its page
	// cannot be written into a folder that does not exist.
	emptyRun := filepath.Join(dir, "empty", report.ResultsFile)
	if err := os.MkdirAll(filepath.Dir(emptyRun), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(emptyRun, []byte("[\n]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI("report", emptyRun, "-o", "-"); code != exitOK {
		t.Fatalf("an empty run without events.json: exit %d, stderr %q", code, stderr)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"report", filepath.Join(dir, "missing.json")}, exitUnreadable, "missing.json: no such file"},
		{[]string{"report", notArray, "-o", "-"}, exitUnreadable, "does not start with a JSON array"},
		{[]string{"report", filepath.Join(badEventsDir, report.ResultsFile), "-o", "-"}, exitUnreadable, "read events"},
		{[]string{"report", emptyRun, "-o", filepath.Join(dir, "no", "such", "dir", "r.html")}, exitUnreadable, "write "},
		{[]string{"report", "a.json", "b.json"}, exitUsage, `unexpected argument "b.json"`},
		{[]string{"report", "-x"}, exitUsage, "flag provided but not defined"},
	} {
		code, stdout, stderr := runCLI(c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, stderr, c.code, c.want)
		}
		if stdout != "" {
			t.Errorf("%v: printed %q", c.args, stdout)
		}
	}
}
