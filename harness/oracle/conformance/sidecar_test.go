package conformance_test

import (
	"fmt"
	"strings"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The sidecar conformance matrix: the oracle's predictions for sidecar
// and out-of-mesh pairs against what Envoy does with the configuration the
// real istiod serves (the local cluster's xDS clients, evaluated by
// package envoy), cell by cell.

const sidecarNamespace = "conformance"

// The fixtures: service-a and service-b with sidecars, legacy without,
// each serving HTTP on Service port 80 (container port 8080), TCP on 9000
// (19000) and gRPC on 7070.
var sidecarPorts = []scenario.Port{
	{Name: "http", Number: 80, TargetPort: 8080, Protocol: scenario.ProtocolHTTP},
	{Name: "tcp-echo", Number: 9000, TargetPort: 19000, Protocol: scenario.ProtocolTCP},
	{Name: "grpc", Number: 7070, Protocol: scenario.ProtocolGRPC},
}

func sidecarWorkloads() []manifests.Workload {
	var ports []manifests.Port
	for _, p := range sidecarPorts {
		ports = append(ports, manifests.Port{Name: p.Name, Number: int32(p.Number), TargetPort: int32(p.TargetPort), Protocol: string(p.Protocol)})
	}
	var out []manifests.Workload
	for _, w := range manifests.StandardWorkloads(sidecarNamespace) {
		w.Ports = ports
		out = append(out, w)
	}
	return out
}

// sidecarSuite is the fixtures as the oracle sees them.
func sidecarSuite() *scenario.Suite {
	s := &scenario.Suite{Fixtures: scenario.Fixtures{Namespace: sidecarNamespace}}
	for _, w := range sidecarWorkloads() {
		inMesh := w.InMesh
		s.Fixtures.Workloads = append(s.Fixtures.Workloads, scenario.Workload{Name: w.Name, Namespace: sidecarNamespace, ServiceAccount: w.Name,
			Mesh: &inMesh, Ports: sidecarPorts})
	}
	return s
}

// sidecarPairs are every client → server of the matrix: a client with a
// sidecar and one without, towards a server with a sidecar and one
// without (but itself), on every port.
func sidecarPairs() [][3]any {
	var out [][3]any
	for _, from := range []string{"service-a", "legacy"} {
		for _, to := range []string{"service-b", "legacy"} {
			if to == from {
				continue // the oracle predicts no workload to itself
			}
			for _, p := range sidecarPorts {
				out = append(out, [3]any{from, to, uint16(p.Number)})
			}
		}
	}
	return out
}

// sidecarPA is one PeerAuthentication setting of the matrix.
type sidecarPA struct {
	name string
	pas  []scenario.PeerAuthentication
}

// sidecarPASettings are the PeerAuthentication axis: none; mesh
// (root namespace), namespace and workload (service-b) ×
// UNSET/DISABLE/PERMISSIVE/STRICT; and port-level overrides of a workload
// mode, keyed by the container port, which differs from the Service port.
func sidecarPASettings() []sidecarPA {
	out := []sidecarPA{{name: "no PeerAuthentication"}}
	modes := []scenario.MTLSMode{scenario.ModeUnset, scenario.ModeDisable, scenario.ModePermissive, scenario.ModeStrict}
	for _, scope := range []scenario.PolicyScope{scenario.ScopeMesh, scenario.ScopeNamespace, scenario.ScopeWorkload} {
		for _, mode := range modes {
			out = append(out, sidecarPA{name: string(scope) + " " + string(mode), pas: []scenario.PeerAuthentication{sidecarPeerAuthentication(scope, mode)}})
		}
	}
	strict := sidecarPeerAuthentication(scenario.ScopeWorkload, scenario.ModeStrict)
	strict.Ports = []scenario.PortMode{{Port: 8080, Mode: scenario.ModePermissive}, {Port: 19000, Mode: scenario.ModeDisable}}
	disable := sidecarPeerAuthentication(scenario.ScopeWorkload, scenario.ModeDisable)
	disable.Ports = []scenario.PortMode{{Port: 8080, Mode: scenario.ModeStrict}, {Port: 19000, Mode: scenario.ModePermissive}}
	out = append(out,
		sidecarPA{name: "workload STRICT, port 8080 PERMISSIVE, port 19000 DISABLE", pas: []scenario.PeerAuthentication{strict}},
		sidecarPA{name: "namespace PERMISSIVE, workload DISABLE, port 8080 STRICT, port 19000 PERMISSIVE", pas: []scenario.PeerAuthentication{
			sidecarPeerAuthentication(scenario.ScopeNamespace, scenario.ModePermissive), disable}})
	return out
}

func sidecarPeerAuthentication(scope scenario.PolicyScope, mode scenario.MTLSMode) scenario.PeerAuthentication {
	p := scenario.PeerAuthentication{Scope: scope, Mode: mode}
	switch scope {
	case scenario.ScopeMesh:
		p.Namespace = scenario.IstioRootNamespace
	case scenario.ScopeNamespace:
		p.Namespace = sidecarNamespace
	case scenario.ScopeWorkload:
		p.Namespace, p.Workload = sidecarNamespace, "service-b"
	}
	return p
}

// sidecarDRSettings are the DestinationRule axis: none, and
// DISABLE/ISTIO_MUTUAL/SIMPLE for each server's Service (workload) or for
// every service (mesh-wide, host "*" in the root namespace).
func sidecarDRSettings() []struct {
	name string
	drs  []scenario.DestinationRule
} {
	out := []struct {
		name string
		drs  []scenario.DestinationRule
	}{{name: "no DestinationRule"}}
	for _, mode := range []scenario.TLSMode{scenario.TLSDisable, scenario.TLSIstioMutual, scenario.TLSSimple} {
		out = append(out, struct {
			name string
			drs  []scenario.DestinationRule
		}{name: "DR " + string(mode), drs: []scenario.DestinationRule{
			{Scope: scenario.DRScopeWorkload, Workload: "service-b", Mode: mode}, {Scope: scenario.DRScopeWorkload, Workload: "legacy", Mode: mode}}})
	}
	for _, mode := range []scenario.TLSMode{scenario.TLSDisable, scenario.TLSIstioMutual, scenario.TLSSimple} {
		out = append(out, struct {
			name string
			drs  []scenario.DestinationRule
		}{name: "mesh-wide DR " + string(mode), drs: []scenario.DestinationRule{{Scope: scenario.DRScopeMesh, Mode: mode}}})
	}
	return out
}

// sidecarCell is one policy combination of the matrix.
type sidecarCell struct {
	name     string
	policies *scenario.MTLSStep
}

func sidecarCells() []sidecarCell {
	var out []sidecarCell
	for _, pa := range sidecarPASettings() {
		for _, dr := range sidecarDRSettings() {
			out = append(out, sidecarCell{name: pa.name + ", " + dr.name, policies: &scenario.MTLSStep{PeerAuthentications: pa.pas, DestinationRules: dr.drs}})
		}
	}
	return out
}

// predictFunc is the oracle (or, in the unit test, a deliberately wrong
// one).
type predictFunc func(*scenario.Suite, *scenario.MTLSStep) ([]oracle.Prediction, error)

// judgeCell evaluates every pair of the matrix on nw, the configuration
// istiod served under the cell's policies, and holds the outcomes to
// predict's predictions for them. An undecidable configuration is an
// error naming it.
func judgeCell(cell sidecarCell, predict predictFunc, nw *xdstest.Network) ([]oracle.Observed, []oracle.Disagreement, error) {
	preds, err := predict(sidecarSuite(), cell.policies)
	if err != nil {
		return nil, nil, fmt.Errorf("cell %q: the oracle: %w", cell.name, err)
	}
	var observed []oracle.Observed
	for _, p := range sidecarPairs() {
		from, to, port := p[0].(string), p[1].(string), p[2].(uint16)
		req := nw.Request(from, to, port)
		out, err := envoy.Evaluate(nw, req)
		if err != nil {
			return nil, nil, fmt.Errorf("cell %q: %s -> %s:%d: %w (trace: %s)", cell.name, from, to, port, err, out.Trace)
		}
		o := observedOf(req.Protocol, out)
		o.From, o.To, o.Port = from, to, int(port)
		observed = append(observed, o)
	}
	return observed, oracle.Conform(cell.name, preds, observed), nil
}

// observedOf is what the probe would report of an evaluated outcome,
// classified as the echo program classifies (echoapi): over HTTP and gRPC,
// mtls when the application received an X-Forwarded-Client-Cert; over TCP,
// as the engine's witness reads the server sidecar's istio.stats count
// (no count from a sidecar is no-witness); Envoy's local 503 "upstream
// connect error" is upstream-503, a reset connection reset, an ended one
// eof, a refused one refused. The trace goes into Detail.
func observedOf(p envoy.Protocol, out envoy.Outcome) oracle.Observed {
	o := oracle.Observed{Detail: out.Why + " [" + out.Trace.DecidedBy() + "]"}
	fail := func(reason string) oracle.Observed {
		o.Result, o.Reason = scenario.ResultFail, reason
		return o
	}
	switch out.Kind {
	case envoy.Delivered:
		switch {
		case p == envoy.TCP && out.TCPCount == nil && out.Server != nil && out.Server.Sidecar != nil:
			return fail("no-witness")
		case p == envoy.TCP && out.TCPCount != nil && out.TCPCount.Policy == envoy.PolicyMutualTLS:
			o.Result = scenario.ResultMTLS
		case p != envoy.TCP && out.XFCC != "":
			o.Result = scenario.ResultMTLS
		default:
			o.Result = scenario.ResultPlaintext
		}
		return o
	case envoy.LocalReply:
		if out.Status == 503 && strings.HasPrefix(out.Body, echoapi.EnvoyUpstreamResetBody) {
			return fail(echoapi.ReasonUpstream503)
		}
		if p == envoy.GRPC {
			// Envoy answers a gRPC call's local reply with UNAVAILABLE for
			// a 503 and the body as its message.
			return fail(echoapi.GRPCErrorReason("Unavailable", out.Body))
		}
		return fail(echoapi.HTTPReason(out.Status))
	case envoy.Closed:
		if out.Reset {
			return fail(echoapi.ReasonReset)
		}
		return fail(echoapi.ReasonEOF)
	case envoy.Refused:
		return fail(echoapi.ReasonRefused)
	}
	return fail("unknown outcome " + string(out.Kind))
}
