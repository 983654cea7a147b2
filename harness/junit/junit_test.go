package junit

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// A verdict a stand-in decided carries the stand-in's label as a property of
// its testcase; one decided by a real data plane has none.
func TestDataPlaneProperty(t *testing.T) {
	const label = "rehearsal: data plane simulated; istiod v0.0.0-x"
	scenarios := []*scenario.Scenario{{Name: "strict", Steps: []scenario.Step{{Name: "apply"}, {Name: "check"}}}}
	now := time.Now()
	verdicts := []results.Verdict{
		{Scenario: "strict", Step: "apply", Kind: "mtls", Status: results.Passed, Started: now, DataPlane: label},
		{Scenario: "strict", Step: "check", Kind: "expect", Status: results.Passed, Started: now},
	}
	path := filepath.Join(t.TempDir(), "junit.xml")
	if err := Write(FromVerdicts("suite", scenarios, verdicts, now, time.Second), path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc reporters.JUnitTestSuites
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	props := map[string]string{}
	for _, tc := range doc.TestSuites[0].TestCases {
		if tc.Properties != nil {
			props[tc.Name] = tc.Properties.WithName(DataPlaneProperty)
		}
	}
	if got := props["[It] strict apply [Serial]"]; got != `"`+label+`"` {
		t.Errorf("property %s of the first step = %q, want the label; properties by testcase: %q", DataPlaneProperty, got, props)
	}
	if got, ok := props["[It] strict check [Serial]"]; ok {
		t.Errorf("the step on a real data plane has property %q", got)
	}
}
