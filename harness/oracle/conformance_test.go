package oracle

import (
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// measuredCell is one policy combination measured with real istiod,
// pilot-agent and grpc-go (issue 12, and harness/oracle/conformance's conformance
// test, which runs the same and more cells): what a proxyless client (grpc-a,
// xds:/// with xDS credentials) and a plain client (legacy, insecure gRPC)
// got from the proxyless server grpc-b.
type measuredCell struct {
	name             string
	policies         *scenario.MTLSStep
	proxyless, plain outcome
}

// outcome is a result and its fail reason.
type outcome struct {
	result scenario.Result
	reason string
}

var (
	gotPlaintext = outcome{plaintext, ""}
	gotMTLS      = outcome{mtls, ""}
	// The server closes a plaintext connection it wants TLS on.
	gotEOF = outcome{fail, "eof"}
	// The client's TLS handshake reads the server's plaintext HTTP/2.
	gotTLS = outcome{fail, "tls"}
)

func measuredCells() []measuredCell {
	ns := func(m scenario.MTLSMode) []scenario.PeerAuthentication {
		return []scenario.PeerAuthentication{namespace("meshproof", m)}
	}
	im := []scenario.DestinationRule{dr("grpc-b", istioMutual, 0)}
	return []measuredCell{
		{"no policy", nil, gotPlaintext, gotPlaintext},
		{"namespace STRICT", &scenario.MTLSStep{PeerAuthentications: ns(strict)}, gotEOF, gotEOF},
		{"namespace STRICT, DR ISTIO_MUTUAL", &scenario.MTLSStep{PeerAuthentications: ns(strict), DestinationRules: im}, gotMTLS, gotEOF},
		{"namespace PERMISSIVE, DR ISTIO_MUTUAL", &scenario.MTLSStep{PeerAuthentications: ns(permissive), DestinationRules: im}, gotTLS, gotPlaintext},
		{"namespace PERMISSIVE", &scenario.MTLSStep{PeerAuthentications: ns(permissive)}, gotPlaintext, gotPlaintext},
		{"namespace DISABLE", &scenario.MTLSStep{PeerAuthentications: ns(disable)}, gotPlaintext, gotPlaintext},
		{"namespace DISABLE, DR ISTIO_MUTUAL", &scenario.MTLSStep{PeerAuthentications: ns(disable), DestinationRules: im}, gotTLS, gotPlaintext},
	}
}

func (c measuredCell) observed() []Observed {
	return []Observed{
		{From: "grpc-a", To: "grpc-b", Port: grpcPort, Result: c.proxyless.result, Reason: c.proxyless.reason},
		{From: "legacy", To: "grpc-b", Port: grpcPort, Result: c.plain.result, Reason: c.plain.reason},
	}
}

// The proxyless rules agree with every measured cell.
func TestConformOracleAgreesWithMeasurements(t *testing.T) {
	s, proxyless := proxylessSuite()
	for _, c := range measuredCells() {
		preds, err := PredictProxyless(s, c.policies, proxyless)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range Conform(c.name, preds, c.observed()) {
			t.Error(d)
		}
	}
}

// A wrong model fails the comparison, naming each cell it gets wrong: here
// the sidecar rules applied to proxyless workloads (auto mTLS, PERMISSIVE
// accepting mTLS), the mistake the proxyless rules exist to avoid.
func TestConformCatchesAWrongRule(t *testing.T) {
	s, _ := proxylessSuite()
	var failed []string
	for _, c := range measuredCells() {
		preds, err := PredictPolicies(s, c.policies) // grpc-a and grpc-b as sidecars
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range Conform(c.name, preds, c.observed()) {
			failed = append(failed, d.String())
		}
	}
	joined := strings.Join(failed, "\n")
	for _, want := range []string{
		`cell "no policy": grpc-a -> grpc-b:7070: Istio gave plaintext, the oracle predicts mtls because auto mTLS`,
		`cell "namespace STRICT": grpc-a -> grpc-b:7070: Istio gave fail (eof), the oracle predicts mtls`,
		`cell "namespace PERMISSIVE, DR ISTIO_MUTUAL": grpc-a -> grpc-b:7070: Istio gave fail (tls), the oracle predicts mtls`,
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("the comparison does not report %q; it reported:\n%s", want, joined)
		}
	}
	// Cells where the wrong model happens to be right are not reported.
	if strings.Contains(joined, `cell "namespace STRICT, DR ISTIO_MUTUAL": grpc-a`) {
		t.Errorf("an agreeing cell was reported:\n%s", joined)
	}
}

// One flipped rule is enough: a reason the observation does not carry, and
// a pair the oracle has no prediction for, are disagreements too.
func TestConformReasonsAndMissingPairs(t *testing.T) {
	preds := []Prediction{{From: "a", To: "b", Port: 1, Result: fail, Reason: "upstream-503", Why: "w"}}
	if d := Conform("c", preds, []Observed{{From: "a", To: "b", Port: 1, Result: fail, Reason: "upstream-503"}}); len(d) != 0 {
		t.Errorf("agreeing observation reported: %v", d)
	}
	if d := Conform("c", preds, []Observed{{From: "a", To: "b", Port: 1, Result: fail, Reason: "eof", Detail: "EOF"}}); len(d) != 1 ||
		!strings.Contains(d[0].String(), `Istio gave fail (eof): EOF, the oracle predicts fail (upstream-503)`) {
		t.Errorf("other reason: %v", d)
	}
	open := []Prediction{{From: "a", To: "b", Port: 1, Result: fail, Why: "w"}}
	if d := Conform("c", open, []Observed{{From: "a", To: "b", Port: 1, Result: fail, Reason: "eof"}}); len(d) != 0 {
		t.Errorf("a prediction without a reason accepts any: %v", d)
	}
	if d := Conform("c", preds, []Observed{{From: "x", To: "b", Port: 1, Result: mtls}}); len(d) != 1 || !d[0].Missing ||
		!strings.Contains(d[0].String(), "predicts nothing") {
		t.Errorf("missing pair: %v", d)
	}
}
