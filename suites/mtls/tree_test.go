package mtls

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

// checkTreeAgainstPlan previews the spec tree without running it and checks
// that it lists exactly the scenarios, labels and steps `meshproof plan`
// lists, in the same order.
func checkTreeAgainstPlan(t *testing.T, s *scenario.Suite) {
	p, err := plan.Build(s, "tree-check")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	labels := map[string][]string{}
	for _, sc := range p.Scenarios {
		labels[sc.Scenario.Name] = sc.Scenario.Labels
		for _, st := range sc.Steps {
			want[sc.Scenario.Name] = append(want[sc.Scenario.Name], st.Step.Name)
		}
	}
	spec.Declare(s, previewRunner{})
	report := PreviewSpecs("meshproof mtls (preview)")
	if !report.SuiteSucceeded {
		t.Fatalf("previewing the spec tree failed: %v", report.SpecialSuiteFailureReasons)
	}
	// Ginkgo may shuffle the scenarios (they are independent), never the
	// steps inside one: compare each scenario's steps in order.
	got := map[string][]string{}
	specs := 0
	for _, r := range report.SpecReports {
		if r.LeafNodeType != types.NodeTypeIt {
			continue
		}
		specs++
		if len(r.ContainerHierarchyTexts) != 1 {
			t.Fatalf("spec %q is not directly inside its scenario", r.FullText())
		}
		name := r.ContainerHierarchyTexts[0]
		got[name] = append(got[name], r.LeafNodeText)
		// Ginkgo lists the Serial decorator among the labels.
		specLabels := slices.DeleteFunc(r.Labels(), func(l string) bool { return l == "Serial" })
		if !slices.Equal(specLabels, labels[name]) {
			t.Errorf("spec %q has labels %v, want %v", r.FullText(), specLabels, labels[name])
		}
	}
	if !maps.EqualFunc(got, want, slices.Equal[[]string]) {
		t.Errorf("the spec tree differs from the plan:\n got  %q\n want %q", got, want)
	}
	t.Logf("%d specs in %d scenarios agree with meshproof plan", specs, len(p.Scenarios))
	checkJUnitNames(t, s, report)
}

// checkJUnitNames checks that the JUnit testcases are named as Ginkgo
// names the same specs (the names CI tools keep a test's history by).
func checkJUnitNames(t *testing.T, s *scenario.Suite, ginkgoReport types.Report) {
	var fromGinkgo []string
	for _, r := range ginkgoReport.SpecReports {
		if r.LeafNodeType == types.NodeTypeIt {
			fromGinkgo = append(fromGinkgo, fmt.Sprintf("[%s] %s [%s]", r.LeafNodeType, r.FullText(), strings.Join(r.Labels(), ", ")))
		}
	}
	var fromRun []string
	for i := range s.Scenarios {
		for _, st := range s.Scenarios[i].Steps {
			fromRun = append(fromRun, junit.CaseName(&s.Scenarios[i], st.Name))
		}
	}
	slices.Sort(fromGinkgo)
	slices.Sort(fromRun)
	if len(fromGinkgo) == 0 || !slices.Equal(fromGinkgo, fromRun) {
		t.Errorf("meshproof's JUnit names differ from Ginkgo's:\n ginkgo %q\n run    %q", fromGinkgo, fromRun)
	}
}
