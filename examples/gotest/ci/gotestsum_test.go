// Package ci checks what CI sees of the example's go test: gotestsum,
// which turns go test -json into JUnit as the README's workflow does,
// lists every scenario and step as its own testcase, and go test -run
// selects one scenario.
package ci

import (
	"bufio"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// gotestsum runs TestMesh with -run selecting the scenario strict: the
// subtests that ran are exactly that scenario's, and gotestsum's JUnit has
// a passed testcase for each, named after it.
func TestGotestsumJUnitHasEveryStep(t *testing.T) {
	dir := t.TempDir()
	junitFile, events := filepath.Join(dir, "junit.xml"), filepath.Join(dir, "events.json")
	cmd := exec.CommandContext(t.Context(), "go", "tool", "gotestsum", "--format", "standard-verbose",
		"--junitfile", junitFile, "--jsonfile", events, "--",
		"-count=1", "-timeout=15m", "-run", "^TestMesh$/^strict$", "..")
	out, err := cmd.CombinedOutput()
	t.Logf("gotestsum:\n%s", out)
	if err != nil {
		t.Fatalf("gotestsum: %v", err)
	}
	want := []string{"TestMesh", "TestMesh/strict", "TestMesh/strict/1_mtls_namespace_STRICT", "TestMesh/strict/2_expect_(4_pairs)"}

	f, err := os.Open(events)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ran []string
	passed := map[string]bool{}
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var e struct{ Action, Test string }
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("go test -json: %q: %v", sc.Text(), err)
		}
		switch {
		case e.Test == "":
		case e.Action == "run":
			ran = append(ran, e.Test)
		case e.Action == "pass":
			passed[e.Test] = true
		}
	}
	if !slices.Equal(ran, want) {
		t.Errorf("go test ran %q, want %q", ran, want)
	}
	for _, name := range want {
		if !passed[name] {
			t.Errorf("%s did not pass", name)
		}
	}

	data, err := os.ReadFile(junitFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suites []struct {
			Failures int `xml:"failures,attr"`
			Cases    []struct {
				Name    string    `xml:"name,attr"`
				Failure *struct{} `xml:"failure"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var cases []string
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			cases = append(cases, c.Name)
			if c.Failure != nil || c.Skipped != nil {
				t.Errorf("gotestsum's JUnit: testcase %s did not pass", c.Name)
			}
		}
	}
	slices.Sort(cases)
	if !slices.Equal(cases, want) {
		t.Errorf("gotestsum's JUnit testcases %q, want %q\n%s", cases, want, data)
	}
}
