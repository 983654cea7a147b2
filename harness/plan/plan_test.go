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

// A move step's plan names the labels it patches on each workload and
// the check of the new pods; plan -o yaml carries each moved Deployment
// with its new pod template; later steps are planned on the new data
// plane (a rotation read from ztunnel).
func TestMoveDataPlanePlan(t *testing.T) {
	s, err := scenario.Load("test.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, istio: {version: 1.30.3, profile: ambient, workloadCertTTL: 3m}}]
fixtures:
  workloads:
  - {name: side, serviceAccount: side-sa}
  - {name: amb, dataPlane: ambient}
scenarios:
- name: s
  steps:
  - moveDataPlane: {workloads: [side], to: ambient, within: 1m}
  - rotate: {workload: side}
  - moveDataPlane: {workloads: [side, amb], to: sidecar}
`))
	if err != nil {
		t.Fatal(err)
	}
	// On the fixtures' own namespaces (an isolated scenario's are its
	// copy's).
	p, err := Build(s, "r", WithParallel(1))
	if err != nil {
		t.Fatal(err)
	}
	steps := p.Scenarios[0].Steps
	text := strings.Join(steps[0].Operations, "\n")
	for _, want := range []string{
		"probe continuously every 500ms: side -> amb:8080, amb -> side:8080",
		"move meshproof/side from sidecar to ambient: patch its Deployment's pod template (set pod template labels istio.io/dataplane-mode=ambient, sidecar.istio.io/inject=false and annotation sidecar.istio.io/inject=false; nothing else changes)",
		"wait up to 1m0s for the rollout, each new pod enrolled by istio-cni (annotation ambient.istio.io/redirection=enabled) and without an istio-proxy container",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the move's plan lacks %q:\n%s", want, text)
		}
	}
	if len(steps[0].Patched) != 1 {
		t.Fatalf("patched objects %v, want side's Deployment", steps[0].Patched)
	}
	var yaml strings.Builder
	if err := p.WriteYAML(&yaml); err != nil {
		t.Fatal(err)
	}
	doc := yaml.String()[strings.Index(yaml.String(), "fixture as the step patches it"):]
	for _, want := range []string{"name: side\n", "istio.io/dataplane-mode: ambient", `sidecar.istio.io/inject: "false"`, "serviceAccountName: side-sa"} {
		if !strings.Contains(doc, want) {
			t.Errorf("plan -o yaml's patched Deployment lacks %q", want)
		}
	}
	if got := strings.Join(steps[1].Operations, "\n"); !strings.Contains(got, "the certificate side's node's ztunnel holds for it") {
		t.Errorf("the rotation after the move is not ztunnel's:\n%s", got)
	}
	back := strings.Join(steps[2].Operations, "\n")
	for _, want := range []string{"move meshproof/side from ambient to sidecar", "move meshproof/amb from ambient to sidecar",
		"remove pod template labels istio.io/dataplane-mode, sidecar.istio.io/inject and annotation sidecar.istio.io/inject", "with an injected istio-proxy container"} {
		if !strings.Contains(back, want) {
			t.Errorf("the move back's plan lacks %q:\n%s", want, back)
		}
	}
}
