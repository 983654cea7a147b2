package envoy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// Protocol is what the application speaks on a connection.
type Protocol string

// The protocols of the probes.
const (
	HTTP1 Protocol = "http/1.1"
	// GRPC is HTTP/2 over cleartext (prior knowledge), as grpc-go dials.
	GRPC Protocol = "grpc"
	// TCP is bytes that are not HTTP.
	TCP Protocol = "tcp"
)

func (p Protocol) http() bool { return p == HTTP1 || p == GRPC }

// firstBytes is what the HTTP inspector makes of the protocol's first bytes.
func (p Protocol) firstBytes() string {
	switch p {
	case HTTP1:
		return "http/1.1"
	case GRPC:
		return "h2c"
	}
	return ""
}

// Proxy is one Envoy sidecar: the configuration it holds and the secrets
// istio-agent gives it.
type Proxy struct {
	// Name says which sidecar, e.g. the pod's namespace/name.
	Name     string
	Config   *xds.Snapshot
	Identity *Identity
}

// Host is what answers at one pod address: a sidecar that intercepts its
// traffic (nil: none), and the application's ports.
type Host struct {
	Name    string
	IP      netip.Addr
	Sidecar *Proxy
	// Listens are the protocols the application answers on a port, none
	// when nothing listens there.
	Listens func(port uint16) []Protocol
}

// Network is what the evaluator asks of the cluster: who is at an
// address, and where kube-proxy sends a Service's virtual IP.
type Network interface {
	Host(ip netip.Addr) *Host
	// KubeProxy is the endpoint (pod IP and target port) kube-proxy
	// forwards a connection to a Service's cluster IP and port to; false
	// when the address is no Service's or the Service has no endpoint.
	KubeProxy(vip netip.AddrPort) (netip.AddrPort, bool)
}

// Request is one connection an application opens, and for HTTP and gRPC
// the one request it sends.
type Request struct {
	Client *Host
	// Destination is the address the application dials: a Service's
	// cluster IP and port.
	Destination netip.AddrPort
	Protocol    Protocol
	// Authority and Path of an HTTP request (Host header, :authority).
	Authority, Path string
	// Pick is the load balancer: it chooses among a cluster's healthy
	// endpoints, in EDS order (default the first). The rehearsal picks
	// the pod kube-proxy would, so that both paths meet the same pod.
	Pick func([]netip.AddrPort) int
}

// Kind is how a request ended.
type Kind string

// The kinds of outcomes.
const (
	// Delivered: the server's application received the request (over
	// Envoy's mutual TLS when Outcome.MTLS is set).
	Delivered Kind = "delivered"
	// LocalReply: the client's sidecar answered the request itself.
	LocalReply Kind = "local-reply"
	// Closed: the client's connection was closed (reset, or EOF).
	Closed Kind = "closed"
	// Refused: nothing accepted the client's connection.
	Refused Kind = "refused"
)

// Outcome is what the client and the server's application see.
type Outcome struct {
	Kind Kind
	// Server is the host whose application received the request, and the
	// port it received it on (Delivered).
	Server     *Host
	ServerPort uint16
	// MTLS is the mutual TLS session the server's sidecar terminated, nil
	// when the request reached the application without one.
	MTLS *Session
	// XFCC is the x-forwarded-client-cert header the application
	// received, "" for none.
	XFCC string
	// Status and Body are a LocalReply's.
	Status int
	Body   string
	// Reset says a Closed connection was reset rather than ended (EOF).
	Reset bool
	// Why says what made the outcome, in Envoy's words where it has some
	// (a TLS error, a reset reason).
	Why string
	// TCPCount is the connection the server sidecar's istio.stats filter
	// counted, nil when none did.
	TCPCount *TCPCount
	Trace    Trace
}

// Session is a mutual TLS connection between two sidecars.
type Session struct {
	ClientID, ServerID     string
	ClientLeaf, ServerLeaf *x509.Certificate
	ALPN                   string
}

// TCPCount is one connection counted by the server sidecar's istio.stats
// network filter ([ISTIO-STATS]).
type TCPCount struct {
	Proxy *Proxy
	// Policy is connection_security_policy: mutual_tls or none.
	Policy                                string
	SourcePrincipal, DestinationPrincipal string
}

// The values of TCPCount.Policy.
const (
	PolicyMutualTLS  = "mutual_tls"
	PolicyNone       = "none"
	unknownPrincipal = "unknown"
)

// Evaluate decides req: through the client's sidecar (when it has one),
// the cluster's network, and the server's sidecar (when it has one), to
// the server's application or the error the client sees.
func Evaluate(nw Network, req Request) (Outcome, error) {
	e := &evaluation{nw: nw, req: req}
	if req.Pick == nil {
		e.req.Pick = func([]netip.AddrPort) int { return 0 }
	}
	var out Outcome
	var err error
	if req.Client.Sidecar != nil {
		out, err = e.outbound(req.Client.Sidecar)
	} else {
		out, err = e.direct(req.Destination)
	}
	out.Trace = e.trace
	return out, err
}

// evaluation is one request's walk through the configuration.
type evaluation struct {
	nw    Network
	req   Request
	trace Trace
}

func (e *evaluation) step(side, what, name, why string) {
	e.trace = append(e.trace, Step{Side: side, What: what, Name: name, Why: why})
}

// direct is a connection without a client sidecar: kube-proxy forwards it
// to an endpoint of the Service, whose sidecar (if any) intercepts it.
func (e *evaluation) direct(vip netip.AddrPort) (Outcome, error) {
	ep, ok := e.nw.KubeProxy(vip)
	if !ok {
		e.step("client", "kube-proxy", vip.String(), "no endpoint for the Service: the connection is refused")
		return Outcome{Kind: Refused, Why: "no endpoint behind " + vip.String()}, nil
	}
	e.step("client", "kube-proxy", ep.String(), "no client sidecar: the connection goes to an endpoint of the Service as it is")
	res, err := e.upstream(ep, nil, nil, nil)
	if err != nil {
		return Outcome{}, err
	}
	switch {
	case res.refused:
		return Outcome{Kind: Refused, Why: res.why}, nil
	case res.closed:
		// The server's sidecar closed a connection whose bytes it had not
		// read: the client's kernel sees a reset ([TASK] in the oracle's
		// sources, Istio's authentication policy task).
		return Outcome{Kind: Closed, Reset: true, Why: res.why}, nil
	}
	return res.delivered(), nil
}

// outbound follows the request through the client's sidecar.
func (e *evaluation) outbound(c *Proxy) (Outcome, error) {
	side := "client " + c.Name
	l, why, err := outboundListener(c.Config, e.req.Destination)
	if err != nil {
		return Outcome{}, err
	}
	e.step(side, "listener", l.GetName(), why)
	conn := Connection{Destination: e.req.Destination, Source: netip.AddrPortFrom(e.req.Client.IP, 40000), FirstBytes: e.req.Protocol.firstBytes()}
	d, err := inspect(l, conn)
	if err != nil {
		return Outcome{}, err
	}
	fc, err := matchFilterChain(l, conn, d)
	if err != nil {
		return Outcome{}, err
	}
	if fc == nil {
		e.step(side, "filter chain", "", fmt.Sprintf("no filter chain of %s matches (transport %s, ALPN %v) and it has no default: the connection is closed [DEFAULT-CHAIN]", l.GetName(), d.transport, d.alpn))
		return Outcome{Kind: Closed, Reset: true, Why: "no filter chain matched in the client's sidecar"}, nil
	}
	e.step(side, "filter chain", chainName(fc), fmt.Sprintf("matched transport %s, ALPN %v [FCM]", d.transport, d.alpn))
	term, err := terminalFilter(fc)
	if err != nil {
		return Outcome{}, err
	}
	switch t := term.(type) {
	case *hcmv3.HttpConnectionManager:
		if !e.req.Protocol.http() {
			return Outcome{}, undecidable("a %s connection meets the HTTP connection manager of %s", e.req.Protocol, chainName(fc))
		}
		return e.outboundHTTP(c, side, t)
	case *tcpv3.TcpProxy:
		cluster, err := tcpCluster(t)
		if err != nil {
			return Outcome{}, err
		}
		e.step(side, "tcp_proxy", t.GetStatPrefix(), "cluster "+cluster+" [TCP-PROXY]")
		return e.outboundCluster(c, side, cluster, nil, nil)
	}
	return Outcome{}, undecidable("filter chain %s ends in %T", chainName(fc), term)
}

// outboundListener is the listener that takes a redirected connection to
// dst ([LISTENER-ORIGDST], [LISTENER-ADDR]): the one bound to dst, else the
// wildcard one on dst's port, else the listener that received it (the one
// using the original destination).
func outboundListener(cfg *xds.Snapshot, dst netip.AddrPort) (*listenerv3.Listener, string, error) {
	var receiver, exact, wildcard *listenerv3.Listener
	for _, l := range sortedListeners(cfg) {
		sa := l.GetAddress().GetSocketAddress()
		if l.GetUseOriginalDst().GetValue() {
			receiver = l
		}
		if sa.GetPortValue() != uint32(dst.Port()) {
			continue
		}
		switch a, err := netip.ParseAddr(sa.GetAddress()); {
		case err != nil:
		case a == dst.Addr():
			exact = l
		case a.IsUnspecified():
			wildcard = l
		}
	}
	switch {
	case receiver == nil:
		return nil, "", undecidable("no listener uses the original destination (Istio's virtualOutbound): the configuration held (snapshot %d) has %d listeners", cfg.Seq, len(cfg.Listeners))
	case exact != nil:
		return exact, "bound to the original destination " + dst.String() + " [LISTENER-ORIGDST]", nil
	case wildcard != nil:
		return wildcard, fmt.Sprintf("the wildcard listener of port %d [LISTENER-ORIGDST]", dst.Port()), nil
	}
	return receiver, "no listener for " + dst.String() + ": the receiving listener handles it [LISTENER-ORIGDST]", nil
}

func sortedListeners(cfg *xds.Snapshot) []*listenerv3.Listener {
	names := make([]string, 0, len(cfg.Listeners))
	for n := range cfg.Listeners {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]*listenerv3.Listener, 0, len(names))
	for _, n := range names {
		out = append(out, cfg.Listeners[n])
	}
	return out
}

// chainName is a filter chain's name or, for an unnamed one (Istio names
// its inbound chains, not its outbound ones), its match.
func chainName(fc *listenerv3.FilterChain) string {
	if fc.GetName() != "" {
		return fc.GetName()
	}
	m := fc.GetFilterChainMatch()
	var parts []string
	if t := m.GetTransportProtocol(); t != "" {
		parts = append(parts, t)
	}
	if a := m.GetApplicationProtocols(); len(a) > 0 {
		parts = append(parts, strings.Join(a, ","))
	}
	if p := m.GetDestinationPort(); p != nil {
		parts = append(parts, fmt.Sprintf("port %d", p.GetValue()))
	}
	if len(parts) == 0 {
		return "[any]"
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// outboundHTTP routes an HTTP request through the client's connection
// manager.
func (e *evaluation) outboundHTTP(c *Proxy, side string, hcm *hcmv3.HttpConnectionManager) (Outcome, error) {
	if err := httpFiltersDecidable(hcm, side); err != nil {
		return Outcome{}, err
	}
	rc, rcName, err := c.routeConfig(hcm)
	if err != nil {
		return Outcome{}, err
	}
	vh := virtualHost(rc, hcm, e.req.Authority)
	if vh == nil {
		e.step(side, "route", rcName, "no virtual host for "+e.req.Authority+" [VHOST]")
		return Outcome{Kind: LocalReply, Status: 404, Why: "no route (NR)"}, nil
	}
	r, err := matchRoute(vh, cmpOr(e.req.Path, "/"))
	if err != nil {
		return Outcome{}, err
	}
	if r == nil {
		e.step(side, "route", rcName+"/"+vh.GetName(), "no route for the path [ROUTE]")
		return Outcome{Kind: LocalReply, Status: 404, Why: "no route (NR)"}, nil
	}
	if err := routeFilterConfigs(vh, r); err != nil {
		return Outcome{}, err
	}
	if dr := r.GetDirectResponse(); dr != nil {
		e.step(side, "route", rcName+"/"+vh.GetName()+"/"+r.GetName(), fmt.Sprintf("direct response %d", dr.GetStatus()))
		return Outcome{Kind: LocalReply, Status: int(dr.GetStatus()), Body: dr.GetBody().GetInlineString(), Why: "direct response"}, nil
	}
	if r.GetRoute() == nil {
		return Outcome{}, undecidable("route %q of %s is neither a route nor a direct response", r.GetName(), vh.GetName())
	}
	cluster, err := routeCluster(r)
	if err != nil {
		return Outcome{}, err
	}
	e.step(side, "route", rcName+"/"+vh.GetName()+"/"+r.GetName(), "cluster "+cluster+" [VHOST] [ROUTE]")
	retry := r.GetRoute().GetRetryPolicy()
	if retry == nil {
		retry = vh.GetRetryPolicy()
	}
	return e.outboundCluster(c, side, cluster, hcm, retry)
}

// outboundCluster connects the client's sidecar to an endpoint of cluster
// and follows the connection to the server. An HTTP request whose route
// retries connect failures (retry before its upstream connection is
// established: refused, or its TLS handshake failed) is retried on another
// endpoint, as Envoy's router does ([RETRY]).
func (e *evaluation) outboundCluster(c *Proxy, side, name string, hcm *hcmv3.HttpConnectionManager, retry *routev3.RetryPolicy) (Outcome, error) {
	cl := c.Config.Clusters[name]
	if cl == nil {
		e.step(side, "cluster", name, "not in the configuration held")
		return e.clientFailure(hcm, "no cluster "+name+" (NC)", false)
	}
	var eps []netip.AddrPort
	var metas []*corev3.Metadata
	first := 0
	switch cl.GetType() {
	case clusterv3.Cluster_ORIGINAL_DST:
		// [ORIGDST-CLUSTER]: the Service's cluster IP, which kube-proxy
		// forwards as for a client without sidecar.
		target, ok := e.nw.KubeProxy(e.req.Destination)
		if !ok {
			e.step(side, "cluster", name, "original destination "+e.req.Destination.String()+": no endpoint behind it")
			return e.clientFailure(hcm, "connection refused", false)
		}
		e.step(side, "cluster", name, "original destination "+e.req.Destination.String()+", forwarded by kube-proxy to "+target.String()+" [ORIGDST-CLUSTER]")
		eps, metas = []netip.AddrPort{target}, []*corev3.Metadata{nil}
	case clusterv3.Cluster_EDS, clusterv3.Cluster_STATIC:
		cla := cl.GetLoadAssignment()
		if cl.GetType() == clusterv3.Cluster_EDS {
			svc := cl.GetEdsClusterConfig().GetServiceName()
			if svc == "" {
				svc = name
			}
			cla = c.Config.Endpoints[svc]
		}
		eps, metas = healthyEndpoints(cla)
		if len(eps) == 0 {
			e.step(side, "cluster", name, "no healthy endpoint [LB-HEALTH]")
			if hcm != nil {
				return Outcome{Kind: LocalReply, Status: 503, Body: "no healthy upstream", Why: "no healthy upstream (UH)"}, nil
			}
			return Outcome{Kind: Closed, Reset: true, Why: "no healthy upstream (UH)"}, nil
		}
		if first = e.req.Pick(eps); first < 0 || first >= len(eps) {
			first = 0
		}
	default:
		return Outcome{}, undecidable("cluster %s of type %s", name, cl.GetType())
	}
	retries, err := connectRetries(retry, len(eps))
	if err != nil {
		return Outcome{}, err
	}
	var out Outcome
	for attempt := 0; attempt <= retries; attempt++ {
		i := (first + attempt) % len(eps)
		why := fmt.Sprintf("endpoint %s of %d healthy [LB-HEALTH]", eps[i], len(eps))
		if attempt > 0 {
			why = fmt.Sprintf("retry %d on endpoint %s, not tried before (retry_on connect-failure, previous_hosts) [RETRY]", attempt, eps[i])
		}
		if cl.GetType() != clusterv3.Cluster_ORIGINAL_DST {
			e.step(side, "cluster", name, why)
		}
		var connectFailed bool
		out, connectFailed, err = e.attempt(c, side, cl, hcm, eps[i], metas[i])
		if err != nil || !connectFailed || hcm == nil {
			return out, err
		}
	}
	return out, nil
}

// connectRetries is how many times a route's retry policy retries a
// request whose upstream connection failed, on another endpoint each time
// (there are n): its num_retries (1 when unset) when retry_on includes
// connect-failure (or 5xx or gateway-error, which include it) and the
// previous_hosts predicate makes each retry pick an endpoint not tried
// yet; no retries without a policy. Retries that may land on an endpoint
// already tried (no previous_hosts predicate, more than one endpoint)
// depend on the load balancer's state: undecidable.
func connectRetries(p *routev3.RetryPolicy, n int) (int, error) {
	if p == nil {
		return 0, nil
	}
	on := false
	for _, c := range strings.Split(p.GetRetryOn(), ",") {
		switch strings.TrimSpace(c) {
		case "connect-failure", "5xx", "gateway-error":
			on = true
		}
	}
	if !on || n == 1 {
		return 0, nil
	}
	retries := 1
	if p.GetNumRetries() != nil {
		retries = int(p.GetNumRetries().GetValue())
	}
	previousHosts := false
	for _, pr := range p.GetRetryHostPredicate() {
		if pr.GetTypedConfig().GetTypeUrl() == previousHostsType {
			previousHosts = true
		}
	}
	if !previousHosts {
		return 0, undecidable("a retry policy (%s) without the previous_hosts predicate over %d endpoints: which endpoint a retry reaches depends on the load balancer's state", p.GetRetryOn(), n)
	}
	return min(retries, n-1), nil
}

const previousHostsType = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

// attempt is one upstream connection of the client's sidecar to endpoint
// ep of cluster cl: connectFailed says the connection failed before it was
// established (refused, or its TLS handshake failed), which a retry policy
// may retry.
func (e *evaluation) attempt(c *Proxy, side string, cl *clusterv3.Cluster, hcm *hcmv3.HttpConnectionManager, ep netip.AddrPort, epMeta *corev3.Metadata) (Outcome, bool, error) {
	ts, tsName, err := pickTransportSocket(cl, epMeta)
	if err != nil {
		return Outcome{}, false, err
	}
	tlsCtx, err := transportSocket(ts)
	if err != nil {
		return Outcome{}, false, err
	}
	alpnWhy := ""
	if tlsCtx == nil {
		e.step(side, "transport socket", tsName, "plaintext [TSM]")
	} else {
		if hcm != nil {
			alpn, why, err := alpnOverride(cl, hcm, e.req.Protocol)
			if err != nil {
				return Outcome{}, false, err
			}
			if alpn != nil {
				tlsCtx.alpn = alpn
				alpnWhy = "; " + why
			}
		}
		e.step(side, "transport socket", tsName, fmt.Sprintf("TLS with certificate %q, roots %q, ALPN %v%s, SNI %q [TSM]", tlsCtx.certificate, tlsCtx.validation, tlsCtx.alpn, alpnWhy, tlsCtx.sni))
	}
	res, err := e.upstream(ep, c, tlsCtx, hcm)
	if err != nil {
		return Outcome{}, false, err
	}
	switch {
	case res.refused:
		out, err := e.clientFailure(hcm, "connection failure, transport failure reason: delayed connect error: Connection refused", true)
		return out, true, err
	case res.tlsFailure != "":
		out, err := e.clientFailure(hcm, "remote connection failure, transport failure reason: TLS_error: "+res.tlsFailure, true)
		return out, true, err
	case res.closed:
		out, err := e.clientFailure(hcm, "connection termination", false)
		return out, false, err
	}
	return res.delivered(), false, nil
}

// clientFailure is what the client sees when its sidecar could not get a
// response upstream: for HTTP the local reply 503 ([LOCAL-REPLY]); for TCP
// its connection closed, reset when the upstream failed before it was
// established (tcp_proxy had not read the client's bytes yet), else EOF.
func (e *evaluation) clientFailure(hcm *hcmv3.HttpConnectionManager, reason string, beforeEstablished bool) (Outcome, error) {
	if hcm != nil {
		return Outcome{Kind: LocalReply, Status: 503, Body: "upstream connect error or disconnect/reset before headers. reset reason: " + reason, Why: reason}, nil
	}
	return Outcome{Kind: Closed, Reset: beforeEstablished, Why: reason}, nil
}

// healthyEndpoints are a load assignment's endpoints the load balancer may
// pick, with each endpoint's metadata.
func healthyEndpoints(cla *endpointv3.ClusterLoadAssignment) ([]netip.AddrPort, []*corev3.Metadata) {
	var eps []netip.AddrPort
	var metas []*corev3.Metadata
	for _, loc := range cla.GetEndpoints() {
		for _, lb := range loc.GetLbEndpoints() {
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			default:
				continue
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			a, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				continue
			}
			eps = append(eps, netip.AddrPortFrom(a, uint16(sa.GetPortValue())))
			metas = append(metas, lb.GetMetadata())
		}
	}
	return eps, metas
}

// pickTransportSocket is the transport socket of a cluster for an
// endpoint ([TSM]): the first transport_socket_matches entry whose match
// the endpoint's envoy.transport_socket_match metadata holds, else the
// cluster's transport_socket.
func pickTransportSocket(cl *clusterv3.Cluster, meta *corev3.Metadata) (*corev3.TransportSocket, string, error) {
	if cl.GetTransportSocketMatcher() != nil {
		return nil, "", undecidable("cluster %s selects transport sockets with a matcher", cl.GetName())
	}
	epMeta := meta.GetFilterMetadata()["envoy.transport_socket_match"].GetFields()
	for _, m := range cl.GetTransportSocketMatches() {
		match := true
		for k, v := range m.GetMatch().GetFields() {
			got, ok := epMeta[k]
			if !ok || got.GetStringValue() != v.GetStringValue() || got.GetKind() == nil {
				match = false
				break
			}
		}
		if match {
			return m.GetTransportSocket(), m.GetName(), nil
		}
	}
	return cl.GetTransportSocket(), "transport_socket", nil
}

// alpnOverride is the ALPN Istio's istio.alpn filter sets for an HTTP
// request's upstream TLS ([ISTIO-ALPN]), nil when it sets none.
func alpnOverride(cl *clusterv3.Cluster, hcm *hcmv3.HttpConnectionManager, p Protocol) ([]string, string, error) {
	cfg, err := alpnFilter(hcm)
	if err != nil || cfg == nil {
		return nil, "", err
	}
	if cl.GetMetadata().GetFilterMetadata()["istio"].GetFields()["alpn_override"].GetStringValue() == "false" {
		return nil, "", nil
	}
	up, err := upstreamHTTP(cl, p)
	if err != nil {
		return nil, "", err
	}
	for _, o := range cfg.GetAlpnOverride() {
		if o.GetUpstreamProtocol().String() == up {
			return o.GetAlpnOverride(), "set by istio.alpn for an " + up + " upstream [ISTIO-ALPN]", nil
		}
	}
	return nil, "", nil
}

// upstreamHTTP is the HTTP version a cluster speaks upstream for a
// request of protocol p: its HttpProtocolOptions' explicit version, or the
// downstream's under use_downstream_protocol_config (HTTP/1.1 by default).
func upstreamHTTP(cl *clusterv3.Cluster, p Protocol) (string, error) {
	any := cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if any == nil {
		return "HTTP11", nil
	}
	opts, err := xds.Unpack[*httpv3.HttpProtocolOptions](any)
	if err != nil {
		return "", err
	}
	switch {
	case opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
		return "HTTP2", nil
	case opts.GetExplicitHttpConfig() != nil:
		return "HTTP11", nil
	case opts.GetUseDownstreamProtocolConfig() != nil:
		if p == GRPC && opts.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions() != nil {
			return "HTTP2", nil
		}
		return "HTTP11", nil
	}
	return "", undecidable("cluster %s negotiates its upstream HTTP version (auto_config)", cl.GetName())
}

// upstreamResult is what became of the connection a client (sidecar or
// not) opened to an endpoint.
type upstreamResult struct {
	refused bool
	// closed: the server side closed the connection (no filter chain, a
	// handshake it failed).
	closed bool
	// tlsFailure is why the client's TLS handshake failed.
	tlsFailure string
	why        string

	server     *Host
	serverPort uint16
	mtls       *Session
	xfcc       string
	tcpCount   *TCPCount
}

func (r upstreamResult) delivered() Outcome {
	return Outcome{Kind: Delivered, Server: r.server, ServerPort: r.serverPort, MTLS: r.mtls, XFCC: r.xfcc, TCPCount: r.tcpCount, Why: r.why}
}

// upstream opens a connection to ep from client (nil: no sidecar) with
// tlsCtx (nil: plaintext) and follows it into the server.
func (e *evaluation) upstream(ep netip.AddrPort, client *Proxy, tlsCtx *tlsContext, clientHCM *hcmv3.HttpConnectionManager) (upstreamResult, error) {
	h := e.nw.Host(ep.Addr())
	if h == nil {
		e.step("network", "endpoint", ep.String(), "no pod has this address: the connection is refused")
		return upstreamResult{refused: true, why: "nothing at " + ep.String()}, nil
	}
	var clientID *Identity
	if client != nil {
		clientID = client.Identity
	}
	if h.Sidecar == nil {
		return e.application(h, ep.Port(), tlsCtx, nil, "")
	}
	return e.inbound(h, ep, client, clientID, tlsCtx)
}

// application is the server's application receiving the connection
// directly (no sidecar, or the server sidecar's inbound cluster).
func (e *evaluation) application(h *Host, port uint16, tlsCtx *tlsContext, mtls *Session, xfcc string) (upstreamResult, error) {
	protos := h.Listens(port)
	if len(protos) == 0 {
		e.step("server "+h.Name, "application", fmt.Sprint(port), "nothing listens: connection refused")
		return upstreamResult{refused: true, why: fmt.Sprintf("nothing listens on %s port %d", h.Name, port)}, nil
	}
	if tlsCtx != nil {
		// The application speaks plaintext: the client's ClientHello gets
		// an HTTP error or nothing back, not a ServerHello.
		e.step("server "+h.Name, "application", fmt.Sprint(port), fmt.Sprintf("speaks %v in plaintext: the client's TLS handshake fails", protos))
		return upstreamResult{tlsFailure: "WRONG_VERSION_NUMBER (the peer does not speak TLS)", why: "TLS to a plaintext application"}, nil
	}
	if !slices.Contains(protos, e.req.Protocol) {
		return upstreamResult{}, undecidable("%s sent to %s port %d, where the application speaks %v", e.req.Protocol, h.Name, port, protos)
	}
	e.step("server "+h.Name, "application", fmt.Sprint(port), "receives the request")
	return upstreamResult{server: h, serverPort: port, mtls: mtls, xfcc: xfcc}, nil
}

// inbound follows a connection into the server's sidecar: iptables
// redirects it to the inbound listener (Istio's virtualInbound), whose
// listener filters and filter chains decide what becomes of it.
func (e *evaluation) inbound(h *Host, ep netip.AddrPort, client *Proxy, clientID *Identity, tlsCtx *tlsContext) (upstreamResult, error) {
	s := h.Sidecar
	side := "server " + s.Name
	if s.Config == nil {
		return upstreamResult{}, undecidable("%s holds no configuration", s.Name)
	}
	l := s.Config.Listeners[virtualInbound]
	if l == nil {
		return upstreamResult{}, undecidable("%s holds no %s listener (snapshot %d)", s.Name, virtualInbound, s.Config.Seq)
	}
	e.step(side, "listener", l.GetName(), "inbound connections are redirected to it")
	src := netip.AddrPortFrom(e.req.Client.IP, 40000)
	conn := Connection{Destination: ep, Source: src}
	if tlsCtx != nil {
		conn.TLS = &ClientHello{SNI: tlsCtx.sni, ALPN: tlsCtx.alpn}
	} else {
		conn.FirstBytes = e.req.Protocol.firstBytes()
	}
	d, err := inspect(l, conn)
	if err != nil {
		return upstreamResult{}, err
	}
	fc, err := matchFilterChain(l, conn, d)
	if err != nil {
		return upstreamResult{}, err
	}
	if fc == nil {
		e.step(side, "filter chain", "", fmt.Sprintf("none matches port %d, transport %s, ALPN %v, and there is no default: the connection is closed [DEFAULT-CHAIN]", ep.Port(), d.transport, d.alpn))
		if tlsCtx != nil {
			return upstreamResult{tlsFailure: "connection closed during the handshake (no filter chain of the server's sidecar matched)", why: "no server filter chain"}, nil
		}
		return upstreamResult{closed: true, why: "no filter chain of the server's sidecar matched"}, nil
	}
	serverTLS, err := transportSocket(fc.GetTransportSocket())
	if err != nil {
		return upstreamResult{}, err
	}
	what := "plaintext"
	if serverTLS != nil {
		what = fmt.Sprintf("TLS, client certificate required: %v", serverTLS.requireClientCert)
	}
	e.step(side, "filter chain", chainName(fc), fmt.Sprintf("port %d, transport %s, ALPN %v matched [FCM]; %s [DOWNSTREAM-TLS]", ep.Port(), d.transport, d.alpn, what))

	var mtls *Session
	switch {
	case serverTLS != nil && tlsCtx == nil:
		// A TLS server reading a plaintext request fails its handshake and
		// closes the connection.
		e.step(side, "handshake", "", "plaintext into a TLS filter chain: the handshake fails, the connection is closed")
		return upstreamResult{closed: true, why: "plaintext to a TLS filter chain"}, nil
	case serverTLS != nil:
		sess, failure, err := handshake(tlsCtx, clientID, serverTLS, s.Identity)
		if err != nil {
			return upstreamResult{}, err
		}
		if failure != "" {
			e.step(side, "handshake", "", failure)
			return upstreamResult{tlsFailure: failure, why: "TLS handshake"}, nil
		}
		e.step(side, "handshake", "", fmt.Sprintf("mutual TLS: client %s, server %s", cmpOr(sess.ClientID, "(no certificate)"), sess.ServerID))
		if sess.ClientLeaf != nil {
			mtls = sess
		}
	case tlsCtx != nil:
		// The chain passes the TLS bytes on without terminating them.
		e.step(side, "handshake", "", "the chain does not terminate TLS: the client's handshake meets what is behind it")
	}

	term, err := terminalFilter(fc)
	if err != nil {
		return upstreamResult{}, err
	}
	count := statsCount(fc, s, mtls)
	switch t := term.(type) {
	case *tcpv3.TcpProxy:
		name, err := tcpCluster(t)
		if err != nil {
			return upstreamResult{}, err
		}
		port, err := e.inboundCluster(s, side, name, ep)
		if err != nil {
			return upstreamResult{}, err
		}
		innerTLS := tlsCtx
		if serverTLS != nil {
			innerTLS = nil // terminated here
		}
		r, err := e.application(h, port, innerTLS, mtls, "")
		r.tcpCount = count
		if r.refused {
			r = upstreamResult{closed: true, why: r.why}
		}
		return r, err
	case *hcmv3.HttpConnectionManager:
		if tlsCtx != nil && serverTLS == nil {
			// TLS bytes into an HTTP codec: a protocol error, not a
			// ServerHello.
			return upstreamResult{tlsFailure: "WRONG_VERSION_NUMBER (an HTTP connection manager answered the ClientHello)", why: "TLS to a plaintext HTTP chain"}, nil
		}
		if !e.req.Protocol.http() {
			return upstreamResult{}, undecidable("a %s connection meets the HTTP connection manager of %s", e.req.Protocol, chainName(fc))
		}
		if err := httpFiltersDecidable(t, side); err != nil {
			return upstreamResult{}, err
		}
		rc, rcName, err := s.routeConfig(t)
		if err != nil {
			return upstreamResult{}, err
		}
		vh := virtualHost(rc, t, e.req.Authority)
		if vh == nil {
			return upstreamResult{}, undecidable("%s: no inbound virtual host for %s in %s", side, e.req.Authority, rcName)
		}
		r, err := matchRoute(vh, cmpOr(e.req.Path, "/"))
		if err != nil {
			return upstreamResult{}, err
		}
		if r == nil || r.GetRoute() == nil {
			return upstreamResult{}, undecidable("%s: the inbound route of %s/%s does not route the request", side, rcName, vh.GetName())
		}
		if err := routeFilterConfigs(vh, r); err != nil {
			return upstreamResult{}, err
		}
		name, err := routeCluster(r)
		if err != nil {
			return upstreamResult{}, err
		}
		e.step(side, "route", rcName+"/"+vh.GetName()+"/"+r.GetName(), "cluster "+name)
		port, err := e.inboundCluster(s, side, name, ep)
		if err != nil {
			return upstreamResult{}, err
		}
		xfcc, why, err := xfccHeader(t, mtls)
		if err != nil {
			return upstreamResult{}, err
		}
		e.step(side, "x-forwarded-client-cert", t.GetForwardClientCertDetails().String(), why)
		res, err := e.application(h, port, nil, mtls, xfcc)
		if res.refused {
			// The server's sidecar answers its client 503 itself; for the
			// client this is a response, which the evaluator does not
			// render: undecidable rather than wrong.
			return upstreamResult{}, undecidable("%s: the application does not listen on port %d behind an HTTP chain", side, port)
		}
		return res, err
	}
	return upstreamResult{}, undecidable("filter chain %s ends in %T", chainName(fc), term)
}

// virtualInbound is the name of Istio's inbound listener, where iptables
// sends every inbound connection (istio/istio pilot/pkg/model
// VirtualInboundListenerName).
const virtualInbound = "virtualInbound"

// inboundCluster resolves the cluster an inbound chain sends to: the
// application's port on the pod.
func (e *evaluation) inboundCluster(s *Proxy, side, name string, ep netip.AddrPort) (uint16, error) {
	cl := s.Config.Clusters[name]
	if cl == nil {
		return 0, undecidable("%s: inbound cluster %s is not in the configuration held", side, name)
	}
	switch cl.GetType() {
	case clusterv3.Cluster_ORIGINAL_DST:
		e.step(side, "cluster", name, fmt.Sprintf("original destination: the application's port %d [ORIGDST-CLUSTER]", ep.Port()))
		return ep.Port(), nil
	case clusterv3.Cluster_STATIC:
		eps, _ := healthyEndpoints(cl.GetLoadAssignment())
		if len(eps) == 1 && (eps[0].Addr().IsLoopback() || eps[0].Addr() == ep.Addr()) {
			e.step(side, "cluster", name, fmt.Sprintf("static endpoint %s: the application's port %d", eps[0], eps[0].Port()))
			return eps[0].Port(), nil
		}
	}
	return 0, undecidable("%s: inbound cluster %s of type %s", side, name, cl.GetType())
}

// handshake is the TLS handshake of a client with tlsCtx and identity cid
// and a server chain with serverTLS and identity sid: "" and the session
// when it succeeds, else why it fails in Envoy's words.
func handshake(tlsCtx *tlsContext, cid *Identity, serverTLS *tlsContext, sid *Identity) (*Session, string, error) {
	serverChain, err := secretChain(serverTLS.certificate, sid)
	if err != nil {
		return nil, "", err
	}
	if len(serverChain) == 0 {
		return nil, "the server's sidecar has no certificate (SDS secret " + serverTLS.certificate + ")", nil
	}
	if err := verify(serverChain, tlsCtx, cid); err != nil {
		if IsUndecidable(err) {
			return nil, "", err
		}
		return nil, "the client rejects the server's certificate: " + err.Error(), nil
	}
	var clientChain []*x509.Certificate
	if tlsCtx.certificate != "" {
		clientChain, err = secretChain(tlsCtx.certificate, cid)
		if err != nil {
			return nil, "", err
		}
	}
	if len(clientChain) == 0 && serverTLS.requireClientCert {
		return nil, "the server requires a client certificate and the client has none: CERTIFICATE_REQUIRED [DOWNSTREAM-TLS]", nil
	}
	if len(clientChain) > 0 && (serverTLS.validation != "" || len(serverTLS.sans) > 0) {
		if err := verify(clientChain, serverTLS, sid); err != nil {
			if IsUndecidable(err) {
				return nil, "", err
			}
			return nil, "the server rejects the client's certificate: " + err.Error(), nil
		}
	}
	sess := &Session{ServerID: spiffeID(serverChain[0]), ServerLeaf: serverChain[0], ALPN: negotiateALPN(serverTLS.alpn, tlsCtx.alpn)}
	if len(clientChain) > 0 {
		sess.ClientID, sess.ClientLeaf = spiffeID(clientChain[0]), clientChain[0]
	}
	return sess, "", nil
}

// xfccHeader is the x-forwarded-client-cert the application receives from
// an inbound connection manager ([XFCC]).
func xfccHeader(hcm *hcmv3.HttpConnectionManager, mtls *Session) (string, string, error) {
	mode := hcm.GetForwardClientCertDetails()
	switch mode {
	case hcmv3.HttpConnectionManager_SANITIZE, hcmv3.HttpConnectionManager_FORWARD_ONLY, hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		return "", "the connection manager adds none (" + mode.String() + ")", nil
	}
	if mtls == nil {
		return "", "the connection is not mutual TLS: no element is added [XFCC]", nil
	}
	sum := sha256.Sum256(mtls.ClientLeaf.Raw)
	parts := []string{"By=" + mtls.ServerID, "Hash=" + hex.EncodeToString(sum[:])}
	d := hcm.GetSetCurrentClientCertDetails()
	if d.GetSubject().GetValue() {
		parts = append(parts, fmt.Sprintf("Subject=%q", mtls.ClientLeaf.Subject.String()))
	}
	if d.GetUri() {
		for _, u := range uriSANs(mtls.ClientLeaf) {
			parts = append(parts, "URI="+u)
		}
	}
	if d.GetDns() {
		for _, n := range mtls.ClientLeaf.DNSNames {
			parts = append(parts, "DNS="+n)
		}
	}
	if d.GetCert() || d.GetChain() {
		return "", "", undecidable("the connection manager forwards the client certificate's PEM in x-forwarded-client-cert (set_current_client_cert_details cert or chain), which the evaluator does not render")
	}
	return strings.Join(parts, ";"), mode.String() + " with By, Hash and the fields set_current_client_cert_details asks [XFCC]", nil
}

// Hello is what a TLS client without a certificate sends to a sidecar's
// inbound port and reads back: the certificate chain the matching filter
// chain presents, and whether it goes on to demand a client certificate
// (echo peercert's view of a sidecar).
type Hello struct {
	// Closed: no filter chain took the connection, and it was closed.
	Closed bool
	// Plaintext: the filter chain does not terminate TLS; the application
	// behind it answers the ClientHello in plaintext.
	Plaintext bool
	// Chain is what the server presented (nil when it has no
	// certificate).
	Chain             []*x509.Certificate
	RequireClientCert bool
	Trace             Trace
}

// InboundHello evaluates a TLS ClientHello with sni and alpn, from src, to
// port on the host h's sidecar intercepts: the filter chain it matches and
// what that chain's transport socket presents.
func InboundHello(h *Host, src netip.Addr, port uint16, sni string, alpn []string) (Hello, error) {
	e := &evaluation{}
	s := h.Sidecar
	if s == nil {
		return Hello{}, undecidable("%s has no sidecar", h.Name)
	}
	side := "server " + s.Name
	l := s.Config.Listeners[virtualInbound]
	if l == nil {
		return Hello{}, undecidable("%s holds no %s listener (snapshot %d)", s.Name, virtualInbound, s.Config.Seq)
	}
	e.step(side, "listener", l.GetName(), "inbound connections are redirected to it")
	conn := Connection{Destination: netip.AddrPortFrom(h.IP, port), Source: netip.AddrPortFrom(src, 40000), TLS: &ClientHello{SNI: sni, ALPN: alpn}}
	d, err := inspect(l, conn)
	if err != nil {
		return Hello{}, err
	}
	fc, err := matchFilterChain(l, conn, d)
	if err != nil {
		return Hello{}, err
	}
	if fc == nil {
		e.step(side, "filter chain", "", fmt.Sprintf("none matches port %d, transport %s, ALPN %v: the connection is closed [DEFAULT-CHAIN]", port, d.transport, d.alpn))
		return Hello{Closed: true, Trace: e.trace}, nil
	}
	t, err := transportSocket(fc.GetTransportSocket())
	if err != nil {
		return Hello{}, err
	}
	if t == nil {
		e.step(side, "filter chain", chainName(fc), "does not terminate TLS [FCM]")
		return Hello{Plaintext: true, Trace: e.trace}, nil
	}
	chain, err := secretChain(t.certificate, s.Identity)
	if err != nil {
		return Hello{}, err
	}
	e.step(side, "filter chain", chainName(fc), fmt.Sprintf("TLS with certificate %q, client certificate required: %v [DOWNSTREAM-TLS]", t.certificate, t.requireClientCert))
	return Hello{Chain: chain, RequireClientCert: t.requireClientCert, Trace: e.trace}, nil
}
