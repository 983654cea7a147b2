package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/report"
)

var commands = []string{"validate", "plan", "predict", "report", "schema", "version"}

// withStdin runs f with data as standard input.
func withStdin(t *testing.T, data []byte, f func()) {
	t.Helper()
	old := stdin
	stdin = bytes.NewReader(data)
	defer func() { stdin = old }()
	f()
}

func TestHelpExitsZeroForEveryCommand(t *testing.T) {
	for _, cmd := range commands {
		for _, help := range []string{"--help", "-h", "-help"} {
			code, out, errOut := runCLI(cmd, help)
			if code != exitOK || errOut != "" || !strings.HasPrefix(out, "Usage: meshproof "+cmd) {
				t.Errorf("meshproof %s %s: exit %d, stdout %q, stderr %q", cmd, help, code, out, errOut)
			}
		}
	}
	// Flags are listed where a command has any.
	if _, out, _ := runCLI("plan", "--help"); !strings.Contains(out, "-run-id") {
		t.Errorf("plan --help lists no flags:\n%s", out)
	}
}

func TestUnexpectedArgumentsExitTwoForEveryCommand(t *testing.T) {
	for _, args := range [][]string{
		{"schema", "extra"},
		{"version", "extra"},
		{"plan", defaultScenarios, "extra"},
		{"predict", defaultScenarios, "extra"},
		{"report", "a", "b"},
	} {
		code, out, errOut := runCLI(args...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, `unexpected argument "`) || !strings.Contains(errOut, "usage: meshproof "+args[0]) {
			t.Errorf("meshproof %v: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	for _, cmd := range commands {
		code, _, errOut := runCLI(cmd, "--no-such-flag")
		if code != exitUsage || !strings.Contains(errOut, "flag provided but not defined: -no-such-flag") {
			t.Errorf("meshproof %s --no-such-flag: exit %d, stderr %q", cmd, code, errOut)
		}
	}
}

func TestUnreadableInputExitsOneWithTheSameWords(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	for _, cmd := range []string{"validate", "plan", "predict", "report"} {
		code, out, errOut := runCLI(cmd, missing)
		if code != exitUnreadable || out != "" || !strings.HasPrefix(errOut, "meshproof: cannot read "+missing+": no such file\n") {
			t.Errorf("meshproof %s MISSING: exit %d, stdout %q, stderr %q", cmd, code, out, errOut)
		}
	}
	dir := t.TempDir()
	for _, cmd := range []string{"validate", "plan", "predict"} {
		code, _, errOut := runCLI(cmd, dir)
		if code != exitUnreadable || errOut != "meshproof: cannot read "+dir+": is a directory\n" {
			t.Errorf("meshproof %s DIR: exit %d, stderr %q", cmd, code, errOut)
		}
	}
}

func TestFlagsAnywhereAndDashDash(t *testing.T) {
	for _, args := range [][]string{
		{"validate", defaultScenarios, "-q"},
		{"validate", "-q", defaultScenarios},
		{"validate", "-q", "--", defaultScenarios},
		{"plan", defaultScenarios, "-o", "yaml", "--run-id", "r"},
		{"plan", "-o", "yaml", "--", defaultScenarios},
		{"predict", defaultScenarios, "-o", "json"},
	} {
		if code, _, errOut := runCLI(args...); code != exitOK {
			t.Errorf("meshproof %v: exit %d, stderr %q", args, code, errOut)
		}
	}
	if _, out, _ := runCLI("validate", defaultScenarios, "-q"); out != "" {
		t.Errorf("-q after the file was not taken as a flag: %q", out)
	}
}

func TestDashReadsStandardInput(t *testing.T) {
	data, err := os.ReadFile(defaultScenarios)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"validate", "-"}, {"plan", "-", "--run-id", "r"}, {"predict", "-o", "json", "-"}} {
		withStdin(t, data, func() {
			code, out, errOut := runCLI(args...)
			if code != exitOK || out == "" {
				t.Errorf("meshproof %v: exit %d, stderr %q", args, code, errOut)
			}
			if args[0] == "validate" && !strings.HasPrefix(out, "<stdin>: valid: ") {
				t.Errorf("validate - says %q", out)
			}
		})
	}
	// Problems on standard input are positioned in <stdin>.
	withStdin(t, []byte("apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters: []\nscenarios: []\n"), func() {
		code, _, errOut := runCLI("validate", "-")
		if code != exitInvalid || !strings.HasPrefix(errOut, "<stdin>:3:") {
			t.Errorf("validate - of an invalid file: exit %d, stderr %q", code, errOut)
		}
	})
	// report -: results on standard input, the page on standard output.
	_, r := closedRun(t)
	results, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	withStdin(t, results, func() {
		code, out, errOut := runCLI("report", "-")
		if code != exitOK || errOut != "" || !strings.Contains(out, "<html") || !strings.Contains(out, "results from standard input") {
			t.Errorf("report -: exit %d, stderr %q, page %.200q", code, errOut, out)
		}
	})
}

// report takes a run folder, keeps the run's own page unless told, and
// warns when there is nothing to show.
func TestReportRunFolderAndExistingPage(t *testing.T) {
	root, r := closedRun(t)
	page := r.HTMLPath()
	if err := os.WriteFile(page, []byte("the run's own page"), 0o644); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Dir(page)
	code, out, errOut := runCLI("report", runDir)
	if code != exitInvalid || out != "" || !strings.Contains(errOut, page+" exists") || !strings.Contains(errOut, "--force") {
		t.Errorf("report RUN over an existing page: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got, _ := os.ReadFile(page); string(got) != "the run's own page" {
		t.Fatal("report replaced the run's page without being told")
	}
	code, out, errOut = runCLI("report", "--force", filepath.Join(root, report.LatestLink))
	if code != exitOK || errOut != "" || !strings.HasPrefix(out, "wrote ") {
		t.Errorf("report --force: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got, _ := os.ReadFile(page); !bytes.Contains(got, []byte("<html")) {
		t.Error("--force did not replace the page")
	}
	// -o names the destination: that is being told.
	elsewhere := filepath.Join(t.TempDir(), "page.html")
	if code, _, errOut := runCLI("report", runDir, "-o", elsewhere); code != exitOK {
		t.Errorf("report RUN -o FILE: exit %d, stderr %q", code, errOut)
	}

	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, report.ResultsFile), []byte("[\n]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI("report", empty, "-o", "-")
	if code != exitOK || !strings.Contains(errOut, "warning: "+filepath.Join(empty, report.ResultsFile)+" holds no observations") || !strings.Contains(out, "holds no observations") {
		t.Errorf("report of an empty run: exit %d, stderr %q", code, errOut)
	}
}
