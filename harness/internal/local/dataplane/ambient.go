package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/ztunnel"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Ambient pairs: a request from or to a pod istio-cni enrolled in ambient
// mode (annotation ambient.istio.io/redirection=enabled) is decided by the
// simulated ztunnels of the pods' nodes (package ztunnel), from what the
// real istiod served them, not by the oracle:
//
//   - from an ambient pod, the client's ztunnel picks the protocol from
//     the destination workload istiod describes: HBONE to a workload istiod
//     marks HBONE (an ambient pod, or a sidecar the ambient profile made
//     HBONE-capable), plain TCP to any other, whose own data plane then
//     decides as for any plaintext client;
//   - to an ambient pod, the server's ztunnel authorizes: over HBONE with
//     the peer's identity from the mutual TLS, plaintext without one;
//   - an Envoy sidecar sends an ambient pod HBONE (its endpoint is HBONE
//     in istiod's eyes), with a DestinationRule SIMPLE's TLS inside the
//     tunnel, which the echo server cannot speak (the one sidecar-side
//     choice taken here from the stored rules, as the sidecar simulation
//     takes its choices).
//
// HBONE's mutual TLS is checked with the certificates each side holds:
// a ztunnel's, issued by istiod's CA to the ztunnel pod impersonating the
// workload (IstiodCA.IssueFor), renewed at half their life as ztunnel
// renews them; a sidecar's, as for sidecar pairs. Every connection is
// counted in the ztunnels' metrics as ztunnel counts it, which the engine
// reads through GetPodPort as it reads a real ztunnel's through a
// port-forward. Results of these requests say AmbientLabel.

// ZtunnelNodes are the simulated ztunnels of a local cluster
// (cluster.Ambient).
type ZtunnelNodes interface {
	Ztunnel(node string) (*ztunnel.Ztunnel, error)
	ZtunnelOfPod(namespace, name string) (*ztunnel.Ztunnel, error)
	Module() string
}

// ZtunnelCertSource issues the certificates a ztunnel asks for the
// workloads of its node (IstiodCA implements it).
type ZtunnelCertSource interface {
	IssueFor(ctx context.Context, ztunnelPod, workload *corev1.Pod, ttl time.Duration) (*Certs, error)
}

// WithZtunnels makes the data plane decide ambient pairs with the local
// cluster's simulated ztunnels, their certificates from certs.
func WithZtunnels(nodes ZtunnelNodes, certs ZtunnelCertSource) Option {
	return func(e *Execer) { e.ztunnels, e.ztunnelCerts = nodes, certs }
}

// AmbientLabel is what a result decided by the simulated ztunnels says.
func AmbientLabel(module string) string {
	return "rehearsal: ztunnel simulated on the configuration istiod " + module + " served (HBONE and istio-cni redirection not run)"
}

// enrolled reports whether istio-cni enrolled the pod in ambient mode.
func enrolled(pod *corev1.Pod) bool {
	return pod != nil && pod.Annotations[manifests.AmbientRedirectionAnnotation] == manifests.AmbientRedirectionEnabled
}

// ambientOutcome is what the ambient hop(s) of a request decided.
type ambientOutcome struct {
	// handled is false when no ambient hop decides the request (neither end
	// enrolled), or when the client's ztunnel passed it as plain TCP to a
	// workload that is not ambient: that workload's data plane decides
	// then, as for any client without a sidecar.
	handled bool
	// answered: the echo server got it (no sidecar in front of an ambient
	// pod adds X-Forwarded-Client-Cert).
	answered bool
	// closed: a ztunnel (or the peer) closed the connection after the
	// connect: a denial, a failed handshake.
	closed bool
	// upstream503: a client sidecar's TLS inside HBONE failed.
	upstream503 bool
}

// workloadCerts is one ztunnel's certificate for one identity.
type workloadCerts struct {
	certs *Certs
	renew time.Time
	// renewing is set while a renewal runs in the background.
	renewing bool
}

// ztunnelCertsOf returns the certificates ztunnel z holds for workload's
// identity, issuing them on first use and renewing them at half their
// life (src/tls/certificate.rs refresh_at), with the TTL the ztunnel pod's
// SECRET_TTL asks (src/config.rs; default 24h). As a sidecar's (certsOf),
// the renewal runs in the background while ztunnel serves the certificate
// it holds, until that expires.
func (e *Execer) ztunnelCertsOf(ctx context.Context, z *ztunnel.Ztunnel, workload *corev1.Pod) (*Certs, error) {
	zpod, err := e.podByName(ctx, z.Namespace, z.Name)
	if err != nil {
		return nil, err
	}
	ttl, err := containerTTL(zpod)
	if err != nil {
		return nil, err
	}
	key := ztunnelCertKey{ztunnel: zpod.UID, identity: workload.Namespace + "/" + serviceAccount(workload)}
	e.mu.Lock()
	held := e.ztunnelHeld[key]
	e.mu.Unlock()
	now := e.now()
	if held != nil && now.Before(held.renew) {
		return held.certs, nil
	}
	if e.ztunnelCerts == nil {
		return nil, errors.New("the simulated data plane has no CA for ztunnels")
	}
	if held != nil && now.Before(held.certs.Leaf().NotAfter) {
		e.renewInBackground(&held.renewing, func(ctx context.Context) error {
			_, err := e.issueForZtunnel(ctx, z, zpod, workload, key, ttl)
			return err
		}, held.certs, "simulated ztunnel", "ztunnel", z.Namespace+"/"+z.Name, "identity", key.identity)
		return held.certs, nil
	}
	return e.issueForZtunnel(ctx, z, zpod, workload, key, ttl)
}

// issueForZtunnel gets ztunnel z a new certificate for workload's identity
// and makes it the one z holds.
func (e *Execer) issueForZtunnel(ctx context.Context, z *ztunnel.Ztunnel, zpod, workload *corev1.Pod, key ztunnelCertKey, ttl time.Duration) (*Certs, error) {
	certs, err := e.ztunnelCerts.IssueFor(ctx, zpod, workload, ttl)
	if err != nil {
		return nil, fmt.Errorf("ztunnel %s/%s has no certificate for %s: %w", z.Namespace, z.Name, key.identity, err)
	}
	now := e.now()
	if certs.Issued.IsZero() {
		certs.Issued = now
	}
	leaf := certs.Leaf()
	next := &workloadCerts{certs: certs, renew: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)}
	if !next.renew.After(now) {
		// A real ztunnel would ask again at once, and again: a TTL at or
		// under istiod's 2-minute backdate (the suite's validation refuses
		// it). The simulation says so and waits a second.
		e.log.Warn("ztunnel would renew this certificate continuously: its refresh time (half its validity from NotBefore) is already past",
			"ztunnel", z.Namespace+"/"+z.Name, "identity", key.identity, "notBefore", leaf.NotBefore, "notAfter", leaf.NotAfter)
		next.renew = now.Add(time.Second)
	}
	e.mu.Lock()
	e.ztunnelHeld[key] = next
	e.mu.Unlock()
	e.log.Info("simulated ztunnel got a certificate", "ztunnel", z.Namespace+"/"+z.Name, "identity", key.identity,
		"serial", leaf.SerialNumber.Text(16), "notAfter", leaf.NotAfter, "renewAt", next.renew)
	return certs, nil
}

type ztunnelCertKey struct {
	ztunnel  types.UID
	identity string
}

// containerTTL is a ztunnel pod's SECRET_TTL (its container's env, which
// the chart's env.SECRET_TTL sets), default 24h.
func containerTTL(pod *corev1.Pod) (time.Duration, error) {
	for _, c := range pod.Spec.Containers {
		for _, env := range c.Env {
			if env.Name != "SECRET_TTL" {
				continue
			}
			d, err := time.ParseDuration(env.Value)
			if err != nil || d <= 0 {
				return 0, fmt.Errorf("ztunnel pod %s/%s: SECRET_TTL %q is not a positive duration", pod.Namespace, pod.Name, env.Value)
			}
			return d, nil
		}
	}
	return 24 * time.Hour, nil
}

func (e *Execer) podByName(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return e.pod(ctx, results.Pod{Namespace: namespace, Name: name})
}

func addrOf(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("address %q: %w", s, err)
	}
	return a, nil
}

// ambient decides the ambient hops of a request from client to dst, with
// the bytes it would carry each way for the counters.
func (e *Execer) ambient(ctx context.Context, client *corev1.Pod, dst *destination, received, sent uint64) (ambientOutcome, error) {
	clientAmb, serverAmb := enrolled(client), enrolled(dst.pod)
	if !clientAmb && !serverAmb {
		return ambientOutcome{}, nil
	}
	if e.ztunnels == nil {
		return ambientOutcome{}, fmt.Errorf("%w: ambient pods, but the simulated data plane has no ztunnels", ztunnel.ErrUndecidable)
	}
	clientIP, err := addrOf(client.Status.PodIP)
	if err != nil {
		return ambientOutcome{}, err
	}
	dstIP, err := addrOf(dst.pod.Status.PodIP)
	if err != nil {
		return ambientOutcome{}, err
	}
	if clientAmb {
		return e.fromAmbient(ctx, client, dst, clientIP, dstIP, received, sent)
	}
	zs, err := e.ztunnels.Ztunnel(dst.pod.Spec.NodeName)
	if err != nil {
		return ambientOutcome{}, fmt.Errorf("%w: %v", ztunnel.ErrUndecidable, err)
	}
	snap := zs.Snapshot()
	server := snap.WorkloadByIP(dstIP)
	source := snap.WorkloadByIP(clientIP)
	svc := serviceOf(snap, dst)
	conn := ztunnel.Conn{Source: source, Destination: server, Service: svc, Received: received, Sent: sent}
	if hasEnvoy(client) && server != nil && server.Tunnel == ztunnel.TunnelHBONE {
		// The client's sidecar sends HBONE: its endpoint is an HBONE one.
		drs, err := e.destinationRules(ctx, client.Namespace, dst.service)
		if err != nil {
			return ambientOutcome{}, err
		}
		port := int(dst.port.Port)
		mode := scenario.TLSMode("")
		for _, dr := range drs {
			if dr.Port == 0 && mode == "" || dr.Port == port {
				mode = dr.Mode
			}
		}
		sc, err := e.certsOf(ctx, client)
		if err != nil {
			return ambientOutcome{}, err
		}
		zc, err := e.ztunnelCertsOf(ctx, zs, dst.pod)
		if err != nil {
			return ambientOutcome{}, err
		}
		clientID, why := hboneHandshake(sc, zc, server.Identity())
		if why != nil {
			e.log.Info("simulated HBONE handshake failed", "client", client.Namespace+"/"+client.Name, "server", dst.pod.Namespace+"/"+dst.pod.Name, "why", why)
			conn.Denied = true
			zs.RecordInbound(conn)
			return ambientOutcome{handled: true, upstream503: true}, nil
		}
		conn.HBONE, conn.SourceIdentity = true, clientID
		if mode == scenario.TLSSimple {
			// The tunnel is made; the rule's TLS inside it reaches an echo
			// server that speaks plain HTTP.
			zs.RecordInbound(conn)
			return ambientOutcome{handled: true, upstream503: true}, nil
		}
		return e.inbound(zs, dstIP, conn, clientIP, int(targetPort(dst.pod, dst.port)), clientID)
	}
	// A client without a sidecar (out of the mesh, or proxyless speaking
	// HTTP or TCP), or a sidecar towards an endpoint that is not HBONE:
	// plaintext arrives at the server's ztunnel.
	return e.inbound(zs, dstIP, conn, clientIP, int(targetPort(dst.pod, dst.port)), "")
}

// inbound is the server ztunnel's decision on a connection, counted.
func (e *Execer) inbound(zs *ztunnel.Ztunnel, dstIP netip.Addr, conn ztunnel.Conn, src netip.Addr, port int, identity string) (ambientOutcome, error) {
	_, rej, err := zs.Inbound(dstIP, ztunnel.Connection{SrcIdentity: identity, Src: src, Dst: netip.AddrPortFrom(dstIP, uint16(port))})
	if err != nil {
		return ambientOutcome{}, err
	}
	conn.Denied = rej != nil
	zs.RecordInbound(conn)
	if rej != nil {
		e.log.Debug("simulated ztunnel denied a connection", "ztunnel", zs.Namespace+"/"+zs.Name, "to", dstIP, "from", src, "error", rej.Error())
		return ambientOutcome{handled: true, closed: true}, nil
	}
	return ambientOutcome{handled: true, answered: true}, nil
}

// fromAmbient is a request from an ambient pod.
func (e *Execer) fromAmbient(ctx context.Context, client *corev1.Pod, dst *destination, clientIP, dstIP netip.Addr, received, sent uint64) (ambientOutcome, error) {
	zc, err := e.ztunnels.Ztunnel(client.Spec.NodeName)
	if err != nil {
		return ambientOutcome{}, fmt.Errorf("%w: %v", ztunnel.ErrUndecidable, err)
	}
	vip, err := addrOf(dst.service.Spec.ClusterIP)
	if err != nil {
		return ambientOutcome{}, fmt.Errorf("the Service %s/%s: %w", dst.service.Namespace, dst.service.Name, err)
	}
	up, err := zc.Outbound(clientIP, vip, uint16(dst.port.Port), dstIP)
	if err != nil {
		return ambientOutcome{}, err
	}
	snap := zc.Snapshot()
	source := snap.WorkloadByIP(clientIP)
	conn := ztunnel.Conn{Source: source, Destination: up.Workload, Service: up.Service, Received: received, Sent: sent}
	if up.Protocol != ztunnel.TunnelHBONE {
		// Plain TCP to a workload that is not HBONE: counted unknown; the
		// workload's own data plane decides what it makes of plaintext.
		zc.RecordOutbound(conn)
		if enrolled(dst.pod) {
			// istiod does not (yet) see the ambient pod as HBONE: plaintext
			// reaches its ztunnel's passthrough.
			zs, err := e.ztunnels.Ztunnel(dst.pod.Spec.NodeName)
			if err != nil {
				return ambientOutcome{}, fmt.Errorf("%w: %v", ztunnel.ErrUndecidable, err)
			}
			c := ztunnel.Conn{Source: zs.Snapshot().WorkloadByIP(clientIP), Destination: zs.Snapshot().WorkloadByIP(dstIP), Service: serviceOf(zs.Snapshot(), dst), Received: received, Sent: sent}
			return e.inbound(zs, dstIP, c, clientIP, int(up.Port), "")
		}
		return ambientOutcome{handled: false}, nil
	}
	clientCerts, err := e.ztunnelCertsOf(ctx, zc, client)
	if err != nil {
		return ambientOutcome{}, err
	}
	conn.HBONE = true
	if enrolled(dst.pod) {
		zs, err := e.ztunnels.Ztunnel(dst.pod.Spec.NodeName)
		if err != nil {
			return ambientOutcome{}, fmt.Errorf("%w: %v", ztunnel.ErrUndecidable, err)
		}
		serverCerts, err := e.ztunnelCertsOf(ctx, zs, dst.pod)
		if err != nil {
			return ambientOutcome{}, err
		}
		clientID, why := hboneHandshake(clientCerts, serverCerts, up.Workload.Identity())
		in := ztunnel.Conn{Source: zs.Snapshot().WorkloadByIP(clientIP), Destination: zs.Snapshot().WorkloadByIP(dstIP), Service: serviceOf(zs.Snapshot(), dst),
			HBONE: true, SourceIdentity: clientID, Received: received, Sent: sent}
		if why != nil {
			e.log.Info("simulated HBONE handshake failed", "client", client.Namespace+"/"+client.Name, "server", dst.pod.Namespace+"/"+dst.pod.Name, "why", why)
			conn.Denied = true
			zc.RecordOutbound(conn)
			return ambientOutcome{handled: true, closed: true}, nil
		}
		out, err := e.inbound(zs, dstIP, in, clientIP, int(up.Port), clientID)
		if err != nil {
			return out, err
		}
		conn.Denied = out.closed
		zc.RecordOutbound(conn)
		return out, nil
	}
	if !hasEnvoy(dst.pod) {
		return ambientOutcome{}, fmt.Errorf("%w: istiod marks %s/%s HBONE, but it is neither enrolled in ambient nor a sidecar", ztunnel.ErrUndecidable, dst.pod.Namespace, dst.pod.Name)
	}
	// An HBONE-capable sidecar: its 15008 listener requires mutual TLS,
	// then passes the tunnel's content to the application under any
	// PeerAuthentication (inner chains built with mode DISABLE).
	sidecarCerts, err := e.certsOf(ctx, dst.pod)
	if err != nil {
		return ambientOutcome{}, err
	}
	if _, why := hboneHandshake(clientCerts, sidecarCerts, up.Workload.Identity()); why != nil {
		e.log.Info("simulated HBONE handshake to a sidecar failed", "client", client.Namespace+"/"+client.Name, "server", dst.pod.Namespace+"/"+dst.pod.Name, "why", why)
		conn.Denied = true
		zc.RecordOutbound(conn)
		return ambientOutcome{handled: true, closed: true}, nil
	}
	zc.RecordOutbound(conn)
	return ambientOutcome{handled: true, answered: true}, nil
}

// hboneHandshake is HBONE's mutual TLS between a client holding client and
// a server holding server, the client expecting identity want of the
// server (the destination workload's, as istiod describes it): it returns
// the client's identity the server saw, or why the handshake fails.
func hboneHandshake(client, server *Certs, want string) (string, error) {
	serverID, err := verifyPeer(server.Chain, client.Roots)
	if err != nil {
		return "", fmt.Errorf("the client does not trust the server: %w", err)
	}
	clientID, err := verifyPeer(client.Chain, server.Roots)
	if err != nil {
		return "", fmt.Errorf("the server does not trust the client: %w", err)
	}
	if serverID != want {
		return "", fmt.Errorf("the server presented %s, want %s", serverID, want)
	}
	return clientID, nil
}

// serviceOf is the service istiod describes for dst's Service.
func serviceOf(snap ztunnel.Snapshot, dst *destination) *ztunnel.Service {
	host := dst.service.Name + "." + dst.service.Namespace + ".svc.cluster.local"
	for _, s := range snap.Services {
		if s.Hostname == host && s.Namespace == dst.service.Namespace {
			return s
		}
	}
	return nil
}

// GetPodPort answers what a port-forward to a ztunnel pod would: its
// metrics on 15020 and its config dump on 15000, from the simulated
// ztunnel of that pod. Every other port is refused, as a port nothing
// listens on is.
func (e *Execer) GetPodPort(ctx context.Context, ref results.Pod, port int, path string) ([]byte, error) {
	if e.ztunnels == nil {
		return nil, fmt.Errorf("port-forward to %s:%d: the simulated data plane runs no ztunnels", ref, port)
	}
	z, err := e.ztunnels.ZtunnelOfPod(ref.Namespace, ref.Name)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s:%d: %w", ref, port, err)
	}
	switch {
	case port == probe.ZtunnelMetricsPort && (path == "/metrics" || path == "/stats/prometheus"):
		return z.Metrics(), nil
	case port == probe.ZtunnelAdminPort && strings.HasPrefix(path, "/config_dump"):
		return e.ztunnelDump(ctx, z)
	}
	return nil, fmt.Errorf("port-forward to %s:%d: GET %s: connection refused (the simulated ztunnel answers its metrics on %d and its config dump on %d)", ref, port, path, probe.ZtunnelMetricsPort, probe.ZtunnelAdminPort)
}

var _ probe.PodPortGetter = (*Execer)(nil)

// ztunnelDump is the ztunnel's config dump with the certificates it holds
// now for the ambient pods of its node.
func (e *Execer) ztunnelDump(ctx context.Context, z *ztunnel.Ztunnel) ([]byte, error) {
	pods, err := e.ambientPodsOn(ctx, z.NodeName)
	if err != nil {
		return nil, err
	}
	var dumps []ztunnel.CertsDump
	seen := map[string]bool{}
	for _, p := range pods {
		certs, err := e.ztunnelCertsOf(ctx, z, p)
		if err != nil {
			return nil, err
		}
		id, err := verifyPeer(certs.Chain, certs.Roots)
		if err != nil {
			return nil, fmt.Errorf("ztunnel %s/%s holds a certificate for %s/%s that does not verify: %w", z.Namespace, z.Name, p.Namespace, p.Name, err)
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		// The chain without its trailing root(s): ztunnel dumps the leaf
		// and intermediates as certChain, the roots as rootCerts.
		chain := certs.Chain
		if n := len(chain) - len(certs.Roots); n > 0 {
			chain = chain[:n]
		}
		dumps = append(dumps, ztunnel.AvailableCerts(id, chain, certs.Roots))
	}
	return z.ConfigDump(dumps), nil
}

// ambientPodsOn are the enrolled running pods of a node.
func (e *Execer) ambientPodsOn(ctx context.Context, node string) ([]*corev1.Pod, error) {
	var list corev1.PodList
	if err := e.world.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var out []*corev1.Pod
	for i := range list.Items {
		p := &list.Items[i]
		if p.Spec.NodeName == node && enrolled(p) && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// ambientMarkKey carries, through one request's decision, whether a
// simulated ztunnel took part in it.
type ambientMarkKey struct{}

func withAmbientMark(ctx context.Context) (context.Context, *bool) {
	mark := new(bool)
	return context.WithValue(ctx, ambientMarkKey{}, mark), mark
}

func markAmbient(ctx context.Context) {
	if mark, ok := ctx.Value(ambientMarkKey{}).(*bool); ok {
		*mark = true
	}
}

// labelAmbient says, on a result a simulated ztunnel took part in, that
// ztunnel was simulated from istiod's configuration.
func (e *Execer) labelAmbient(res *echoapi.ProbeResult, decided bool) {
	if decided && e.ztunnels != nil {
		res.DataPlane = AmbientLabel(e.ztunnels.Module())
	}
}

// httpRequestBytes is about what an HTTP/1.1 GET of u weighs on the wire.
func httpRequestBytes(u *url.URL) uint64 { return uint64(len(u.RequestURI()) + len(u.Host) + 96) }
