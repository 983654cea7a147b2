package junit

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// doc is the JUnit XML as a CI tool reads it.
type doc struct {
	Tests    int    `xml:"tests,attr"`
	Failures int    `xml:"failures,attr"`
	Errors   int    `xml:"errors,attr"`
	Disabled *int   `xml:"disabled,attr"`
	Time     string `xml:"time,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Errors   int    `xml:"errors,attr"`
		Skipped  int    `xml:"skipped,attr"`
		Disabled *int   `xml:"disabled,attr"`
		Cases    []struct {
			Name      string `xml:"name,attr"`
			Classname string `xml:"classname,attr"`
			Status    string `xml:"status,attr"`
			Time      string `xml:"time,attr"`
			Skipped   *struct {
				Message string `xml:"message,attr"`
			} `xml:"skipped"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Type    string `xml:"type,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
			SystemErr  *string `xml:"system-err"`
			Properties []struct {
				Name  string `xml:"name,attr"`
				Value string `xml:"value,attr"`
			} `xml:"properties>property"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func write(t *testing.T, r Report) (doc, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := Write(r, path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d doc
	dec := xml.NewDecoder(strings.NewReader(string(data)))
	dec.Strict = true
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("not well-formed: %v\n%s", err, data)
	}
	return d, string(data)
}

var twoScenarios = []*scenario.Scenario{
	{Name: "strict", Labels: []string{"core"}, Steps: []scenario.Step{{Name: "1 mtls"}, {Name: "2 expect"}}},
	{Name: "rotation", Steps: []scenario.Step{{Name: "1 rotate"}}},
}

// A verdict a stand-in decided carries the stand-in's label, as written,
// as a property of its testcase; one decided by a real data plane has none.
func TestDataPlaneProperty(t *testing.T) {
	const label = "rehearsal: data plane simulated; istiod v0.0.0-x"
	now := time.Now()
	verdicts := []results.Verdict{
		{Step: results.SetupStep, Kind: "setup", Status: results.Passed, Started: now},
		{Scenario: "strict", Step: "1 mtls", Kind: "mtls", Status: results.Passed, Started: now, DataPlane: label},
		{Scenario: "strict", Step: "2 expect", Kind: "expect", Status: results.Passed, Started: now},
		{Scenario: "rotation", Step: "1 rotate", Kind: "rotate", Status: results.Passed, Started: now},
	}
	d, _ := write(t, FromVerdicts("suite", twoScenarios, verdicts, now, time.Second))
	props := map[string]map[string]string{}
	for _, tc := range d.Suites[0].Cases {
		for _, p := range tc.Properties {
			if props[tc.Name] == nil {
				props[tc.Name] = map[string]string{}
			}
			props[tc.Name][p.Name] = p.Value
		}
	}
	if got := props["[It] strict 1 mtls [Serial, core]"][DataPlaneProperty]; got != label {
		t.Errorf("property %s of the first step = %q, want %q; properties by testcase: %q", DataPlaneProperty, got, label, props)
	}
	if got, ok := props["[It] strict 2 expect [Serial, core]"]; ok {
		t.Errorf("the step on a real data plane has properties %q", got)
	}
}

// A run whose setup failed: the setup is the one failure, every step is a
// skipped case saying so (no placeholder text), and the counts agree at
// every level.
func TestSetupFailed(t *testing.T) {
	now := time.Now()
	verdicts := []results.Verdict{{Step: results.SetupStep, Kind: "setup", Status: results.Failed, Started: now,
		Duration: 90 * time.Second, Reason: "cluster dev: installing Istio: istiod did not become Available\nwithin 5m"}}
	d, raw := write(t, FromVerdicts("meshproof mtls (x.yaml)", twoScenarios, verdicts, now, 91*time.Second))
	if strings.Contains(raw, "INVALID NODE TYPE") || strings.Contains(raw, "01/01/01") || strings.Contains(raw, "&#34;") {
		t.Errorf("placeholder or quoted text in the report:\n%s", raw)
	}
	if d.Disabled != nil || d.Suites[0].Disabled != nil {
		t.Errorf("disabled counted although nothing is pending:\n%s", raw)
	}
	s := d.Suites[0]
	if d.Tests != 4 || d.Failures != 1 || d.Errors != 0 || s.Tests != 4 || s.Failures != 1 || s.Skipped != 3 || s.Errors != 0 {
		t.Errorf("counts: testsuites tests=%d failures=%d errors=%d, testsuite tests=%d failures=%d skipped=%d errors=%d; want 4 1 0, 4 1 3 0",
			d.Tests, d.Failures, d.Errors, s.Tests, s.Failures, s.Skipped, s.Errors)
	}
	setup := s.Cases[0]
	if setup.Name != SetupCase || setup.Status != "failed" || setup.Failure == nil || setup.Failure.Type != "failed" ||
		setup.Failure.Message != "cluster dev: installing Istio: istiod did not become Available" ||
		!strings.Contains(setup.Failure.Text, "within 5m") || setup.Time != "90.000" {
		t.Errorf("setup case: %+v", setup)
	}
	for _, c := range s.Cases[1:] {
		if c.Status != "skipped" || c.Skipped == nil || c.Failure != nil || c.SystemErr != nil ||
			c.Skipped.Message != "not run: setup failed: "+verdicts[0].Reason || c.Classname != "meshproof mtls (x.yaml)" {
			t.Errorf("step after a failed setup: %+v", c)
		}
	}
	if d.Time != "91.000" {
		t.Errorf("testsuites time %q", d.Time)
	}
}

// A failed step: message is its first line, the text says where the step
// is written; the steps after it say which step failed.
func TestFailedStep(t *testing.T) {
	now := time.Now()
	verdicts := []results.Verdict{
		{Step: results.SetupStep, Kind: "setup", Status: results.Passed, Started: now},
		{Scenario: "strict", Step: "1 mtls", Kind: "mtls", Status: results.Failed, Started: now, Duration: 8400 * time.Nanosecond,
			Reason: "expectations did not hold\nlegacy -> b: plaintext", Source: "x.yaml:14:5"},
	}
	d, raw := write(t, FromVerdicts("s", twoScenarios, verdicts, now, time.Second))
	c := d.Suites[0].Cases
	if len(c) != 4 {
		t.Fatalf("%d cases:\n%s", len(c), raw)
	}
	if c[1].Failure == nil || c[1].Failure.Message != "expectations did not hold" || !strings.HasSuffix(c[1].Failure.Text, "(step written at x.yaml:14:5)") || c[1].Time != "0.000" {
		t.Errorf("failed step: %+v", c[1])
	}
	if c[2].Skipped == nil || c[2].Skipped.Message != `not run: step "1 mtls" of this scenario failed` {
		t.Errorf("step after the failed one: %+v", c[2])
	}
	if c[3].Skipped == nil || c[3].Skipped.Message != "not run" {
		t.Errorf("step of another scenario that has no verdict: %+v", c[3])
	}
}

// A step that failed with mTLS claimed and plaintext on the wire comes
// first, before the setup and every other case, with its kind as the
// failure's type.
func TestWireLeakComesFirst(t *testing.T) {
	now := time.Now()
	verdicts := []results.Verdict{
		{Step: results.SetupStep, Kind: "setup", Status: results.Passed, Started: now},
		{Scenario: "strict", Step: "1 mtls", Kind: "mtls", Status: results.Failed, Started: now, Reason: "expectations did not hold"},
		{Scenario: "rotation", Step: "1 rotate", Kind: "rotate", Status: results.Failed, Started: now, Failure: results.FailureWirePlaintext,
			Reason: "step \"1 rotate\": mTLS claimed, plaintext on the wire: a -> b:8080 was reported as mtls, but its canary crossed in cleartext: 10.0.0.1:1 > 10.0.0.2:8080"},
	}
	d, raw := write(t, FromVerdicts("s", twoScenarios, verdicts, now, time.Second))
	c := d.Suites[0].Cases
	if len(c) != 4 || c[0].Name != "[It] rotation 1 rotate [Serial]" || c[0].Failure == nil || c[0].Failure.Type != results.FailureWirePlaintext {
		t.Fatalf("cases:\n%s", raw)
	}
	if c[1].Name != SetupCase || c[2].Failure == nil || c[2].Failure.Type != "failed" {
		t.Errorf("the other cases keep their order and type:\n%s", raw)
	}
}
