package oracle

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// The rules below model Istio's ambient data plane: a pod enrolled with
// istio.io/dataplane-mode=ambient has no sidecar; istio-cni redirects its
// traffic to its node's ztunnel, which speaks HBONE (HTTP CONNECT inside
// Istio mutual TLS, port 15008) to peers that accept it and plaintext to
// the others, and decides on the server side from authorization policies
// istiod converts PeerAuthentications into. Sources, at the versions
// meshproof pins (istio.io/istio v0.0.0-20260423205519-b01690e6db7d, the
// istiod a rehearsal runs; ztunnel tags 1.29.6 and 1.30.3, whose lines
// named here are the same):
//
//	[ZAUTHZ] convertedSelectorPeerAuthentications and convertPeerAuthentication,
//	       istio/istio pilot/pkg/serviceregistry/ambient/authorization.go:
//	       the workload's effective mode (mesh, then namespace, then
//	       workload, UNSET inheriting) STRICT attaches the static policy
//	       istio-system/istio_converted_static_strict, DENY when the
//	       connection has no peer principal; a workload policy with
//	       port-level modes becomes a DENY policy of its own
//	       (converted_peer_authentication_<name>) whose groups deny
//	       principal-less connections per STRICT port, or on every port but
//	       the PERMISSIVE/DISABLE ones, with the quirks of those two
//	       functions kept as they are (e.g. a port-level DISABLE under an
//	       inherited STRICT does not lift the static policy).
//	[ZPOL] PolicyCollections, .../ambient/policies.go: the converted
//	       policies and the static one are sent to ztunnel, the converted
//	       one attached to every workload its selector selects;
//	       buildWorkloadPolicies in workloads.go attaches those and the keys
//	       [ZAUTHZ] returns.
//	[ZRBAC] Authorization::matches and State::assert_rbac, istio/ztunnel
//	       src/rbac.rs and src/state.rs: a connection is denied when any
//	       DENY policy of the workload matches (a group matches when all its
//	       rules do, a rule when any of its matches does); a peer principal
//	       is present only for HBONE, whose mTLS carries the client's SPIFFE
//	       identity.
//	[ZPASS] InboundPassthrough::proxy_inbound_plaintext, ztunnel
//	       src/proxy/inbound_passthrough.rs: a plaintext connection to an
//	       ambient pod is accepted, checked with no source identity, and on
//	       a deny dropped: the client sees its connection closed after it
//	       connected (a reset if its request bytes had reached ztunnel, an
//	       end of stream otherwise, as the kernel closes a socket with or
//	       without unread data), never an answer.
//	[ZOUT] Outbound::build_request, ztunnel src/proxy/outbound.rs: the
//	       protocol towards a destination is the destination workload's:
//	       HBONE for a workload istiod marks HBONE, plain TCP (the client's
//	       bytes as they are) for any other; no DestinationRule reaches
//	       ztunnel at all (istiod's ztunnel xDS carries workloads, services
//	       and authorizations only).
//	[ZTUN] setTunnelProtocol, .../ambient/workloads.go: istiod marks a pod
//	       HBONE when istio-cni annotated it ambient.istio.io/redirection=
//	       enabled or it carries networking.istio.io/tunnel=http (which
//	       Istio's sidecar template adds only with the proxy metadata
//	       ISTIO_META_ENABLE_HBONE, not set by default); the
//	       LEGACY_ISTIO_MTLS branch is behind a flag nothing sets. So a
//	       sidecar pod is plain TCP to ztunnel.
//	[HBSEND] supportTunnel and the tunnel branch of buildLocalityLbEndpoint,
//	       istio/istio pilot/pkg/xds/endpoints/endpoint_builder.go: a
//	       sidecar's endpoint for an ambient pod (no tlsMode=istio label,
//	       HBONE per [ZTUN]) is an HBONE endpoint (tunnel metadata) when
//	       PILOT_ENABLE_SENDING_HBONE is on, which ambient's
//	       PILOT_ENABLE_AMBIENT turns on (pilot/pkg/features/ambient.go).
//	[HBTSM] applyHBONETransportSocketMatches, pilot/pkg/networking/core/
//	       cluster_tls.go: with HBONE sending on, every outbound cluster's
//	       first transport socket match is "hbone" on the tunnel metadata:
//	       without TLS, under DISABLE (no TLS context) and under
//	       ISTIO_MUTUAL (HBONE replaces it) it is HBONE with a plain inner
//	       socket; under SIMPLE the rule's TLS rides inside the tunnel.
//	[SCHBONE] the ambient profile of Istio's charts (files/profile-ambient.yaml
//	       in 1.29.6 and 1.30.3) sets meshConfig.defaultConfig.proxyMetadata
//	       ISTIO_META_ENABLE_HBONE=true, so the sidecar injection template
//	       (files/injection-template.yaml) labels injected pods
//	       networking.istio.io/tunnel=http ([ZTUN]: HBONE to ztunnel), and
//	       buildInboundHBONEListeners (pilot/pkg/networking/core/
//	       listener_inbound.go) gives such a sidecar a connect_terminate
//	       listener on 15008 that requires Istio mutual TLS
//	       (buildConnectTerminateListener, listener_waypoint.go) in front of
//	       inner chains built with mode DISABLE whatever the
//	       PeerAuthentication says. Between two sidecars nothing changes:
//	       an endpoint labelled tlsMode=istio keeps Istio mTLS unless
//	       PILOT_PREFER_SENDING_HBONE ([HBSEND]).

// ztMatch is one match of a ztunnel authorization rule, reduced to what
// converted PeerAuthentications use ([ZAUTHZ]): no peer principal, and
// destination ports or all but some.
type ztMatch struct {
	noPrincipal bool
	ports       []int
	notPorts    []int
}

func (m ztMatch) matches(principal bool, port int) bool {
	if m.noPrincipal && principal {
		return false
	}
	if len(m.ports) > 0 && !slices.Contains(m.ports, port) {
		return false
	}
	return !slices.Contains(m.notPorts, port)
}

func (m ztMatch) String() string {
	var parts []string
	if m.noPrincipal {
		parts = append(parts, "no peer principal")
	}
	if len(m.ports) > 0 {
		parts = append(parts, fmt.Sprintf("port in %v", m.ports))
	}
	if len(m.notPorts) > 0 {
		parts = append(parts, fmt.Sprintf("port not in %v", m.notPorts))
	}
	return strings.Join(parts, " and ")
}

// ztAuthorization is a DENY authorization istiod sends ztunnel: it matches
// when any group does, a group when all its rules do, a rule when any of
// its matches does ([ZRBAC]).
type ztAuthorization struct {
	name   string
	groups [][][]ztMatch
}

func (a ztAuthorization) denies(principal bool, port int) bool {
	for _, group := range a.groups {
		all := len(group) > 0
		for _, rule := range group {
			if !slices.ContainsFunc(rule, func(m ztMatch) bool { return m.matches(principal, port) }) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// StaticStrictPolicy is the authorization istiod sends ztunnel for every
// workload whose effective PeerAuthentication is STRICT ([ZAUTHZ]).
const StaticStrictPolicy = scenario.IstioRootNamespace + "/istio_converted_static_strict"

// ConvertedPolicyPrefix starts the name of the authorization istiod
// converts a workload PeerAuthentication with port-level modes into.
const ConvertedPolicyPrefix = "converted_peer_authentication_"

var denyNoPrincipal = ztMatch{noPrincipal: true}

func modeOf(pa *scenario.PeerAuthentication) scenario.MTLSMode {
	if pa == nil || pa.Mode == "" {
		return scenario.ModeUnset
	}
	return pa.Mode
}

func isStrict(pa *scenario.PeerAuthentication) bool {
	return pa != nil && modeOf(pa) == scenario.ModeStrict
}

// ztunnelAuthorizations are the DENY authorizations ztunnel holds for an
// ambient server workload under the policies: [ZAUTHZ] and [ZPOL], written
// as close to istiod's two functions as the scenario's policies allow
// (one policy per scope; meshproof names a workload policy after its
// workload, policy.ForMTLS).
func (p *policies) ztunnelAuthorizations(server *scenario.Workload) []ztAuthorization {
	meshPA, nsPA, wlPA := p.mesh, p.namespace[server.Namespace], p.workload[server.Name]
	if wlPA != nil && wlPA.Namespace != server.Namespace {
		wlPA = nil
	}
	var out []ztAuthorization
	static := ztAuthorization{name: StaticStrictPolicy, groups: [][][]ztMatch{{{denyNoPrincipal}}}}

	// convertedSelectorPeerAuthentications: is the static policy attached?
	effectiveStrict := false
	if meshPA != nil {
		effectiveStrict = isStrict(meshPA)
	}
	if nsPA != nil && modeOf(nsPA) != scenario.ModeUnset {
		effectiveStrict = isStrict(nsPA)
	}
	if wlPA != nil {
		switch modeOf(wlPA) {
		case scenario.ModeStrict:
			effectiveStrict = true
		case scenario.ModePermissive, scenario.ModeDisable:
			effectiveStrict = false
		}
		if len(wlPA.Ports) > 0 {
			has := func(modes ...scenario.MTLSMode) bool {
				return slices.ContainsFunc(wlPA.Ports, func(pm scenario.PortMode) bool { return slices.Contains(modes, pm.Mode) })
			}
			switch modeOf(wlPA) {
			case scenario.ModeStrict:
				if has(scenario.ModePermissive, scenario.ModeDisable) {
					effectiveStrict = false
				}
			case scenario.ModePermissive, scenario.ModeDisable:
			default:
				if effectiveStrict {
					// Only PERMISSIVE lifts it here, not DISABLE.
					if has(scenario.ModePermissive) {
						effectiveStrict = false
					}
				} else {
					effectiveStrict = false
				}
			}
		}
	}
	if effectiveStrict {
		out = append(out, static)
	}
	if conv, ok := convertWorkloadPA(wlPA, nsPA, meshPA); ok {
		out = append(out, conv)
	}
	return out
}

// convertWorkloadPA is convertPeerAuthentication ([ZAUTHZ]) for the
// workload policy of a server, with its namespace's and the mesh's.
func convertWorkloadPA(pa, nsPA, rootPA *scenario.PeerAuthentication) (ztAuthorization, bool) {
	if pa == nil || len(pa.Ports) == 0 || pa.Namespace == scenario.IstioRootNamespace {
		return ztAuthorization{}, false
	}
	mode := modeOf(pa)
	var rules [][]ztMatch
	var groups [][][]ztMatch
	if mode == scenario.ModeStrict {
		rules = append(rules, []ztMatch{denyNoPrincipal})
	}
	nsUnset := nsPA == nil || modeOf(nsPA) == scenario.ModeUnset
	foundNonStrict := false
	// maps.SeqStable: the port-level modes in port order.
	ports := slices.Clone(pa.Ports)
	slices.SortFunc(ports, func(a, b scenario.PortMode) int { return a.Port - b.Port })
	for _, pm := range ports {
		switch pm.Mode {
		case scenario.ModeStrict:
			if mode == scenario.ModeStrict ||
				(mode == scenario.ModeUnset && nsPA != nil && isStrict(nsPA)) ||
				(nsUnset && rootPA != nil && isStrict(rootPA)) {
				continue // enforced by the parent policy
			}
			groups = append(groups, [][]ztMatch{{{noPrincipal: true, ports: []int{pm.Port}}}})
		case scenario.ModePermissive, scenario.ModeDisable:
			if mode == scenario.ModePermissive || mode == scenario.ModeDisable {
				continue
			}
			if mode == scenario.ModeUnset && ((nsPA != nil && !isStrict(nsPA)) ||
				(nsPA == nil && rootPA != nil && !isStrict(rootPA)) ||
				(nsPA == nil && rootPA == nil)) {
				continue
			}
			foundNonStrict = true
			rules = append(rules, []ztMatch{{notPorts: []int{pm.Port}}})
		}
	}
	if mode == scenario.ModeStrict && !foundNonStrict {
		return ztAuthorization{}, false
	}
	if len(rules) == 0 && len(groups) == 0 {
		return ztAuthorization{}, false
	}
	mergeStrict := (rootPA != nil && isStrict(rootPA) && (nsPA == nil || nsUnset || isStrict(nsPA))) ||
		(nsPA != nil && isStrict(nsPA))
	if mergeStrict && foundNonStrict {
		rules = append(rules, []ztMatch{denyNoPrincipal})
	}
	if len(rules) > 0 {
		groups = append(groups, rules)
	}
	return ztAuthorization{name: pa.Namespace + "/" + ConvertedPolicyPrefix + pa.Workload, groups: groups}, true
}

// ztunnelDenies reports whether the server's ztunnel denies a connection
// on a container port, and by which policy.
func (p *policies) ztunnelDenies(server *scenario.Workload, principal bool, port int) (bool, string) {
	for _, a := range p.ztunnelAuthorizations(server) {
		if a.denies(principal, port) {
			return true, a.name
		}
	}
	return false, ""
}

// ambientArrives is what reaches an ambient server's ztunnel from a
// client of another data plane (or of ambient), and why.
type ambientArrival int

const (
	arrivesPlaintext ambientArrival = iota
	arrivesHBONE
	// arrivesHBONEWithTLS is a sidecar's DestinationRule SIMPLE inside
	// HBONE ([HBTSM]): the tunnel is mutual TLS, the bytes inside are the
	// rule's TLS, which the echo server does not speak.
	arrivesHBONEWithTLS
	// arrivesTLS is grpc-go's mTLS from a proxyless client, which cannot
	// tunnel ([HBSEND] supportTunnel: "Proxyless client cannot handle
	// tunneling"): TLS bytes on the plaintext port.
	arrivesTLS
)

// predictAmbient decides a pair with an ambient side.
func (p *policies) predictAmbient(cp, sp DataPlane, client, server *scenario.Workload, port int, serverPW ProxylessWorkload) Prediction {
	out := Prediction{From: client.Name, To: server.Name, Port: port}
	tcp := false
	if pt := server.Port(port); pt != nil && pt.Protocol == scenario.ProtocolTCP {
		tcp = true
	}
	if cp == DataPlaneAmbient && sp == DataPlaneSidecar && p.sidecarsHBONE {
		out.Result = scenario.ResultMTLS
		out.Why = "ambient client: its ztunnel sends HBONE to the sidecar, which the ambient profile makes HBONE-capable (tunnel label), and the sidecar's HBONE listener requires mutual TLS and passes it on under any PeerAuthentication"
		return out
	}
	if cp == DataPlaneAmbient && sp != DataPlaneAmbient {
		// [ZOUT] + [ZTUN]: the client's ztunnel sends the application's
		// bytes as they are to a workload that is not HBONE; the server
		// treats them as from outside the mesh.
		outside := *client
		outside.Mesh, outside.DataPlane, outside.Proxyless = new(bool), scenario.DataPlaneNone, false
		var pred Prediction
		switch sp {
		case DataPlaneProxyless:
			res, reason, why := p.proxylessAccepts(DataPlaneNone, server, port, serverPW, false)
			pred = Prediction{Result: res, Reason: reason, Why: why}
		default:
			pred = p.predict(&outside, server, port)
		}
		out.Result, out.Reason = pred.Result, pred.Reason
		out.Why = "ambient client: its ztunnel ignores DestinationRules and sends plaintext to a workload that is not HBONE (" + string(sp) + "); " + pred.Why
		if out.Result == scenario.ResultFail {
			// The server closes ztunnel's connection; what the client sees
			// of it is ztunnel closing its own, with or without unread
			// bytes (a reset or an end of stream).
			out.Reason = ""
			out.Why += "; the client sees its ztunnel close the connection (reason not determinate)"
		}
		return out
	}

	// The server is ambient.
	var arrives ambientArrival
	var why string
	switch cp {
	case DataPlaneAmbient:
		arrives, why = arrivesHBONE, "ambient client: its ztunnel sends HBONE to the ambient server whatever DestinationRule applies"
	case DataPlaneSidecar:
		if mode, rule, ok := p.clientTLS(server, port); ok && mode == scenario.TLSSimple {
			arrives, why = arrivesHBONEWithTLS, rule+": the client sidecar sends the rule's one-way TLS inside HBONE to the ambient server"
		} else {
			arrives, why = arrivesHBONE, "client sidecar sends HBONE to the ambient server (its endpoint is HBONE, the hbone transport socket match comes first)"
			if ok {
				why = rule + " does not change it: " + why
			}
		}
	case DataPlaneProxyless:
		sent, sw := p.proxylessSends(cp, client, server, port, ProxylessWorkload{})
		arrives, why = arrivesPlaintext, sw
		if sent == sendsIstioMTLS {
			arrives = arrivesTLS
			why += " (grpc-go cannot tunnel: TLS on the ambient pod's plaintext port)"
		}
	default:
		arrives, why = arrivesPlaintext, "client outside the mesh sends plaintext"
	}
	target := containerPort(server, port)
	switch arrives {
	case arrivesHBONE:
		// [ZRBAC]: every converted PeerAuthentication denies only
		// connections without a peer principal; HBONE has one.
		out.Result, out.Why = scenario.ResultMTLS, why+"; the server's ztunnel terminates HBONE mutual TLS and no PeerAuthentication denies a peer with a principal"
	case arrivesHBONEWithTLS:
		out.Result, out.Why = scenario.ResultFail, why+"; the echo server behind ztunnel speaks plain HTTP: the client sidecar's TLS handshake fails (503)"
		if !tcp {
			out.Reason = "upstream-503"
		} else {
			out.Why += "; port is tcp: the connection is closed (reason not determinate)"
		}
	default:
		if deny, policy := p.ztunnelDenies(server, false, target); deny {
			// [ZPASS]
			out.Result, out.Why = scenario.ResultFail, why+"; the server's ztunnel accepts the connection, then "+policy+" denies it without a peer principal and closes it (reason not determinate: reset or end of stream)"
			return out
		}
		if arrives == arrivesTLS {
			out.Result, out.Why = scenario.ResultFail, why+"; ztunnel passes it to the echo server, which speaks plaintext gRPC: the handshake fails"
			return out
		}
		out.Result, out.Why = scenario.ResultPlaintext, why+"; no policy of the server's ztunnel denies a connection without a peer principal on port "+fmt.Sprint(target)+": plaintext passes through"
	}
	return out
}
