package ztunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// metaPrefix is ztunnel's ISTIO_META_PREFIX: environment variables so
// named are its proxy metadata, without the prefix (src/config.rs).
const metaPrefix = "ISTIO_META_"

// Node is the node a ztunnel pod's ztunnel presents to istiod (src/xds/
// client.rs AdsClientBuilder::node): ID ztunnel~<INSTANCE_IP>~<POD_NAME>.
// <POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local; metadata NAME,
// NAMESPACE, INSTANCE_IPS, NODE_NAME, then its proxy metadata (every
// ISTIO_META_* of its environment, prefix stripped: CLUSTER_ID from
// ISTIO_META_CLUSTER_ID, and the proxyMetadata Istio's chart renders into
// it, e.g. ENABLE_HBONE). env is the ztunnel container's environment as
// the kubelet resolves it.
func Node(pod *corev1.Pod, env map[string]string) (*corev3.Node, error) {
	ip := cmpOr(env["INSTANCE_IP"], pod.Status.PodIP)
	name, ns := cmpOr(env["POD_NAME"], pod.Name), cmpOr(env["POD_NAMESPACE"], pod.Namespace)
	if ip == "" {
		return nil, fmt.Errorf("ztunnel pod %s/%s has no IP yet", pod.Namespace, pod.Name)
	}
	meta := map[string]any{"NAME": name, "NAMESPACE": ns, "INSTANCE_IPS": ip, "NODE_NAME": cmpOr(env["NODE_NAME"], pod.Spec.NodeName)}
	for k, v := range env {
		if key, ok := strings.CutPrefix(k, metaPrefix); ok {
			meta[key] = v
		}
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, err
	}
	return &corev3.Node{Id: fmt.Sprintf("ztunnel~%s~%s.%s~%s.svc.cluster.local", ip, name, ns, ns), Metadata: st}, nil
}

// Ztunnel is the simulated ztunnel of one ztunnel pod, hence of one node.
type Ztunnel struct {
	// Namespace and Name are the ztunnel pod's; NodeName its node.
	Namespace, Name, NodeName string
	// Started is when this ztunnel started: a new ztunnel pod (an upgrade,
	// a restart) is a new Ztunnel with counters from zero, as a restarted
	// ztunnel has.
	Started time.Time

	stream  *xds.Stream
	state   *state
	metrics *metrics
	logger  *slog.Logger
}

// Option configures a Ztunnel.
type Option func(*options)

type options struct {
	logger *slog.Logger
	stream []xds.StreamOption
}

// WithLogger receives the ztunnel's stream events and decisions.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// New returns the ztunnel of pod, to connect to istiod's xDS at address as
// node (see Node). Start connects it.
func New(address string, pod *corev1.Pod, node *corev3.Node, opts ...Option) *Ztunnel {
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	z := &Ztunnel{Namespace: pod.Namespace, Name: pod.Name, NodeName: pod.Spec.NodeName, state: newState(), metrics: newMetrics(), logger: o.logger}
	z.stream = xds.NewStream(address, node, xds.Incremental, z.state, append([]xds.StreamOption{xds.WithLogger(o.logger)}, o.stream...)...)
	return z
}

// Start opens the xDS stream; it stays open until Stop.
func (z *Ztunnel) Start(ctx context.Context) error {
	z.Started = time.Now()
	return z.stream.Start(ctx)
}

// Stop closes the stream.
func (z *Ztunnel) Stop() { z.stream.Stop() }

// Status is the stream's.
func (z *Ztunnel) Status() xds.StreamStatus { return z.stream.Status() }

// Synced reports whether istiod has sent both kinds of resources at least
// once, which ztunnel waits for before it reports ready.
func (z *Ztunnel) Synced() bool {
	z.state.mu.RLock()
	defer z.state.mu.RUnlock()
	_, a := z.state.lastChange[AddressType]
	_, b := z.state.lastChange[AuthorizationType]
	return a && b
}

// Snapshot is a copy of what istiod has served the ztunnel.
func (z *Ztunnel) Snapshot() Snapshot { return z.state.snapshot() }

// Metrics is GET /metrics (and /stats/prometheus) on port 15020.
func (z *Ztunnel) Metrics() []byte { return z.metrics.exposition() }

// Upstream is where ztunnel sends an outbound connection.
type Upstream struct {
	// Protocol is HBONE or NONE (plain TCP).
	Protocol TunnelProtocol
	// Workload is the destination workload; Service the service addressed.
	Workload *Workload
	Service  *Service
	// Port is the workload's port the connection reaches.
	Port uint32
}

// Outbound decides what the ztunnel does with a connection from src (an
// ambient pod of its node) to serviceVIP:port, when the service's endpoint
// chosen is the workload at dst (src/proxy/outbound.rs build_request): it
// finds the service by its address and the workload by its address, the
// workload's port behind the service port, and the protocol is the
// workload's (HBONE, or TCP for anything else). A destination that is no
// service ztunnel knows is passed through as plain TCP to the address as
// given; a service's endpoint it does not know yet is an error to retry.
func (z *Ztunnel) Outbound(src netip.Addr, serviceVIP netip.Addr, port uint16, dst netip.Addr) (Upstream, error) {
	snap := z.Snapshot()
	source := snap.WorkloadByIP(src)
	if source == nil {
		return Upstream{}, fmt.Errorf("%w: no workload with address %s (the client pod) among the %d istiod sent", ErrUndecidable, src, len(snap.Workloads))
	}
	svc := snap.ServiceByVIP(serviceVIP)
	w := snap.WorkloadByIP(dst)
	if svc != nil && w == nil {
		// A real ztunnel picks the service's endpoint among the workloads
		// istiod sent it; the rehearsal picked dst (the newest ready pod)
		// before this ztunnel heard of it, as just after a rollout. Not an
		// answer: the probe tries again once istiod has pushed it.
		return Upstream{}, fmt.Errorf("ztunnel %s/%s does not know %s, the endpoint of service %s chosen for the request, yet (istiod has not sent it)", z.Namespace, z.Name, dst, svc.Key())
	}
	if svc == nil || w == nil {
		return Upstream{Protocol: TunnelNone, Port: uint32(port)}, nil
	}
	if len(svc.Unmodelled) > 0 || len(w.Unmodelled) > 0 {
		return Upstream{}, fmt.Errorf("%w: service %s or workload %s/%s has %v", ErrUndecidable, svc.Key(), w.Namespace, w.Name, append(slices.Clone(svc.Unmodelled), w.Unmodelled...))
	}
	target := uint32(0)
	for _, p := range w.Services[svc.Key()] {
		if p.ServicePort == uint32(port) {
			target = cmp(p.TargetPort, p.ServicePort)
		}
	}
	if target == 0 {
		for _, p := range svc.Ports {
			if p.ServicePort == uint32(port) {
				target = cmp(p.TargetPort, p.ServicePort)
			}
		}
	}
	if target == 0 {
		return Upstream{}, fmt.Errorf("%w: service %s has no port %d for workload %s/%s", ErrUndecidable, svc.Key(), port, w.Namespace, w.Name)
	}
	protocol := TunnelNone
	if w.Tunnel == TunnelHBONE {
		protocol = TunnelHBONE
	}
	return Upstream{Protocol: protocol, Workload: w, Service: svc, Port: target}, nil
}

func cmp(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

// Inbound decides what the ztunnel does with a connection to dst, an
// ambient workload of its node, arriving over HBONE (c.SrcIdentity set)
// or plaintext (src/proxy/inbound.rs, inbound_passthrough.rs): the
// workload's authorization (a *Rejection when denied). An error is the
// simulation's own.
func (z *Ztunnel) Inbound(dst netip.Addr, c Connection) (*Workload, *Rejection, error) {
	snap := z.Snapshot()
	w := snap.WorkloadByIP(dst)
	if w == nil {
		return nil, nil, fmt.Errorf("%w: no workload with address %s (the server pod) among the %d istiod sent", ErrUndecidable, dst, len(snap.Workloads))
	}
	if w.Node != "" && w.Node != z.NodeName {
		return nil, nil, fmt.Errorf("workload %s/%s runs on node %s, not on this ztunnel's node %s", w.Namespace, w.Name, w.Node, z.NodeName)
	}
	if len(w.Unmodelled) > 0 {
		return nil, nil, fmt.Errorf("%w: workload %s/%s has %v", ErrUndecidable, w.Namespace, w.Name, w.Unmodelled)
	}
	rej, err := authorize(snap.Policies, w, c)
	return w, rej, err
}

// Conn is one connection for the metrics: its ends as ztunnel knows them.
type Conn struct {
	Source, Destination *Workload
	Service             *Service
	// HBONE says the connection came (destination) or went (source) over
	// HBONE; its mutual TLS gives the peer's identity.
	HBONE bool
	// SourceIdentity is the client's identity from the mutual TLS.
	SourceIdentity string
	// Denied marks a connection the destination refused.
	Denied bool
	// Received and Sent are the bytes ztunnel copied each way.
	Received, Sent uint64
}

// RecordInbound counts a connection as the destination's ztunnel does:
// reporter destination, security policy mutual_tls with the client's
// principal over HBONE, unknown with none for plaintext; a denied one
// closes with flag DENY.
func (z *Ztunnel) RecordInbound(c Conn) {
	l := Labels{Reporter: ReporterDestination, ConnectionSecurityPolicy: PolicyUnknown}
	if c.HBONE {
		l.ConnectionSecurityPolicy = PolicyMutualTLS
		l.SourcePrincipal = c.SourceIdentity
	}
	l.withSource(c.Source)
	l.withDestination(c.Destination)
	l.withService(c.Service)
	z.record(l, c)
}

// RecordOutbound counts a connection as the source's ztunnel does:
// reporter source, over HBONE mutual_tls with its own workload's identity
// as source principal, plain TCP unknown.
func (z *Ztunnel) RecordOutbound(c Conn) {
	l := Labels{Reporter: ReporterSource, ConnectionSecurityPolicy: PolicyUnknown}
	if c.HBONE && c.Source != nil {
		l.ConnectionSecurityPolicy = PolicyMutualTLS
		l.SourcePrincipal = c.Source.Identity()
	}
	l.withSource(c.Source)
	l.withDestination(c.Destination)
	l.withService(c.Service)
	z.record(l, c)
}

func (z *Ztunnel) record(l Labels, c Conn) {
	flags := ""
	if c.Denied {
		flags = FlagPolicyDenied
	}
	z.metrics.record(l, flags, c.Received, c.Sent)
}

// errNotAmbient is returned for a pod this ztunnel does not serve.
var errNotAmbient = errors.New("not an ambient pod of this ztunnel's node")

// Serves reports whether pod is an ambient pod this ztunnel carries: on
// its node, with istio-cni's redirection annotation.
func (z *Ztunnel) Serves(pod *corev1.Pod) error {
	if pod.Spec.NodeName != z.NodeName || pod.Annotations[RedirectionAnnotation] != RedirectionEnabled {
		return fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, errNotAmbient)
	}
	return nil
}

// The annotation istio-cni writes on a pod it has enrolled.
const (
	RedirectionAnnotation = "ambient.istio.io/redirection"
	RedirectionEnabled    = "enabled"
)
