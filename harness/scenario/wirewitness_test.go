package scenario

import (
	"strings"
	"testing"
)

// The wire witness setting: auto resolves by provider (and a rehearsal),
// a step overrides the suite, and a cluster deploys the witness as
// strictly as its strictest step needs.
func TestWireWitnessSettings(t *testing.T) {
	const steps = `
scenarios:
- name: s
  steps:
  - expect: [{from: service-a, to: service-b, port: 8080, result: mtls}]
  - wireWitness: %s
    expect: [{from: service-a, to: service-b, port: 8080, result: mtls}]
`
	kind := header
	existing := strings.Replace(header, "- name: c1\n", "- name: c1\n  provider: existing\n  existing: {context: ctx}\n", 1)
	for _, c := range []struct {
		name, clusters, defaults, step string
		rehearsal                      bool
		cluster, second, deploy        WireWitness
	}{
		{"kind, auto", kind, "", "auto", false, WitnessOn, WitnessOn, WitnessOn},
		{"existing, auto", existing, "", "auto", false, WitnessOff, WitnessOff, WitnessOff},
		{"existing rehearsed, auto", existing, "", "auto", true, WitnessOn, WitnessOn, WitnessOn},
		{"existing, one step on", existing, "", "on", false, WitnessOff, WitnessOn, WitnessOn},
		{"kind, one step off", kind, "", "off", false, WitnessOn, WitnessOff, WitnessOn},
		{"suite off, one step required", kind, "defaults: {wireWitness: off}\n", "required", false, WitnessOff, WitnessRequired, WitnessRequired},
		{"existing, suite on", existing, "defaults: {wireWitness: on}\n", "auto", false, WitnessOn, WitnessOn, WitnessOn},
	} {
		s := mustLoad(t, c.clusters+c.defaults+strings.Replace(steps, "%s", c.step, 1))
		cl := &s.Clusters[0]
		sc := &s.Scenarios[0]
		if got := s.WireWitnessOn(cl, c.rehearsal); got != c.cluster {
			t.Errorf("%s: cluster setting %s, want %s", c.name, got, c.cluster)
		}
		if got := s.StepWireWitness(cl, &sc.Steps[1], c.rehearsal); got != c.second {
			t.Errorf("%s: second step's setting %s, want %s", c.name, got, c.second)
		}
		if got := s.DeployWireWitness(cl, c.rehearsal); got != c.deploy {
			t.Errorf("%s: deploy %s, want %s", c.name, got, c.deploy)
		}
	}
	if errs := loadErrors(t, header+"defaults: {wireWitness: sometimes}\nscenarios: []\n"); !strings.Contains(errs.Error(), "wireWitness") {
		t.Errorf("an unknown setting: %v", errs)
	}
}
