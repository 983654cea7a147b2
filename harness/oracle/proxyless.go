package oracle

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/scenario"
)

// The rules below model Istio's proxyless gRPC data plane (injection
// template grpc-agent): pilot-agent runs without Envoy, hands grpc-go an xDS
// bootstrap and Istio's certificates, and grpc-go's xDS client and server
// apply the TLS settings istiod's gRPC generator computes. They differ from
// the sidecar rules (rules.go) in three ways that surprise people: a client
// originates mTLS only when a DestinationRule says ISTIO_MUTUAL (there is no
// auto mTLS), a PERMISSIVE server serves plaintext only, and a server
// labelled security.istio.io/tlsMode=istio turns PERMISSIVE into STRICT.
// The sources, in istio.io/istio at the version meshproof builds istiod
// from (v0.0.0-20260423205519-b01690e6db7d; the same lines on master):
//
//	[GLDS] buildInboundFilterChains,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/grpcgen/lds.go
//	       (lines 131-173 at that version): the server's mode is
//	       authn.NewMtlsPolicy(...).GetMutualTLSModeForPort(targetPort), the
//	       same composition as a sidecar's ([COMPOSE]); "if
//	       node.Labels[security.istio.io/tlsMode] == istio && mode ==
//	       PERMISSIVE { mode = STRICT }"; then PERMISSIVE (and an unknown
//	       mode) become DISABLE ("gRPC's filter chain match is super
//	       limited"); DISABLE builds one plaintext filter chain, STRICT one
//	       chain with RequireClientCertificate.
//	[GLDS-NS] buildInboundListeners (same file, lines 95-99): a port with no
//	       service instance gets no listener, and grpc-go's xDS server then
//	       serves nothing on it (NOT_SERVING).
//	[GCDS] clusterBuilder.applyTLS,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/grpcgen/cds.go
//	       (lines 264-284): "for now, we leave mTLS *off* by default" (no
//	       auto mTLS); only a DestinationRule ISTIO_MUTUAL builds an
//	       UpstreamTlsContext; SIMPLE and MUTUAL are TODOs that build none,
//	       DISABLE nothing. The policy is the DestinationRule's port-level
//	       one where it has one (applyDestinationRule, lines 177-179,
//	       util.GetPortLevelTrafficPolicy).
//	[GTMPL] the grpc-agent injection template (manifests/charts/istio-control/
//	       istio-discovery/files/grpc-agent.yaml, line 31 in Istio 1.30.3's
//	       chart): "security.istio.io/tlsMode: istio must be set by user ...
//	       We can't set it automatically." The sidecar template sets it
//	       (injection-template.yaml line 34).
//	[ALPN] grpc-go's TLS offers ALPN h2 only; a sidecar's mTLS carries
//	       Istio's ALPN (util.ALPNInMeshH2WithMxc = istio-peer-exchange,
//	       istio, h2, pilot/pkg/networking/util/util.go line 110), which a
//	       grpc-go server accepts by h2. [FCM]: a sidecar's PERMISSIVE
//	       inbound chains terminate TLS only with Istio's ALPN (HTTP ports:
//	       no chain for other TLS at all; TCP ports: other TLS is passed to
//	       the application as it is), its STRICT chains terminate any TLS.

// DataPlane is what carries a workload's traffic, as the scenario
// language names it.
type DataPlane = scenario.DataPlane

const (
	// DataPlaneNone is a workload outside the mesh: the application's own
	// plaintext, nothing enforced.
	DataPlaneNone = scenario.DataPlaneNone
	// DataPlaneSidecar is a workload with Istio's Envoy sidecar.
	DataPlaneSidecar = scenario.DataPlaneSidecar
	// DataPlaneProxyless is a workload of Istio's grpc-agent mode: grpc-go
	// configured by istiod through pilot-agent, no Envoy.
	DataPlaneProxyless = scenario.DataPlaneProxyless
	// DataPlaneAmbient is a workload in Istio's ambient mode: no sidecar,
	// its node's ztunnel (ambient.go).
	DataPlaneAmbient = scenario.DataPlaneAmbient
)

// ProxylessWorkload describes a workload that runs Istio's proxyless gRPC
// data plane.
type ProxylessWorkload struct {
	// TLSModeLabel says the workload (its pod or WorkloadEntry, and the
	// labels pilot-agent reports) carries security.istio.io/tlsMode=istio,
	// which [GTMPL] leaves to the user. It makes sidecar clients' auto mTLS
	// send mTLS to it ([TSM]) and its own PERMISSIVE strict ([GLDS]).
	TLSModeLabel bool
}

// PredictProxyless is PredictPolicies for a suite in which the workloads
// named in proxyless run Istio's proxyless gRPC data plane; the others keep
// the data plane their mesh flag gives them (sidecar or none). Pairs with
// a proxyless side follow the proxyless rules, the others the sidecar
// rules, so one call predicts a mixed mesh.
func PredictProxyless(s *scenario.Suite, m *scenario.MTLSStep, proxyless map[string]ProxylessWorkload) ([]Prediction, error) {
	for name := range proxyless {
		if s.Workload(name) == nil {
			return nil, fmt.Errorf("proxyless workload %q is not a fixture of the suite", name)
		}
	}
	pol, err := indexPolicies(s, m)
	if err != nil {
		return nil, err
	}
	var out []Prediction
	for i := range s.Fixtures.Workloads {
		client := &s.Fixtures.Workloads[i]
		for j := range s.Fixtures.Workloads {
			server := &s.Fixtures.Workloads[j]
			if client.Name == server.Name {
				continue
			}
			for _, port := range server.Ports {
				out = append(out, pol.predictMixed(proxyless, client, server, port.Number))
			}
		}
	}
	return out, nil
}

// proxylessWorkloads are the suite's workloads marked proxyless in the
// scenario file, as PredictProxyless takes them.
func proxylessWorkloads(s *scenario.Suite) map[string]ProxylessWorkload {
	out := map[string]ProxylessWorkload{}
	for _, w := range s.Fixtures.Workloads {
		if w.Proxyless {
			out[w.Name] = ProxylessWorkload{TLSModeLabel: w.TLSModeLabel}
		}
	}
	return out
}

// dataPlane is the data plane of a workload given the proxyless ones: a
// workload named there is proxyless; otherwise ambient, or out of the
// mesh, as the workload says; any other is a sidecar.
func dataPlane(proxyless map[string]ProxylessWorkload, w *scenario.Workload) DataPlane {
	if _, ok := proxyless[w.Name]; ok {
		return DataPlaneProxyless
	}
	switch w.Plane() {
	case DataPlaneAmbient:
		return DataPlaneAmbient
	case DataPlaneNone:
		return DataPlaneNone
	}
	return DataPlaneSidecar
}

// predictMixed dispatches a pair to the sidecar rules when neither side is
// proxyless or ambient, to the ambient rules when one side is ambient
// (ambient.go), and to the proxyless rules otherwise.
func (p *policies) predictMixed(proxyless map[string]ProxylessWorkload, client, server *scenario.Workload, port int) Prediction {
	cp, sp := dataPlane(proxyless, client), dataPlane(proxyless, server)
	prefix := ""
	if cp == DataPlaneProxyless && sp != DataPlaneProxyless {
		if pt := server.Port(port); pt != nil && (pt.Protocol == scenario.ProtocolHTTP || pt.Protocol == scenario.ProtocolTCP) {
			// pilot-agent intercepts nothing and grpc-go's xDS applies to
			// gRPC calls only: the client's HTTP or TCP leaves as the
			// application wrote it, plaintext, as from outside the mesh.
			outside := *client
			outside.Mesh, outside.Proxyless, outside.DataPlane = new(bool), false, DataPlaneNone
			client, cp = &outside, DataPlaneNone
			prefix = "proxyless client's " + string(pt.Protocol) + " is not gRPC, nothing of Istio's applies to it: "
		}
	}
	if cp == DataPlaneAmbient || sp == DataPlaneAmbient {
		pred := p.predictAmbient(cp, sp, client, server, port, proxyless[server.Name])
		pred.Why = prefix + pred.Why
		return pred
	}
	if cp != DataPlaneProxyless && sp != DataPlaneProxyless {
		pred := p.predict(client, server, port)
		pred.Why = prefix + pred.Why
		return pred
	}
	out := Prediction{From: client.Name, To: server.Name, Port: port}
	sent, why := p.proxylessSends(cp, client, server, port, proxyless[server.Name])
	if sent == sendsOneWayTLS {
		// Only a sidecar client originates one-way TLS (DR SIMPLE); the
		// proxyless server has either a plaintext chain or one that
		// demands a client certificate ([GLDS]), so the handshake fails
		// and the client sidecar answers 503.
		out.Result, out.Reason = scenario.ResultFail, "upstream-503"
		out.Why = why + "; the proxyless server terminates no one-way TLS: the client sidecar's handshake fails (503)"
		return out
	}
	var accepted string
	switch sp {
	case DataPlaneProxyless:
		out.Result, out.Reason, accepted = p.proxylessAccepts(cp, server, port, proxyless[server.Name], sent == sendsIstioMTLS)
	case DataPlaneSidecar:
		out.Result, out.Reason, accepted = p.sidecarAcceptsGRPC(server, port, sent == sendsIstioMTLS)
	default:
		if sent == sendsIstioMTLS {
			out.Result, accepted = scenario.ResultFail, "server without sidecar serves plaintext gRPC: the client's TLS handshake fails"
		} else {
			out.Result, accepted = scenario.ResultPlaintext, "server without sidecar serves plaintext"
		}
	}
	out.Why = why + "; " + accepted
	return out
}

// proxylessServerMode is the mode a proxyless server's listener enforces on
// a port after [GLDS]'s two rewrites: STRICT or DISABLE, never PERMISSIVE.
func (p *policies) proxylessServerMode(server *scenario.Workload, port int, pw ProxylessWorkload) (scenario.MTLSMode, string) {
	mode, from := p.serverMode(server, containerPort(server, port))
	switch {
	case mode == scenario.ModePermissive && pw.TLSModeLabel:
		return scenario.ModeStrict, from + " with the tlsMode=istio label, served as STRICT"
	case mode == scenario.ModePermissive:
		return scenario.ModeDisable, from + ", served as plaintext only"
	}
	return mode, from
}

// proxylessSends decides what the client puts on the wire towards a pair
// with a proxyless side.
func (p *policies) proxylessSends(cp DataPlane, client, server *scenario.Workload, port int, serverPW ProxylessWorkload) (wire, string) {
	switch cp {
	case DataPlaneNone:
		return sendsPlaintext, "client outside the mesh sends plaintext gRPC"
	case DataPlaneProxyless:
		// [GCDS]: only ISTIO_MUTUAL gives the cluster a TLS context.
		mode, rule, ok := p.clientTLS(server, port)
		switch {
		case !ok:
			return sendsPlaintext, "proxyless client without DestinationRule sends plaintext (no auto mTLS)"
		case mode == scenario.TLSIstioMutual:
			return sendsIstioMTLS, rule + ": proxyless client sends mTLS"
		default:
			return sendsPlaintext, rule + ": proxyless client builds no TLS for it and sends plaintext"
		}
	}
	// A sidecar client towards a proxyless server: the sidecar rules, with
	// the tlsMode label standing in for the sidecar's ([TSM]).
	if _, _, ok := p.clientTLS(server, port); ok || p.namespaceHint(server.Namespace) == scenario.ModeDisable {
		return p.sends(client, server, port)
	}
	if !serverPW.TLSModeLabel {
		return sendsPlaintext, "auto mTLS: proxyless server without the tlsMode=istio label, client sidecar sends plaintext"
	}
	if mode, from := p.serverMode(server, containerPort(server, port)); mode == scenario.ModeDisable {
		return sendsPlaintext, "auto mTLS: server's " + from + ", client sidecar sends plaintext"
	}
	return sendsIstioMTLS, "auto mTLS: proxyless server labelled tlsMode=istio, client sidecar sends mTLS"
}

// proxylessAccepts decides what a proxyless server makes of what arrives.
func (p *policies) proxylessAccepts(cp DataPlane, server *scenario.Workload, port int, pw ProxylessWorkload, mtls bool) (scenario.Result, string, string) {
	mode, from := p.proxylessServerMode(server, port, pw)
	switch {
	case mode == scenario.ModeStrict && mtls:
		// [GLDS] + [ALPN]: the one chain requires a client certificate
		// from the mesh's CA, which both grpc-go and a sidecar present.
		return scenario.ResultMTLS, "", "proxyless server's " + from + " accepts mTLS"
	case mode == scenario.ModeStrict && cp == DataPlaneSidecar:
		return scenario.ResultFail, "upstream-503", "proxyless server's " + from + " has no plaintext chain: the client sidecar answers 503"
	case mode == scenario.ModeStrict:
		// grpc-go's TLS handshake reads the client's HTTP/2 preface as a
		// bad record and closes the connection: the gRPC client sees it
		// closed (measured: "error reading server preface: EOF"), and
		// reset now and then (4 in 60 in one rehearsal) when part of the
		// client's preface was still unread, so the kernel answered the
		// close with RST rather than FIN. The result stands, the reason
		// is left open.
		return scenario.ResultFail, "", "proxyless server's " + from + " has no plaintext chain: it closes the plaintext connection (EOF, or a reset when the client's preface is still unread: reason not determinate)"
	case mtls && cp == DataPlaneSidecar:
		return scenario.ResultFail, "upstream-503", "proxyless server's " + from + " has no TLS chain: the client sidecar's handshake fails (503)"
	case mtls:
		// The plaintext server's HTTP/2 SETTINGS frame reaches the
		// client's TLS handshake first (measured: "tls: first record does
		// not look like a TLS handshake").
		return scenario.ResultFail, "tls", "proxyless server's " + from + " has no TLS chain: the client's TLS handshake reads plaintext HTTP/2"
	default:
		return scenario.ResultPlaintext, "", "proxyless server's " + from + " accepts plaintext"
	}
}

// sidecarAcceptsGRPC decides what a sidecar server makes of what a
// proxyless client sends: mTLS with ALPN h2 only, or plaintext.
func (p *policies) sidecarAcceptsGRPC(server *scenario.Workload, port int, mtls bool) (scenario.Result, string, string) {
	mode, from := p.serverMode(server, containerPort(server, port))
	switch {
	case mode == scenario.ModeStrict && mtls:
		// [FCM]: STRICT chains match transport tls whatever the ALPN.
		return scenario.ResultMTLS, "", "sidecar server's " + from + " accepts mTLS without Istio's ALPN"
	case mode == scenario.ModeStrict:
		return scenario.ResultFail, "", "sidecar server's " + from + " rejects plaintext: the connection is reset"
	case mtls && mode == scenario.ModePermissive:
		// [ALPN] + [FCM]: grpc-go's mTLS carries no Istio ALPN, so the
		// PERMISSIVE sidecar does not terminate it and the echo server
		// behind it cannot.
		return scenario.ResultFail, "", "sidecar server's " + from + " terminates TLS only with Istio's ALPN, which grpc-go does not send: the handshake fails"
	case mtls:
		return scenario.ResultFail, "", "sidecar server's " + from + " does not terminate mTLS: the handshake fails"
	default:
		return scenario.ResultPlaintext, "", "sidecar server's " + from + " accepts plaintext"
	}
}
