package spec

import (
	"strings"

	"github.com/onsi/ginkgo/v2/types"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// VerdictRecorder is a Runner that records each step's verdict, as the run
// library (harness/run) does: the suite's JUnit report is then written from
// those verdicts, exactly as `meshproof run` writes it.
type VerdictRecorder interface {
	Verdicts() []results.Verdict
}

// Verdicts are the verdicts of a run of scenarios that Ginkgo reported:
// the runner's own where it records them (VerdictRecorder), else what
// Ginkgo saw of the setup and of each step it ran, and for every step that
// did not run a skipped verdict with the reason `meshproof run` gives
// (results.NotRun). A failure only Ginkgo saw (a node timeout, a panic)
// stands where the runner has no verdict or only a skipped one.
func Verdicts(report types.Report, scenarios []*scenario.Scenario, r Runner) []results.Verdict {
	var out []results.Verdict
	index := map[[2]string]int{}
	add := func(v results.Verdict) {
		if v.Status == results.Skipped {
			return
		}
		k := [2]string{v.Scenario, v.Step}
		if _, ok := index[k]; ok {
			return
		}
		index[k] = len(out)
		out = append(out, v)
	}
	if rec, ok := r.(VerdictRecorder); ok {
		for _, v := range rec.Verdicts() {
			add(v)
		}
	}
	steps := map[[2]string]*scenario.Step{}
	for _, sc := range scenarios {
		for i := range sc.Steps {
			steps[[2]string{sc.Name, sc.Steps[i].Name}] = &sc.Steps[i]
		}
	}
	interrupted := false
	for _, s := range report.SpecReports {
		interrupted = interrupted || s.State == types.SpecStateInterrupted
		v := results.Verdict{Started: s.StartTime, Duration: s.RunTime, Status: status(s.State)}
		switch {
		case s.LeafNodeType.Is(types.NodeTypeBeforeSuite | types.NodeTypeSynchronizedBeforeSuite):
			v.Step, v.Kind = results.SetupStep, results.SetupStep
		case s.LeafNodeType == types.NodeTypeIt && len(s.ContainerHierarchyTexts) == 1:
			st := steps[[2]string{s.ContainerHierarchyTexts[0], s.LeafNodeText}]
			if st == nil {
				continue
			}
			v.Scenario, v.Step, v.Kind, v.Source = s.ContainerHierarchyTexts[0], st.Name, st.Kind(), st.Source.Position.String()
		default:
			continue
		}
		if v.Status == results.Failed {
			v.Reason = s.Failure.Message
			if v.Reason == "" {
				v.Reason = s.Failure.ForwardedPanic
			}
			if s.State == types.SpecStateInterrupted {
				v.Reason = "interrupted: " + v.Reason
			}
			v.Reason = strings.TrimSuffix(v.Reason, junit.SourceNote(v.Source))
		}
		add(v)
	}
	for _, reason := range report.SpecialSuiteFailureReasons {
		interrupted = interrupted || strings.Contains(reason, "Interrupted")
	}
	return append(out, results.NotRun(scenarios, out, interrupted, report.EndTime)...)
}

// status is the verdict status of a Ginkgo spec state: timed out, panicked,
// interrupted and aborted specs failed.
func status(s types.SpecState) results.Status {
	switch {
	case s == types.SpecStatePassed:
		return results.Passed
	case s.Is(types.SpecStateSkipped | types.SpecStatePending | types.SpecStateInvalid):
		return results.Skipped
	default:
		return results.Failed
	}
}
