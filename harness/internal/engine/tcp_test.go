package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// scriptedWitness answers InboundTCP with its reads in turn, the last one
// repeated.
type scriptedWitness struct {
	mu    sync.Mutex
	reads []istiostats.Counts
	err   error
	calls int
}

func (w *scriptedWitness) InboundTCP(context.Context, results.Pod) (istiostats.Counts, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls++
	if w.err != nil {
		return nil, w.err
	}
	i := min(w.calls-1, len(w.reads)-1)
	return w.reads[i], nil
}

// The conclusions witnessed draws from a server's counts, polled until
// they grew by the connections echoed.
func TestWitnessedConclusions(t *testing.T) {
	mtlsA := istiostats.Peer{SecurityPolicy: istiostats.PolicyMutualTLS, SourcePrincipal: "spiffe://td/ns/n/sa/a", DestinationPrincipal: "spiffe://td/ns/n/sa/b"}
	mtlsC := istiostats.Peer{SecurityPolicy: istiostats.PolicyMutualTLS, SourcePrincipal: "spiffe://td/ns/n/sa/c", DestinationPrincipal: "spiffe://td/ns/n/sa/b"}
	none := istiostats.Peer{SecurityPolicy: istiostats.PolicyNone, SourcePrincipal: istiostats.Unknown, DestinationPrincipal: istiostats.Unknown}
	unknown := istiostats.Peer{SecurityPolicy: istiostats.Unknown, SourcePrincipal: istiostats.Unknown, DestinationPrincipal: istiostats.Unknown}
	before := istiostats.Counts{mtlsA: 4, none: 1}
	for _, tc := range []struct {
		name   string
		reads  []istiostats.Counts // after the probe, in turn
		want   scenario.Result
		detail string
	}{
		{"mtls, counted late", []istiostats.Counts{before, {mtlsA: 5, none: 1}, {mtlsA: 6, none: 1}}, scenario.ResultMTLS, ""},
		{"plaintext", []istiostats.Counts{{mtlsA: 4, none: 3}}, scenario.ResultPlaintext, ""},
		// A failed attempt counted like the echoed ones changes nothing.
		{"more of the same kind", []istiostats.Counts{{mtlsA: 7, none: 1}}, scenario.ResultMTLS, ""},
		{"another client's connection", []istiostats.Counts{{mtlsA: 5, mtlsC: 1, none: 1}}, scenario.ResultFail, "more than one kind"},
		{"plaintext slipped in", []istiostats.Counts{{mtlsA: 6, none: 2}}, scenario.ResultFail, "more than one kind"},
		{"restarted sidecar", []istiostats.Counts{{mtlsA: 2}}, scenario.ResultFail, "restarted"},
		{"security policy unknown", []istiostats.Counts{{mtlsA: 4, none: 1, unknown: 2}}, scenario.ResultFail, `connection_security_policy "unknown"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &scriptedWitness{reads: tc.reads}
			e := &Engine{witness: w}
			v, err := e.witnessed(t.Context(), results.Pod{Namespace: "n", Name: "b-0"}, before, 2)
			if err != nil {
				t.Fatal(err)
			}
			if v.result != tc.want || !strings.Contains(v.detail, tc.detail) || (tc.detail != "") != (v.reason == ReasonNoWitness) {
				t.Fatalf("got %+v, want %s with detail containing %q", v, tc.want, tc.detail)
			}
			if v.result == scenario.ResultMTLS && (v.clientID != mtlsA.SourcePrincipal || v.serverID != mtlsA.DestinationPrincipal) {
				t.Fatalf("identities %q %q, want %s", v.clientID, v.serverID, mtlsA)
			}
		})
	}
	t.Run("unreadable statistics are the harness's error", func(t *testing.T) {
		// Retried until the step's time runs out, then reported.
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		e := &Engine{witness: &scriptedWitness{err: errors.New("exec refused")}}
		if _, err := e.witnessed(ctx, results.Pod{Namespace: "n", Name: "b-0"}, before, 1); err == nil || !strings.Contains(err.Error(), "exec refused") {
			t.Fatalf("error %v, want the read error", err)
		}
	})
}
