package oracle

import (
	"fmt"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// The rules below model Istio's sidecar data plane with enableAutoMtls on
// (Istio's default since 1.5; meshproof never turns it off). Each names its
// source: Istio's documentation and the istiod code that generates the
// Envoy configuration (links to istio/istio master, which 1.29 and 1.30
// match for the functions named).
//
// Sources, referred to below by their letter:
//
//	[PA]   PeerAuthentication reference,
//	       https://istio.io/latest/docs/reference/config/security/peer_authentication/
//	[AUTO] Auto mutual TLS, https://istio.io/latest/docs/concepts/security/#auto-mutual-tls
//	[DR]   DestinationRule ClientTLSSettings reference,
//	       https://istio.io/latest/docs/reference/config/networking/destination-rule/#ClientTLSSettings
//	[TASK] Authentication policy task (a client without sidecar against STRICT
//	       gets "000 command terminated with exit code 56", curl's
//	       "connection reset by peer"),
//	       https://istio.io/latest/docs/tasks/security/authentication/authn-policy/
//	[COMPOSE] ComposePeerAuthentication,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/security/authn/policy_applier.go
//	[NSMODE] AuthenticationPolicies.GetNamespaceMutualTLSMode,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/model/authentication.go
//	[INFER] PushContext.BestEffortInferServiceMTLSMode,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/model/push_context.go
//	[UPTLS] ClusterBuilder.buildUpstreamTLSSettings,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/cluster_builder.go
//	[TSM]  applyUpstreamTLSSettings (auto-detected mTLS becomes a transport
//	       socket match on the endpoint label tlsMode=istio),
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/cluster_tls.go
//	[EPCHK] mtlsChecker.checkMtlsEnabled (EDS clears tlsMode=istio on endpoints
//	       whose PeerAuthentication is DISABLE),
//	       https://github.com/istio/istio/blob/master/pilot/pkg/xds/endpoints/mtls_checker.go
//	[FCM]  getFilterChainMatchOptions (inbound filter chains per mode),
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/filterchain_options.go
//	[DRMERGE] PushContext.mergeDestinationRule,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/model/destination_rule.go
//	[PORTPA] buildInboundListeners asks the PeerAuthentication applier for
//	       each inbound port's TargetPort (authnBuilder.ForPort), and
//	       GetMutualTLSModeForPort looks portLevelMtls up by that endpoint
//	       port, https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/listener_inbound.go
//	       and .../pilot/pkg/security/authn/policy_applier.go
//	[TCPPROXY] a port whose protocol is TCP gets the network filter
//	       tcp_proxy (buildOutboundNetworkFilters / the inbound chains'
//	       TCP filters), no HTTP connection manager,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/networkfilter.go
//	[TCPCLOSE] Envoy's tcp_proxy keeps the downstream connection unread
//	       until its upstream connection is established (for TLS, its
//	       handshake done; Filter::onUpstreamEvent re-enables reads on
//	       Connected); an upstream that fails before then closes the
//	       downstream with its bytes unread, which the kernel sends as a
//	       reset, one closed after then closes it with FlushWrite, an EOF,
//	       https://github.com/envoyproxy/envoy/blob/main/source/common/tcp_proxy/tcp_proxy.cc
//	[DRLOOKUP] PushContext.destinationRule (client namespace, then the
//	       service's, then the root namespace),
//	       https://github.com/istio/istio/blob/master/pilot/pkg/model/push_context.go
//	[HOSTMATCH] MostSpecificHostMatch (exact host, then the most specific
//	       wildcard), https://github.com/istio/istio/blob/master/pilot/pkg/model/config.go
//	[GLOBALDR] Istio's reachability test "global mtls strict" applies a
//	       DestinationRule host "*" in the root namespace for the whole mesh,
//	       https://github.com/istio/istio/blob/master/tests/integration/security/testdata/reachability/global-dr.yaml.tmpl
//	[PORTTP] TrafficPolicy.portLevelSettings ("port level settings will
//	       override the destination-level settings"), in [DR] and in
//	       istio.io/api networking/v1alpha3/destination_rule.proto; applied
//	       per cluster port by GetPortLevelTrafficPolicy,
//	       https://github.com/istio/istio/blob/master/pilot/pkg/networking/util/util.go

// policies is one mtls step's policies, indexed the way istiod looks them up.
type policies struct {
	suite *scenario.Suite
	// mesh is the selector-less PeerAuthentication in Istio's root namespace.
	mesh *scenario.PeerAuthentication
	// namespace holds the selector-less PeerAuthentication of each namespace.
	namespace map[string]*scenario.PeerAuthentication
	// workload holds the PeerAuthentication selecting each workload.
	workload map[string]*scenario.PeerAuthentication
	// dr holds the client TLS settings towards each workload's service.
	dr map[string]*clientTLSRule
	// meshDR is the mesh-wide rule (host "*" in the root namespace), if any.
	meshDR *clientTLSRule
	// sidecarsHBONE says the sidecars accept HBONE from ztunnel: a suite
	// with ambient workloads runs Istio's ambient profile, which makes
	// them ([SCHBONE] in ambient.go).
	sidecarsHBONE bool
}

// clientTLSRule is the one DestinationRule meshproof writes for a workload's
// service (policy.ForMTLS merges a scenario's rules for a workload into one
// object): a destination-level mode and port-level modes.
type clientTLSRule struct {
	all   *scenario.DestinationRule         // the rule without a port, if any
	ports map[int]*scenario.DestinationRule // port-level rules by service port
}

func indexPolicies(s *scenario.Suite, m *scenario.MTLSStep) (*policies, error) {
	p := &policies{
		suite:     s,
		namespace: map[string]*scenario.PeerAuthentication{},
		workload:  map[string]*scenario.PeerAuthentication{},
		dr:        map[string]*clientTLSRule{},
		// Validation refuses ambient workloads on a cluster without the
		// ambient profile.
		sidecarsHBONE: s.AmbientWorkloads(),
	}
	if m == nil {
		return p, nil
	}
	var problems []string
	for i := range m.PeerAuthentications {
		pa := &m.PeerAuthentications[i]
		switch {
		// [PA]: "For mesh level, put the policy in root-namespace"; [COMPOSE]
		// classifies by selector and namespace, not by name, so a
		// namespace-scoped policy written for the root namespace is mesh-wide.
		case pa.Scope != scenario.ScopeWorkload && pa.Namespace == scenario.IstioRootNamespace:
			if p.mesh != nil {
				problems = append(problems, fmt.Sprintf("two mesh-wide PeerAuthentications (in %s)", scenario.IstioRootNamespace))
			}
			p.mesh = pa
		case pa.Scope != scenario.ScopeWorkload:
			if p.namespace[pa.Namespace] != nil {
				problems = append(problems, fmt.Sprintf("two namespace-wide PeerAuthentications in %s", pa.Namespace))
			}
			p.namespace[pa.Namespace] = pa
		// [PA]: "PeerAuthentication policies with workload selectors are
		// ignored when deployed in the root namespace."
		case pa.Namespace == scenario.IstioRootNamespace:
		default:
			if p.workload[pa.Workload] != nil {
				problems = append(problems, fmt.Sprintf("two PeerAuthentications select workload %s", pa.Workload))
			}
			p.workload[pa.Workload] = pa
		}
	}
	for i := range m.DestinationRules {
		dr := &m.DestinationRules[i]
		// [DRMERGE]: of several DestinationRule objects for one host only
		// the oldest one's trafficPolicy counts, so meshproof writes one
		// object per workload (policy.ForMTLS): the rule without a port as
		// its tls, the others as portLevelSettings. Within that one object
		// the outcome is fixed by [PORTTP]. Two rules for the same workload
		// and port cannot share an object; validation refuses them.
		var rule *clientTLSRule
		if dr.Scope == scenario.DRScopeMesh {
			// A mesh-wide rule is one object too (policy.ForMTLS): host
			// "*" in the root namespace.
			if p.meshDR == nil {
				p.meshDR = &clientTLSRule{ports: map[int]*scenario.DestinationRule{}}
			}
			rule = p.meshDR
		} else {
			rule = p.dr[dr.Workload]
			if rule == nil {
				rule = &clientTLSRule{ports: map[int]*scenario.DestinationRule{}}
				p.dr[dr.Workload] = rule
			}
		}
		first := rule.all
		if dr.Port != 0 {
			first = rule.ports[dr.Port]
		}
		if first != nil {
			problems = append(problems, fmt.Sprintf("two DestinationRules for %s (%s and %s): one object cannot hold both",
				drTarget(dr), drString(first), drString(dr)))
			continue
		}
		if dr.Port == 0 {
			rule.all = dr
		} else {
			rule.ports[dr.Port] = dr
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("cannot predict: %s", strings.Join(problems, "; "))
	}
	return p, nil
}

func drTarget(dr *scenario.DestinationRule) string {
	if dr.Scope == scenario.DRScopeMesh {
		return "the whole mesh"
	}
	return "workload " + dr.Workload
}

func drString(dr *scenario.DestinationRule) string {
	if dr.Port == 0 {
		return string(dr.Mode)
	}
	return fmt.Sprintf("%s on port %d", dr.Mode, dr.Port)
}

// isSet reports whether a mode decides anything; UNSET (or nothing) inherits.
func isSet(m scenario.MTLSMode) bool { return m != "" && m != scenario.ModeUnset }

// containerPort is the port the server's pod listens on behind a Service
// port: the Service's targetPort.
func containerPort(w *scenario.Workload, servicePort int) int {
	if sp := w.Port(servicePort); sp != nil {
		return sp.Target()
	}
	return servicePort
}

// serverMode is the PeerAuthentication mode the server's sidecar enforces on
// a container port, and the policy it comes from.
//
// [COMPOSE], as documented in [PA]: start from PERMISSIVE; a mesh-wide mode
// replaces it, then a namespace-wide mode, then the workload's mode; UNSET at
// any level inherits the level above. A port-level mode overrides the result
// for that port; a port-level UNSET inherits the workload's resulting mode.
// [PA] keys portLevelMtls by "the port number of the workload", and the
// inbound listener's chains are built per container port ([PORTPA]), so a
// request to Service port 80 forwarded to 8080 meets the mode of 8080.
func (p *policies) serverMode(w *scenario.Workload, port int) (scenario.MTLSMode, string) {
	mode, from := scenario.ModePermissive, "no PeerAuthentication: Istio's default PERMISSIVE"
	if p.mesh != nil && isSet(p.mesh.Mode) {
		mode, from = p.mesh.Mode, "mesh-wide "+string(p.mesh.Mode)
	}
	if ns := p.namespace[w.Namespace]; ns != nil && isSet(ns.Mode) {
		mode, from = ns.Mode, "namespace "+string(ns.Mode)
	}
	wl := p.workload[w.Name]
	if wl == nil {
		return mode, from
	}
	if isSet(wl.Mode) {
		mode, from = wl.Mode, "workload "+string(wl.Mode)
	}
	for _, pm := range wl.Ports {
		if pm.Port != port {
			continue
		}
		if isSet(pm.Mode) {
			return pm.Mode, fmt.Sprintf("port %d %s", port, pm.Mode)
		}
		return mode, fmt.Sprintf("port %d UNSET inherits %s", port, from)
	}
	return mode, from
}

// namespaceHint is the mode istiod assumes for every service of a namespace
// when it builds a client's cluster: [INFER] asks [NSMODE], which looks only
// at the namespace-wide policy (UNSET inheriting the mesh-wide one) and else
// the mesh-wide policy, and falls back to PERMISSIVE. Workload and port
// policies play no part here.
func (p *policies) namespaceHint(namespace string) scenario.MTLSMode {
	global := scenario.MTLSMode("")
	if p.mesh != nil && isSet(p.mesh.Mode) {
		global = p.mesh.Mode
	}
	if ns := p.namespace[namespace]; ns != nil && isSet(ns.Mode) {
		return ns.Mode
	}
	if global != "" {
		return global
	}
	return scenario.ModePermissive
}

// clientTLS is the client-side TLS mode a DestinationRule sets towards a
// server port, if any.
//
// [DRLOOKUP]: a client takes the DestinationRules for the service's host
// from its own namespace, else from the service's namespace, else from the
// root namespace, stopping at the first namespace that has one, and within
// a namespace the exact host before a wildcard ([HOSTMATCH]). meshproof
// writes a workload's rule in the workload's namespace for its exact host
// and the mesh-wide rule for "*" in the root namespace, and no fixture lives
// in the root namespace, so the workload's rule, when there is one, is the
// only rule: the mesh-wide one does not fill in the ports the workload's
// rule leaves unset (rules of different namespaces are never merged,
// [DRMERGE] merges only within one namespace).
//
// [PORTTP]: within the rule chosen, a port-level setting for the port wins
// over the rule's destination-level tls on that port (and only there);
// [EPCHK] trafficPolicyTLSModeForPort reads it the same way.
func (p *policies) clientTLS(server *scenario.Workload, port int) (mode scenario.TLSMode, why string, ok bool) {
	rule, what := p.dr[server.Name], "DestinationRule"
	if rule == nil {
		rule, what = p.meshDR, "mesh-wide DestinationRule"
	}
	if rule == nil {
		return "", "", false
	}
	if dr := rule.ports[port]; dr != nil {
		return dr.Mode, fmt.Sprintf("%s port %d %s", what, port, dr.Mode), true
	}
	if rule.all != nil {
		return rule.all.Mode, what + " " + string(rule.all.Mode), true
	}
	// A rule for the host without TLS settings for this port: its
	// trafficPolicy has no tls, so [UPTLS] falls back to auto mTLS.
	return "", "", false
}

// wire is what a client puts on the wire towards a server port.
type wire int

const (
	sendsPlaintext wire = iota
	sendsIstioMTLS
	// sendsOneWayTLS is a DestinationRule SIMPLE: TLS without a client
	// certificate or Istio's ALPN.
	sendsOneWayTLS
)

// sends decides what the client puts on the wire towards the server port:
// Istio mutual TLS, one-way TLS or plaintext.
func (p *policies) sends(client, server *scenario.Workload, port int) (wire, string) {
	// Without a sidecar nothing wraps the application's request, and the
	// echo probe speaks plain HTTP. [AUTO]: auto mTLS is a client sidecar
	// feature.
	if !client.InMesh() {
		return sendsPlaintext, "client without sidecar sends plaintext"
	}
	// [UPTLS]: a DestinationRule's tls is used as it is (userSupplied):
	// DISABLE builds no TLS at all, ISTIO_MUTUAL always originates Istio
	// mTLS, whatever the server runs. [DR] "ISTIO_MUTUAL ... uses
	// Istio-provisioned certificates for mutual TLS".
	if mode, rule, ok := p.clientTLS(server, port); ok {
		switch mode {
		case scenario.TLSIstioMutual:
			return sendsIstioMTLS, rule + ": client sidecar sends mTLS"
		case scenario.TLSSimple:
			// [DR] SIMPLE: "Originate a TLS connection to the upstream
			// endpoint"; [UPTLS] builds it from the rule as given, without
			// Istio's certificate or ALPN.
			return sendsOneWayTLS, rule + ": client sidecar originates one-way TLS (no client certificate)"
		}
		return sendsPlaintext, rule + ": client sidecar sends plaintext"
	}
	// [UPTLS]: without a DestinationRule, a cluster whose service mode
	// ([INFER], namespace or mesh only) is DISABLE gets no TLS at all, even
	// if a workload or port policy of the server says STRICT.
	if p.namespaceHint(server.Namespace) == scenario.ModeDisable {
		return sendsPlaintext, "auto mTLS: namespace (or mesh) DISABLE leaves the client's cluster without TLS"
	}
	// [TSM] + [AUTO]: otherwise mTLS is sent only to endpoints labelled
	// tlsMode=istio, the label the sidecar injector puts on pods with a
	// sidecar; plaintext to the others.
	if !server.InMesh() {
		return sendsPlaintext, "auto mTLS: server has no sidecar, client sidecar sends plaintext"
	}
	// [EPCHK]: EDS drops that label from endpoints whose own
	// PeerAuthentication (workload or port level included, the port being
	// the endpoint's, i.e. the container port) is DISABLE, so auto mTLS
	// honours the server's DISABLE.
	if mode, from := p.serverMode(server, containerPort(server, port)); mode == scenario.ModeDisable {
		return sendsPlaintext, "auto mTLS: server's " + from + ", client sidecar sends plaintext"
	}
	return sendsIstioMTLS, "auto mTLS: server has a sidecar, client sidecar sends mTLS"
}

// predict combines what the client sends with what the server accepts.
func (p *policies) predict(client, server *scenario.Workload, port int) Prediction {
	out := p.predictHTTP(client, server, port)
	if sp := server.Port(port); sp != nil && sp.Protocol == scenario.ProtocolTCP && out.Reason != "" {
		// [TCPPROXY]: on a tcp port the sidecars run Envoy's tcp_proxy,
		// which has no HTTP response to give: where an HTTP client gets
		// the client sidecar's 503, a TCP client sees its connection
		// closed, [TCPCLOSE] a reset when the upstream failed before it
		// was established (a TLS handshake the server side does not
		// finish) and an EOF when it closed after (plaintext a STRICT
		// sidecar resets once it has read it), and a reset by the server's
		// sidecar may equally arrive as EOF. The result stands, the reason
		// is left open.
		out.Why += "; port " + fmt.Sprint(port) + " is tcp: no HTTP status, the connection is closed (reason not determinate)"
		out.Reason = ""
	}
	return out
}

// predictHTTP is predict for an HTTP port.
func (p *policies) predictHTTP(client, server *scenario.Workload, port int) Prediction {
	out := Prediction{From: client.Name, To: server.Name, Port: port}
	sent, why := p.sends(client, server, port)
	if sent == sendsOneWayTLS {
		// Nothing on the server side terminates it. [FCM]: a STRICT
		// sidecar's chains demand a client certificate; PERMISSIVE has a
		// chain for TLS without Istio's ALPN that proxies it as TCP to the
		// application ("sent over one-way TLS ... treat the traffic as just
		// another TCP proxy"), DISABLE proxies every connection as it is;
		// without a sidecar the application gets it directly. The echo
		// server speaks plain HTTP, so the client sidecar's handshake fails
		// and it answers its client with a local 503.
		out.Result, out.Reason = scenario.ResultFail, "upstream-503"
		out.Why = why + "; no server sidecar terminates one-way TLS and the echo server speaks plain HTTP: the handshake fails (503)"
		return out
	}
	result, reason, accepted := p.accepts(client, server, port, sent == sendsIstioMTLS)
	out.Result, out.Reason, out.Why = result, reason, why+"; "+accepted
	return out
}

// accepts decides what the server side makes of it.
func (p *policies) accepts(client, server *scenario.Workload, port int, mtls bool) (scenario.Result, string, string) {
	if !server.InMesh() {
		// [PA] defines what a sidecar accepts: a workload without one
		// serves whatever reaches the application. The echo server speaks
		// plain HTTP: a TLS ClientHello fails the client sidecar's
		// handshake, and Envoy answers its client with a local 503
		// "upstream connect error or disconnect/reset before headers".
		if mtls {
			return scenario.ResultFail, "upstream-503", "server without sidecar cannot terminate mTLS: the client sidecar's TLS handshake fails (503)"
		}
		return scenario.ResultPlaintext, "", "server without sidecar serves plaintext"
	}
	mode, from := p.serverMode(server, containerPort(server, port))
	switch {
	case mode == scenario.ModeStrict && !mtls:
		// [FCM]: STRICT inbound filter chains match only transport
		// protocol tls, so a plaintext connection matches none and the
		// sidecar closes it.
		if client.InMesh() {
			// The client's own sidecar sees its upstream connection closed
			// and answers the probe with its local 503.
			return scenario.ResultFail, "upstream-503", "server's " + from + " rejects plaintext: the client sidecar answers 503"
		}
		// [TASK]: the client without sidecar sees the connection reset.
		return scenario.ResultFail, "reset", "server's " + from + " rejects plaintext: the connection is reset"
	case mode == scenario.ModeDisable && mtls:
		// [FCM]: DISABLE inbound filter chains match only transport
		// protocol raw_buffer, so a TLS connection matches none and is
		// closed during the client sidecar's handshake: 503.
		return scenario.ResultFail, "upstream-503", "server's " + from + " does not terminate mTLS: the client sidecar's handshake fails (503)"
	case mtls:
		// [PA]: STRICT and PERMISSIVE accept mutual TLS.
		return scenario.ResultMTLS, "", "server's " + from + " accepts mTLS"
	default:
		// [PA]: PERMISSIVE and DISABLE accept plaintext.
		return scenario.ResultPlaintext, "", "server's " + from + " accepts plaintext"
	}
}
