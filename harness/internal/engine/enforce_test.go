package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"
)

// The first expect step after an mtls step measures, per row, how long
// after the apply the pair was at the outcome the step confirmed: from the
// push a transport names (DecidedAt) when it names one, else from the
// first probe round at that outcome; a pair whose decision predates the
// apply is unchanged; a second expect step measures nothing.
func TestEnforcedAfter_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: service-b, result: mtls}
    - {from: legacy, to: service-b, result: fail, reason: reset}
  - expect:
    - {from: service-a, to: service-b, result: mtls}
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	readyPod(t, ns, "legacy", "10.0.0.2")
	var mu sync.Mutex
	var applied time.Time
	p := &scriptedProber{script: func(round int, client results.Pod, tgt echoapi.Target) echoapi.ProbeResult {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(client.Name, "legacy") {
			// A probe round after the push, on kind: no DecidedAt.
			if round < 2 {
				return echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
			}
			return echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
		}
		// A rehearsal's evaluator: decided by a configuration that
		// arrived before the apply.
		r := mtlsResult(ns, "service-a", "service-b")
		at := applied.Add(-time.Minute)
		r.DecidedBy, r.DecidedAt = "client sidecar: cluster outbound|8080||service-b", &at
		return r
	}}
	e := newEngine(t, s, p)
	ctx := context.Background()
	sc := &s.Scenarios[0]
	if err := e.RunStep(ctx, sc, 0); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	applied = e.enforcement.pending[sc.Name].at
	mu.Unlock()
	if err := e.RunStep(ctx, sc, 1); err != nil {
		t.Fatal(err)
	}
	got := map[string]results.Enforcement{}
	for _, en := range e.EnforcedAfter(sc.Name, sc.Steps[1].Name) {
		got[en.From] = en
	}
	if a := got["service-a"]; !a.Unchanged || a.By != results.EnforcedByPush || a.Policies != sc.Steps[0].Name {
		t.Errorf("service-a: %+v, want unchanged by %s (its push predates the apply)", a, sc.Steps[0].Name)
	}
	if l := got["legacy"]; l.Unchanged || l.By != results.EnforcedByProbe || l.After <= 0 || l.After > 10*time.Second {
		t.Errorf("legacy: %+v, want a positive time to the first probe round at reset", l)
	}
	if err := e.RunStep(ctx, sc, 2); err != nil {
		t.Fatal(err)
	}
	if en := e.EnforcedAfter(sc.Name, sc.Steps[2].Name); len(en) != 0 {
		t.Errorf("the second expect step measured %v; only the first after an apply does", en)
	}
}

// harnessLimitProber fails every batch as a transport that cannot decide.
type harnessLimitProber struct{ calls int }

func (p *harnessLimitProber) Probe(context.Context, results.Pod, echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	p.calls++
	return nil, fmt.Errorf("exec: %w: the Envoy evaluator cannot decide: a weighted route", probe.ErrHarnessLimit)
}

// A transport's harness limit fails the expect step at once, saying so,
// instead of probing on until the timeout.
func TestExpectStopsAtAHarnessLimit_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - timeout: 20s
    expect: [{from: service-a, to: service-b, result: mtls}]
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	p := &harnessLimitProber{}
	start := time.Now()
	err := newEngine(t, s, p).RunStep(context.Background(), &s.Scenarios[0], 0)
	if err == nil || !errors.Is(err, probe.ErrHarnessLimit) || !strings.Contains(err.Error(), "a limit of the harness") {
		t.Fatalf("got %v, want a harness limit", err)
	}
	if took := time.Since(start); took > 5*time.Second || p.calls != 1 {
		t.Errorf("the step took %s and %d probe batches, want it to stop at the first", took, p.calls)
	}
}
