package results

import (
	"fmt"
	"time"

	"github.com/meshproof/meshproof/harness/scenario"
)

// NotRun returns a skipped verdict, dated at, for every step of scenarios
// that verdicts hold none for, saying why it did not run: the setup failed,
// an earlier step of its scenario failed, or (interrupted) the run was
// interrupted. The run library and both JUnit writers give the same
// reasons through it, so results.json, report.html and junit.xml agree
// whichever ran the scenarios.
func NotRun(scenarios []*scenario.Scenario, verdicts []Verdict, interrupted bool, at time.Time) []Verdict {
	setupFailed := ""
	have := map[[2]string]Status{}
	for _, v := range verdicts {
		if v.Scenario == "" && v.Step == SetupStep {
			if v.Status == Failed {
				setupFailed = v.Reason
			}
			continue
		}
		have[[2]string{v.Scenario, v.Step}] = v.Status
	}
	var out []Verdict
	for _, sc := range scenarios {
		failedStep := ""
		for _, st := range sc.Steps {
			status, ok := have[[2]string{sc.Name, st.Name}]
			if ok {
				if status == Failed && failedStep == "" {
					failedStep = st.Name
				}
				continue
			}
			reason := "not run"
			switch {
			case setupFailed != "":
				reason = "not run: setup failed: " + setupFailed
			case failedStep != "":
				reason = fmt.Sprintf("not run: step %q of this scenario failed", failedStep)
			case interrupted:
				reason = "not run: the run was interrupted"
			}
			out = append(out, Verdict{Scenario: sc.Name, Step: st.Name, Kind: st.Kind(), Status: Skipped,
				Reason: reason, Started: at, Source: st.Source.Position.String()})
		}
	}
	return out
}
