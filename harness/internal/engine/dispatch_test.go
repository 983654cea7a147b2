package engine

import (
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Every kind of step in scenario's table has a runner.
func TestEveryStepKindHasARunner(t *testing.T) {
	if missing := scenario.MissingKinds(stepRunners); len(missing) > 0 {
		t.Errorf("the engine cannot run step kinds %v", missing)
	}
	for kind := range stepRunners {
		if !contains(scenario.StepKinds(), kind) {
			t.Errorf("the engine has a runner for %q, which is no step kind", kind)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
