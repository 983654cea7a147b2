package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
)

// What the Envoy evaluator's outcomes look like to the probe: the real
// wire formats of the echo's answers and of the errors its client sees,
// which the echo's own classifiers (echoapi.Classify, ClassifyTCP,
// ClassifyGRPCReply) turn into results, exactly as on kind.

// decidesByEnvoy reports whether a request is decided by the evaluator:
// when the Execer has the sidecars' configurations, for every request
// towards a pod with an Envoy sidecar or none. A proxyless client's HTTP
// and TCP reach here (its gRPC goes to its real processes) and leave it
// as from a pod without a sidecar: pilot-agent intercepts nothing. A
// proxyless server keeps the oracle's mixed rules: grpc-go's side of the
// handshake is not Envoy's.
func (e *Execer) decidesByEnvoy(client *corev1.Pod, dst *destination) bool {
	return e.envoys != nil && (dst.pod == nil || !proxyless(dst.pod))
}

// label says on a result what decided it, when the evaluator did.
func (e *Execer) label(res *echoapi.ProbeResult, d *decision) {
	if d == nil {
		return
	}
	res.DataPlane, res.DecidedBy = e.envoyLabel, d.out.Trace.DecidedBy()
	if res.DecidedBy == "" {
		res.DecidedBy = "no sidecar on the way (" + d.out.Trace.String() + ")"
	}
	if len(d.nacks) > 0 {
		res.DecidedBy += "; the sidecars rejected later pushes (NACK): " + strings.Join(d.nacks, "; ")
	}
	if !d.at.IsZero() {
		at := d.at
		res.DecidedAt = &at
	}
}

// delivered is dst with the pod that got the request.
func delivered(dst *destination, d *decision) *destination {
	cp := *dst
	cp.pod = d.server
	return &cp
}

// renderHTTP is what the probe's GET sees of an evaluated request.
func (e *Execer) renderHTTP(client *corev1.Pod, dst *destination, u *url.URL, d *decision) (int, []byte, error) {
	wrap := func(err error) error { return &url.Error{Op: "Get", URL: u.String(), Err: err} }
	switch o := d.out; o.Kind {
	case envoy.Delivered:
		return 200, echoBody(client, delivered(dst, d), u, o.XFCC), nil
	case envoy.LocalReply:
		return o.Status, []byte(o.Body), nil
	case envoy.Refused:
		return 0, nil, wrap(connError("dial", syscall.ECONNREFUSED))
	case envoy.Closed:
		if o.Reset {
			return 0, nil, wrap(connError("read", syscall.ECONNRESET))
		}
		return 0, nil, wrap(io.EOF)
	}
	return 0, nil, errors.New("an outcome of a kind the simulated data plane does not render: " + string(d.out.Kind))
}

// renderTCP is what the probe's TCP exchange sees: the echo's reply line,
// counted by the server sidecar's istio.stats filter when the chain has
// one, or the error its read or dial fails with.
func (e *Execer) renderTCP(client *corev1.Pod, dst *destination, nonce string, d *decision) ([]byte, error) {
	o := d.out
	if c := o.TCPCount; c != nil && d.server != nil {
		e.countTCP(d.server, client, istiostats.Peer{SecurityPolicy: c.Policy, SourcePrincipal: c.SourcePrincipal, DestinationPrincipal: c.DestinationPrincipal})
	}
	switch o.Kind {
	case envoy.Delivered:
		return tcpEchoReply(client, delivered(dst, d), nonce), nil
	case envoy.Refused:
		return nil, connError("dial", syscall.ECONNREFUSED)
	case envoy.Closed, envoy.LocalReply:
		if o.Reset {
			return nil, connError("read", syscall.ECONNRESET)
		}
		return nil, io.EOF
	}
	return nil, errors.New("an outcome of a kind the simulated data plane does not render: " + string(o.Kind))
}

// renderGRPC is what the probe's gRPC call sees: the echo's reply, or the
// status grpc-go ends the call with.
func (e *Execer) renderGRPC(client *corev1.Pod, dst *destination, u *url.URL, d *decision) ([]byte, *grpcStatus) {
	switch o := d.out; o.Kind {
	case envoy.Delivered:
		return grpcEchoReply(client, delivered(dst, d), u, o.XFCC, ""), nil
	case envoy.LocalReply:
		// Envoy answers a gRPC request's local reply trailers-only, its
		// HTTP status mapped to a gRPC status (Grpc::Utility::
		// httpToGrpcStatus, source/common/grpc/status.cc) and the body as
		// grpc-message.
		return nil, &grpcStatus{code: grpcCodeOf(o.Status), message: o.Body}
	case envoy.Refused:
		return nil, unavailable(connError("dial", syscall.ECONNREFUSED))
	case envoy.Closed:
		if o.Reset {
			return nil, prefaceError(connError("read", syscall.ECONNRESET))
		}
		return nil, prefaceError(errors.New("EOF"))
	}
	return nil, &grpcStatus{code: "Unknown", message: "an outcome the simulated data plane does not render: " + string(d.out.Kind)}
}

// grpcCodeOf is Envoy's mapping of an HTTP status to a gRPC status code
// name (source/common/grpc/status.cc httpToGrpcStatus).
func grpcCodeOf(status int) string {
	switch status {
	case 400:
		return "Internal"
	case 401:
		return "Unauthenticated"
	case 403:
		return "PermissionDenied"
	case 404:
		return "Unimplemented"
	case 429, 502, 503, 504:
		return "Unavailable"
	}
	return "Unknown"
}

// peercertByEnvoy fills `echo peercert`'s report from what the server's
// sidecar does with a ClientHello that offers no client certificate, as
// the configuration istiod served it says (envoy.InboundHello): the chain
// its filter chain presents and the rejection for want of a client
// certificate, a closed connection where no chain matches, or the
// application's plaintext answer where the chain does not terminate TLS.
func (e *Execer) peercertByEnvoy(ctx context.Context, server *corev1.Pod, addr string, port int, sni string, report *echoapi.PeerCertReport) error {
	nw, err := e.network(ctx, &destination{service: &corev1.Service{}, pod: server})
	if err != nil {
		return err
	}
	h := nw.Host(podIP(server))
	if nw.err != nil {
		return nw.err
	}
	if h == nil {
		return fmt.Errorf("%w: pod %s/%s is not running", probe.ErrHarnessLimit, server.Namespace, server.Name)
	}
	hello, err := envoy.InboundHello(h, netip.MustParseAddr("127.0.0.6"), uint16(port), sni, report.ALPN)
	if err != nil {
		if envoy.IsUndecidable(err) {
			return fmt.Errorf("%w: %v", probe.ErrHarnessLimit, err)
		}
		return err
	}
	switch {
	case hello.Closed:
		report.HandshakeError = "EOF"
		report.VerifyError = "no certificate was received"
	case hello.Plaintext:
		report.HandshakeError = "tls: first record does not look like a TLS handshake"
		report.VerifyError = "no certificate was received"
	case len(hello.Chain) == 0:
		report.HandshakeError = "read tcp " + addr + ": read: connection reset by peer"
		report.VerifyError = "no certificate was received"
	default:
		report.NegotiatedALPN = negotiated(report.ALPN)
		report.TLSVersion = "TLS 1.3"
		for _, c := range hello.Chain {
			report.Chain = append(report.Chain, certInfo(c))
		}
		report.HandshakeError = "server rejected the connection after the handshake: remote error: tls: certificate required"
		if !hello.RequireClientCert {
			report.HandshakeError = ""
		}
		report.VerifyError = "not verified: no --root given"
	}
	return nil
}

// negotiated is the ALPN an Istio inbound chain agrees to from what the
// client offered: Istio's first (istio-peer-exchange when offered).
func negotiated(offered []string) string {
	if len(offered) == 0 {
		return ""
	}
	return offered[0]
}

// podIP is a pod's address.
func podIP(pod *corev1.Pod) netip.Addr {
	ip, _ := netip.ParseAddr(pod.Status.PodIP)
	return ip
}

// xdsDumps are the configuration the pod's sidecar holds, as Envoy's
// admin config dump shows it (admin.v3 ClustersConfigDump,
// EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump, in the
// order Envoy writes them), each in protobuf JSON.
func (e *Execer) xdsDumps(pod *corev1.Pod) ([]json.RawMessage, error) {
	c, err := e.envoys.Client(pod)
	if err != nil {
		return nil, err
	}
	snap := c.Snapshot()
	stamp := func(typeURL string) (string, *timestamppb.Timestamp) {
		p := snap.Accepted[typeURL]
		return p.Version, timestamppb.New(p.Received)
	}
	clusters := &adminv3.ClustersConfigDump{}
	v, at := stamp(xds.ClusterType)
	for _, name := range slices.Sorted(maps.Keys(snap.Clusters)) {
		a, err := anypb.New(snap.Clusters[name])
		if err != nil {
			return nil, err
		}
		clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: v, Cluster: a, LastUpdated: at})
	}
	endpoints := &adminv3.EndpointsConfigDump{}
	v, at = stamp(xds.EndpointType)
	for _, name := range slices.Sorted(maps.Keys(snap.Endpoints)) {
		a, err := anypb.New(snap.Endpoints[name])
		if err != nil {
			return nil, err
		}
		endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{VersionInfo: v, EndpointConfig: a, LastUpdated: at})
	}
	listeners := &adminv3.ListenersConfigDump{}
	v, at = stamp(xds.ListenerType)
	for _, name := range slices.Sorted(maps.Keys(snap.Listeners)) {
		a, err := anypb.New(snap.Listeners[name])
		if err != nil {
			return nil, err
		}
		listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{Name: name,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: v, Listener: a, LastUpdated: at}})
	}
	routes := &adminv3.RoutesConfigDump{}
	v, at = stamp(xds.RouteType)
	for _, name := range slices.Sorted(maps.Keys(snap.Routes)) {
		a, err := anypb.New(snap.Routes[name])
		if err != nil {
			return nil, err
		}
		routes.DynamicRouteConfigs = append(routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: v, RouteConfig: a, LastUpdated: at})
	}
	var out []json.RawMessage
	for _, m := range []proto.Message{clusters, endpoints, listeners, routes} {
		a, err := anypb.New(m)
		if err != nil {
			return nil, err
		}
		b, err := protojson.Marshal(a)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}
