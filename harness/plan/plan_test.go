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

// The plan's setup says which workloads are proxyless gRPC and which carry
// the tlsMode label.
func TestSetupNamesProxylessWorkloads(t *testing.T) {
	s, err := scenario.Load("test.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, istio: {version: 1.30.3}}]
fixtures:
  workloads:
  - {name: service-a}
  - {name: grpc-a, proxyless: true}
  - {name: grpc-l, proxyless: true, tlsModeLabel: true}
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Build(s, "r")
	if err != nil {
		t.Fatal(err)
	}
	setup := strings.Join(p.Clusters[0].Setup, "\n")
	for _, want := range []string{
		"meshproof/service-a (in the mesh; http 8080, http-alt 9090)",
		"meshproof/grpc-a (proxyless gRPC (grpc-agent); grpc 7070/grpc)",
		"meshproof/grpc-l (proxyless gRPC (grpc-agent), labelled tlsMode=istio; grpc 7070/grpc)",
	} {
		if !strings.Contains(setup, want) {
			t.Errorf("setup lacks %q:\n%s", want, setup)
		}
	}
}
