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
	"github.com/meshproof/meshproof/harness/results"
)

// scriptedWire stands in for the node witnesses: it answers every
// request with verdict (and, for plaintext, a packet), and records which
// client and servers each batch was watched between.
type scriptedWire struct {
	verdict     echoapi.WitnessVerdict
	unavailable bool
	mu          sync.Mutex // continuous traffic's clients watch at once
	watched     []string
}

func (w *scriptedWire) batches() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.watched...)
}

func (w *scriptedWire) Watch(_ context.Context, client results.Pod, servers []results.Pod) (func(context.Context, []echoapi.ProbeResult), error) {
	var ips []string
	for _, s := range servers {
		ips = append(ips, s.IP)
	}
	w.mu.Lock()
	w.watched = append(w.watched, client.IP+">"+strings.Join(ips, ","))
	w.mu.Unlock()
	return func(_ context.Context, rs []echoapi.ProbeResult) {
		for i := range rs {
			a := echoapi.WitnessAnswer{ID: fmt.Sprint(i), Verdict: w.verdict, Detail: "scripted", Unavailable: w.unavailable}
			if w.verdict == echoapi.WitnessPlaintext {
				a.Packet = &echoapi.PacketHeader{Src: "10.0.0.1:40000", Dst: "10.0.0.3:8080", Flags: "P.", Length: 120}
			}
			rs[i].Witness = &a
		}
	}, nil
}

// The verdict rules of the wire witness, on an expect step whose client
// the mesh answers with mTLS every time: what the wire saw decides.
func TestExpectJudgedOnTheWire_ScriptedTransport(t *testing.T) {
	for _, c := range []struct {
		name        string
		step        string
		verdict     echoapi.WitnessVerdict
		unavailable bool
		wantErr     string // "" for a pass
		wantWire    bool   // observations carry a wire verdict
	}{
		{"encrypted holds", "", echoapi.WitnessEncrypted, false, "", true},
		{"plaintext on the wire fails at once", "", echoapi.WitnessPlaintext, false, results.FailureWirePlaintext, true},
		{"not captured by a witness that watched does not hold", "", echoapi.WitnessNotCaptured, false, "did not see it encrypted", true},
		{"a witness that could not watch is not held against the row", "", echoapi.WitnessNotCaptured, true, "", true},
		{"step off: no wire verdict, nothing judged on it", "    wireWitness: off\n", echoapi.WitnessPlaintext, false, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, ns := suiteIn(t, "  - timeout: 2s\n"+c.step+"    expect:\n    - {from: service-a, to: service-b, result: mtls}\n")
			readyPod(t, ns, "service-a", "10.0.0.1")
			readyPod(t, ns, "service-b", "10.0.0.3")
			p := &scriptedProber{script: func(int, results.Pod, echoapi.Target) echoapi.ProbeResult {
				return mtlsResult(ns, "service-a", "service-b")
			}}
			w := &scriptedWire{verdict: c.verdict, unavailable: c.unavailable}
			var rec recorded
			started := len(w.batches())
			err := newEngine(t, s, p, WithRecorder(&rec), WithWireWitness(w, false)).RunStep(context.Background(), &s.Scenarios[0], 0)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("step failed: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("step error %v, want one saying %q", err, c.wantErr)
			}
			if watched := w.batches(); c.wantWire && (len(watched) == started || watched[0] != "10.0.0.1>10.0.0.3") {
				t.Errorf("batches watched between %q, want service-a's pod and service-b's", watched)
			}
			for _, o := range rec.all() {
				if (o.Wire != nil) != c.wantWire || c.wantWire && o.Wire.Verdict != string(c.verdict) {
					t.Fatalf("observation's wire %+v, want verdict %q (%v)", o.Wire, c.verdict, c.wantWire)
				}
				if !echoapi.IsCanary(o.Canary) && o.Canary != "" {
					t.Errorf("canary %q", o.Canary)
				}
			}
			v := Verdict(&s.Scenarios[0], 0, rec.all()[0].Time, 0, err)
			var xe *ExpectationError
			leak := errors.As(err, &xe) && xe.WireLeak != ""
			if leak != (v.Failure == results.FailureWirePlaintext) || leak != (c.verdict == echoapi.WitnessPlaintext && c.wantWire) {
				t.Errorf("verdict failure %q, leak %v", v.Failure, leak)
			}
			if leak && (p.rounds["service-a-0"] != 1 || !strings.Contains(v.Reason, "10.0.0.1:40000 > 10.0.0.3:8080")) {
				t.Errorf("a leak took %d rounds (want the first to end the step); reason %q", p.rounds["service-a-0"], v.Reason)
			}
		})
	}
}

// Continuous traffic: a request reported as mTLS whose canary the witness
// saw in cleartext fails a transition however it converged, and its
// verdict names the failure's kind.
func TestTransitionFailsOnAWireLeak_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: DISABLE}]}
  - transition:
      to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
      observe: 2s
      noPlaintextAfter: 1s
      traffic: {every: 100ms, maxFailures: 1000}
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	readyPod(t, ns, "service-b", "10.0.0.2")
	stub := &meshStub{ns: ns, delay: 400 * time.Millisecond, since: map[string]time.Time{}}
	e := newEngine(t, s, stub, WithWireWitness(&scriptedWire{verdict: echoapi.WitnessPlaintext}, false))
	sc := &s.Scenarios[0]
	if err := e.RunStep(context.Background(), sc, 0); err != nil {
		t.Fatal(err)
	}
	err := e.RunStep(context.Background(), sc, 1)
	var le *WireLeakError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), results.FailureWirePlaintext) {
		t.Fatalf("transition: %v, want a wire leak", err)
	}
	if v := Verdict(sc, 1, time.Now(), time.Second, err); v.Failure != results.FailureWirePlaintext {
		t.Errorf("verdict failure %q", v.Failure)
	}
}
