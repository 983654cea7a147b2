package plan

import (
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Every kind of step in scenario's table has a planner.
func TestEveryStepKindHasAPlanner(t *testing.T) {
	if missing := scenario.MissingKinds(stepPlanners); len(missing) > 0 {
		t.Errorf("plan cannot describe step kinds %v", missing)
	}
}

// A step of no kind the planner knows is an error naming the step, not a
// step with no operations.
func TestUnknownStepKindIsAnError(t *testing.T) {
	s, err := scenario.Load("test.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, istio: {version: 1.30.3}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	sc := &s.Scenarios[0]
	sc.Steps[0].Wait = nil // what a kind added to the language but not to plan looks like
	_, err = stepPlan(s, sc, 0, "r")
	if err == nil || !strings.Contains(err.Error(), `no plan for a step of kind ""`) {
		t.Errorf("err = %v", err)
	}
}
