package engine

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

func obsAt(changed time.Time, offset time.Duration, from, to string, result scenario.Result, reason string) results.Observation {
	return results.Observation{Time: changed.Add(offset), From: from, To: to, Port: 8080, Result: result, Reason: reason}
}

func TestAnalyzeTransition(t *testing.T) {
	changed := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	preds := []oracle.Prediction{
		{From: "service-a", To: "service-b", Port: 8080, Result: scenario.ResultMTLS},
		{From: "legacy", To: "service-b", Port: 8080, Result: scenario.ResultFail, Reason: "reset"},
	}
	obs := []results.Observation{
		obsAt(changed, -time.Second, "service-a", "service-b", scenario.ResultPlaintext, ""),
		obsAt(changed, -time.Second, "legacy", "service-b", scenario.ResultPlaintext, ""),
		obsAt(changed, 500*time.Millisecond, "service-a", "service-b", scenario.ResultFail, "upstream-503"),
		obsAt(changed, 800*time.Millisecond, "legacy", "service-b", scenario.ResultPlaintext, ""),
		obsAt(changed, 1500*time.Millisecond, "service-a", "service-b", scenario.ResultMTLS, ""),
		obsAt(changed, 3*time.Second, "legacy", "service-b", scenario.ResultPlaintext, ""),
		obsAt(changed, 4*time.Second, "legacy", "service-b", scenario.ResultFail, "reset"),
		obsAt(changed, 4*time.Second, "service-a", "service-b", scenario.ResultMTLS, ""),
	}
	r := AnalyzeTransition(obs, changed, preds, 2*time.Second)
	if len(r.Failures) != 1 || r.Failures[0].Reason != "upstream-503" {
		t.Errorf("failures = %+v, want only the 503 (legacy's reset is predicted)", r.Failures)
	}
	if !r.Converged || r.Convergence != 3*time.Second || r.PairConvergence["service-a -> service-b:8080"] != 500*time.Millisecond {
		t.Errorf("convergence = %v %v %v", r.Converged, r.Convergence, r.PairConvergence)
	}
	if len(r.LatePlaintext) != 1 || r.LatePlaintext[0].Time != changed.Add(3*time.Second) {
		t.Errorf("late plaintext = %+v, want the one at +3s (the one at +0.8s is within the 2s allowed)", r.LatePlaintext)
	}
	err := r.Verify(0)
	for _, want := range []string{"1 failed requests during the transition (at most 0 allowed), first: service-a -> service-b:8080 fail (upstream-503) at +0.5s", "1 requests were still accepted in plaintext", "legacy -> service-b:8080 plaintext at +3.0s"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Verify: %v, want it to say %q", err, want)
		}
	}

	unsettled := AnalyzeTransition(obs[:6], changed, preds, 0)
	if unsettled.Converged || len(unsettled.NotSettled) != 1 || !strings.Contains(unsettled.NotSettled[0], "legacy -> service-b:8080 still plaintext, want fail") {
		t.Errorf("unsettled = %+v", unsettled)
	}
}

// meshStub plays the data plane for a transition: it reads the namespace's
// PeerAuthentication from the real API server and, like Envoy after a
// propagation delay, answers plaintext under DISABLE and mTLS under STRICT;
// in between a plaintext client sidecar hits the STRICT server: 503.
type meshStub struct {
	ns    string
	delay time.Duration
	mu    sync.Mutex
	since map[string]time.Time // mode -> when first seen
}

func (m *meshStub) mode(ctx context.Context) string {
	var pa securityv1.PeerAuthentication
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: m.ns, Name: "meshproof-namespace"}, &pa); err != nil {
		return "UNSET"
	}
	return pa.Spec.GetMtls().GetMode().String()
}

func (m *meshStub) Probe(ctx context.Context, c results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	mode := m.mode(ctx)
	m.mu.Lock()
	if _, ok := m.since[mode]; !ok {
		m.since[mode] = time.Now()
	}
	propagated := time.Since(m.since[mode]) >= m.delay
	m.mu.Unlock()
	from := strings.TrimSuffix(c.Name, "-0")
	var out []echoapi.ProbeResult
	for _, tgt := range spec.Targets {
		to, _, _ := strings.Cut(tgt.Name, ":")
		r := echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
		switch {
		case mode == "STRICT" && propagated:
			r = mtlsResult(m.ns, from, to)
		case mode == "STRICT":
			r = echoapi.ProbeResult{StatusCode: 503, Result: echoapi.ResultFail, Reason: "upstream-503"}
		}
		r.Target, r.URL = tgt.Name, tgt.URL
		out = append(out, r)
	}
	return out, nil
}

func TestTransitionDisableToStrict_ScriptedTransport(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxFailures int
		wantErr     string
	}{
		{"a break over budget fails the step", 0, "failed requests during the transition (at most 0 allowed)"},
		{"within budget it converges", 1000, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: DISABLE}]}
  - transition:
      to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
      observe: 2s
      noPlaintextAfter: 1s
      traffic: {every: 100ms, maxFailures: `+strconv.Itoa(tc.maxFailures)+`}
`)
			readyPod(t, ns, "service-a", "10.0.0.1")
			readyPod(t, ns, "service-b", "10.0.0.2")
			stub := &meshStub{ns: ns, delay: 400 * time.Millisecond, since: map[string]time.Time{}}
			var rec recordedEvents
			e := newEngine(t, s, stub, WithRecorder(&rec))
			sc := &s.Scenarios[0]
			if err := e.RunStep(context.Background(), sc, 0); err != nil {
				t.Fatal(err)
			}
			started := time.Now()
			err := e.RunStep(context.Background(), sc, 1)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("transition failed: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
			// Both bounds are timeline events whatever the outcome; a failed
			// verdict repeats them as evidence.
			var drawn []string
			for _, ev := range rec.eventsOf(results.EventDeadline) {
				if ev.Deadline == nil {
					t.Fatalf("deadline event without its deadline: %+v", ev)
				}
				drawn = append(drawn, ev.Deadline.Name)
			}
			if want := "no plaintext after 1s, converged by the end of the window"; strings.Join(drawn, ", ") != want {
				t.Errorf("deadline events = %q, want %q", drawn, want)
			}
			v := Verdict(sc, 1, started, time.Since(started), err)
			if tc.wantErr != "" && (v.Status != results.Failed || len(v.Deadlines) != 2) {
				t.Errorf("failed transition's verdict = %+v, want failed with both deadlines", v)
			}
			kinds := rec.kinds()
			if !strings.Contains(kinds, "policy-change") || (tc.wantErr == "" && !strings.Contains(kinds, "converged")) {
				t.Errorf("events = %s", kinds)
			}
			if n := len(rec.all()); n < 20 {
				t.Errorf("only %d observations recorded over a 2s window at 100ms", n)
			}
			// Before the change the traffic is expected to follow DISABLE,
			// after it STRICT: what the report marks each request against.
			changed := rec.eventTime(results.EventPolicyChange)
			for _, o := range rec.all() {
				want := "mtls"
				if o.Time.Before(changed) {
					want = "plaintext"
				}
				if o.Expected != want {
					t.Errorf("%s -> %s at %+v after the change carries expected %q, want %q", o.From, o.To, o.Time.Sub(changed), o.Expected, want)
				}
			}
		})
	}
}

type recordedEvents struct {
	recorded
	emu    sync.Mutex
	events []results.Event
}

func (r *recordedEvents) RecordEvent(e results.Event) {
	r.emu.Lock()
	r.events = append(r.events, e)
	r.emu.Unlock()
}

func (r *recordedEvents) eventsOf(kind results.EventKind) []results.Event {
	r.emu.Lock()
	defer r.emu.Unlock()
	var out []results.Event
	for _, e := range r.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// eventTime is when the first event of kind was recorded.
func (r *recordedEvents) eventTime(kind results.EventKind) time.Time {
	r.emu.Lock()
	defer r.emu.Unlock()
	for _, e := range r.events {
		if e.Kind == kind {
			return e.Time
		}
	}
	return time.Time{}
}

func (r *recordedEvents) kinds() string {
	r.emu.Lock()
	defer r.emu.Unlock()
	var k []string
	for _, e := range r.events {
		k = append(k, string(e.Kind)+": "+e.Detail)
	}
	return strings.Join(k, "; ")
}
