package engine

import (
	"reflect"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/results"
)

// Stand-ins that only need to be non-nil: For copies them, nothing calls
// them.
type (
	anyKube    struct{ client.Client }
	anyProber  struct{ Prober }
	anyCerts   struct{ CertReader }
	anyTCP     struct{ ConnectionWitness }
	anyZtunnel struct{ ZtunnelWitness }
	anyWire    struct{ WireWitness }
)

// An engine For derives for one scenario keeps everything the run set on
// the engine it derives from — transports, witnesses, recorder, clock,
// mesh state, the wire settings, the enforcement figures the run reads
// back — except what is the scenario's own. A field added to Engine and
// forgotten in For fails here (a scenario running beside others without
// its witness would be judged differently from one running alone).
func TestForKeepsTheRunsEngine(t *testing.T) {
	suite := grpcSuite(t)
	e, err := New(suite, "c", anyKube{}, anyProber{}, "run-1",
		WithRecorder(results.Discard{}), WithCertReader(anyCerts{}),
		WithConnectionWitness(anyTCP{}), WithZtunnelWitness(anyZtunnel{}),
		WithWireWitness(anyWire{}, true), WithObservationGapLimit(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	sc := &suite.Scenarios[0]
	d := e.For(suite, sc)
	// The scenario's own: its logger says which scenario, its policy clean-up
	// is limited to its policies, and its lock sets serve its own pods (the
	// moving set is a move step's own, set on the engine it runs with).
	own := map[string]bool{"log": true, "policyScope": true, "tcpLocks": true, "xdsLocks": true, "moving": true}
	pv, dv := reflect.ValueOf(e).Elem(), reflect.ValueOf(d).Elem()
	for i := range pv.NumField() {
		name := pv.Type().Field(i).Name
		if own[name] {
			continue
		}
		if pv.Field(i).IsZero() {
			t.Errorf("Engine.%s is not set by this test's options: set it, so that For's copy of it is checked", name)
			continue
		}
		if dv.Field(i).IsZero() {
			t.Errorf("For left Engine.%s unset", name)
		}
	}
	if d.mesh != e.mesh || d.enforcement != e.enforcement {
		t.Error("For's engine does not share the mesh state and the enforcement figures")
	}
	if d.wireSet != e.wireSet || d.rehearsal != e.rehearsal {
		t.Errorf("For's engine: wireSet %v rehearsal %v, want %v %v", d.wireSet, d.rehearsal, e.wireSet, e.rehearsal)
	}
	if len(d.policyScope) == 0 {
		t.Error("For's engine removes policies of every scenario, not only its own")
	}
}
