package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/probe"
)

// SidecarSource gives the xDS client that stands in for a pod's Envoy:
// the local cluster's (cluster.Sidecars), which asks the real istiod for
// the pod's configuration as the pod's Envoy would.
type SidecarSource interface {
	Client(pod *corev1.Pod) (*xds.Sidecar, error)
}

// WithSidecars makes the Execer decide every request between pods with an
// Envoy sidecar or none (proxyless pods aside) by evaluating what Envoy
// does with the configuration istiod served the sidecars on its way
// (package envoy), instead of with the oracle's rules; label is what the
// observations of those requests say answered them.
func WithSidecars(src SidecarSource, label string) Option {
	return func(e *Execer) { e.envoys, e.envoyLabel = src, label }
}

// warmWait bounds how long a request waits for a sidecar's first
// configuration: a pod that just turned Ready may not have it yet, as an
// Envoy still starting (a real pod would not be Ready before it has).
const warmWait = 20 * time.Second

// historyDepth bounds how many earlier configurations a decision is
// traced back through to find the push that made it (DecidedAt).
const historyDepth = 64

// decision is one request decided by the evaluator.
type decision struct {
	out envoy.Outcome
	// server is the pod whose application got the request (Delivered).
	server *corev1.Pod
	// at is when the push arrived after which the decision has been what
	// it is.
	at time.Time
	// nacks are the pushes a sidecar on the way rejected since the
	// configuration it decided with: a finding, since a real Envoy would
	// go on with its older configuration too, and istiod would log it.
	nacks []string
}

// evaluated decides a request of protocol p from client to dst (whose
// pod, when the Service has one, is the endpoint kube-proxy would pick)
// with the Envoy evaluator. An undecidable configuration is an error that
// names the shape and is a harness limit (probe.ErrHarnessLimit), never a
// guess.
func (e *Execer) evaluated(ctx context.Context, client *corev1.Pod, dst *destination, p envoy.Protocol, authority, path string) (*decision, error) {
	nw, err := e.network(ctx, dst)
	if err != nil {
		return nil, err
	}
	clientHost, err := nw.host(ctx, client)
	if err != nil {
		return nil, err
	}
	vip, err := netip.ParseAddr(dst.service.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("%w: Service %s/%s has no cluster IP (%q): a headless Service is not evaluated", probe.ErrHarnessLimit, dst.service.Namespace, dst.service.Name, dst.service.Spec.ClusterIP)
	}
	req := envoy.Request{Client: clientHost, Destination: netip.AddrPortFrom(vip, uint16(dst.port.Port)), Protocol: p, Authority: authority, Path: path,
		Pick: nw.pick}
	out, err := envoy.Evaluate(nw, req)
	switch {
	case nw.err != nil:
		return nil, nw.err
	case envoy.IsUndecidable(err):
		return nil, fmt.Errorf("%w: %v (trace: %s)", probe.ErrHarnessLimit, err, out.Trace)
	case err != nil:
		return nil, err
	}
	d := &decision{out: out}
	if out.Kind == envoy.Delivered {
		d.server = nw.pods[out.Server.IP]
	}
	d.at = nw.decidedAt(req, out)
	for ip, c := range nw.clients {
		used := nw.hosts[ip].Sidecar.Config
		for _, n := range c.NACKs() {
			if n.Push.Received.After(used.Push.Received) {
				d.nacks = append(d.nacks, nw.hosts[ip].Name+": "+n.String())
			}
		}
	}
	return d, nil
}

// sameDecision is whether two outcomes are one decision: how the request
// ended and whether it was mutual TLS.
func sameDecision(a, b envoy.Outcome) bool {
	return a.Kind == b.Kind && a.Status == b.Status && (a.MTLS != nil) == (b.MTLS != nil) && a.Reset == b.Reset
}

// network is the cluster as one request meets it: the pods by IP, the
// Services by cluster IP, each sidecar's configuration and identity.
type network struct {
	e        *Execer
	dst      *destination
	pods     map[netip.Addr]*corev1.Pod
	services []corev1.Service
	hosts    map[netip.Addr]*envoy.Host
	byUID    map[types.UID]*envoy.Host
	clients  map[netip.Addr]*xds.Sidecar
	ctx      context.Context
	// err is the first error met making a host during an evaluation.
	err error
}

func (e *Execer) network(ctx context.Context, dst *destination) (*network, error) {
	var pods corev1.PodList
	if err := e.world.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var svcs corev1.ServiceList
	if err := e.world.List(ctx, &svcs); err != nil {
		return nil, fmt.Errorf("listing Services: %w", err)
	}
	n := &network{e: e, dst: dst, pods: map[netip.Addr]*corev1.Pod{}, services: svcs.Items, hosts: map[netip.Addr]*envoy.Host{}, byUID: map[types.UID]*envoy.Host{}, clients: map[netip.Addr]*xds.Sidecar{}}
	for i := range pods.Items {
		p := &pods.Items[i]
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		// A terminating pod still serves until it is gone: its sidecar
		// drains (the local cluster keeps such a pod for the drain), and
		// clients whose configuration still lists it reach it.
		if cur := n.pods[ip]; cur != nil && cur.DeletionTimestamp == nil {
			continue
		}
		n.pods[ip] = p
	}
	n.ctx = ctx
	// A pod the local cluster registers with a WorkloadEntry at an address
	// of its own (its gRPC server runs there for proxyless clients) is
	// that address in istiod's endpoints: the same pod.
	var entries networkingv1.WorkloadEntryList
	if err := e.world.List(ctx, &entries); err != nil {
		return nil, fmt.Errorf("listing WorkloadEntries: %w", err)
	}
	byUID := map[types.UID]netip.Addr{}
	for ip, p := range n.pods {
		byUID[p.UID] = ip
	}
	for _, we := range entries.Items {
		addr, err := netip.ParseAddr(we.Spec.GetAddress())
		if err != nil {
			continue
		}
		for _, ref := range we.OwnerReferences {
			if ip, ok := byUID[ref.UID]; ok && ref.Kind == "Pod" {
				n.pods[addr] = n.pods[ip]
			}
		}
	}
	return n, nil
}

// host is pod as the evaluator sees it: its sidecar's configuration (the
// local cluster's xDS client's, once warm) and certificates, and the ports
// its echo serves. Hosts are made when the evaluator first meets them.
func (n *network) host(ctx context.Context, pod *corev1.Pod) (*envoy.Host, error) {
	ip, _ := netip.ParseAddr(pod.Status.PodIP)
	if h := n.byUID[pod.UID]; h != nil {
		return h, nil
	}
	h, err := n.makeHost(ctx, pod, ip)
	if err == nil {
		n.byUID[pod.UID] = h
		n.hosts[ip] = h
	}
	return h, err
}

func (n *network) makeHost(ctx context.Context, pod *corev1.Pod, ip netip.Addr) (*envoy.Host, error) {
	h := &envoy.Host{Name: pod.Namespace + "/" + pod.Name, IP: ip, Listens: listens(pod)}
	if !hasEnvoy(pod) {
		// No sidecar, or a proxyless pod: it runs no Envoy, and what it
		// sends other than its gRPC leaves it as from outside the mesh.
		return h, nil
	}
	// A pod that just started may not have its Envoy's configuration yet,
	// as a real pod's Envoy is still starting: wait, bounded, then say so
	// (a transient the engine retries, not a limit of the harness).
	wctx, cancel := context.WithTimeout(ctx, warmWait)
	defer cancel()
	var c *xds.Sidecar
	err := wait.PollUntilContextCancel(wctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
		var err error
		c, err = n.e.envoys.Client(pod)
		return err == nil, nil
	})
	if err != nil {
		_, why := n.e.envoys.Client(pod)
		return nil, fmt.Errorf("the Envoy of %s has no configuration within %s: %v", h.Name, warmWait, why)
	}
	snap, err := c.Wait(wctx, (*xds.Snapshot).Warm)
	if err != nil {
		return nil, fmt.Errorf("the Envoy of %s holds no complete configuration from istiod: %v (stream %+v, NACKs %v)", h.Name, err, c.Status(), c.NACKs())
	}
	certs, err := n.e.certsOf(ctx, pod)
	var id *envoy.Identity
	if err == nil {
		id = &envoy.Identity{Chain: certs.Chain, Roots: certs.Roots}
	} else {
		// A sidecar without certificates fails every handshake; the
		// evaluator says so in its trace.
		n.e.log.Info("simulated sidecar has no certificates", "pod", h.Name, "why", err)
	}
	h.Sidecar = &envoy.Proxy{Name: h.Name, Config: snap, Identity: id}
	n.clients[ip] = c
	return h, nil
}

// Host is the envoy.Network's: who answers at ip. A host that cannot be
// made (its sidecar has no configuration yet) is nil, and the error is
// what the evaluation returns (n.err).
func (n *network) Host(ip netip.Addr) *envoy.Host {
	p := n.pods[ip]
	if p == nil {
		return nil
	}
	h, err := n.host(n.ctx, p)
	if err != nil && n.err == nil {
		n.err = err
	}
	return h
}

// KubeProxy forwards a Service's cluster IP and port to the endpoint the
// simulation picks for the Service (the newest ready pod, see endpoint):
// the request's destination pod for the request's Service.
func (n *network) KubeProxy(vip netip.AddrPort) (netip.AddrPort, bool) {
	for i := range n.services {
		svc := &n.services[i]
		if svc.Spec.ClusterIP != vip.Addr().String() {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if uint16(sp.Port) != vip.Port() || (sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP) {
				continue
			}
			pod := n.dst.pod
			if svc.Namespace != n.dst.service.Namespace || svc.Name != n.dst.service.Name {
				var err error
				if pod, err = n.e.endpoint(context.Background(), svc); err != nil {
					n.err = err
					return netip.AddrPort{}, false
				}
			}
			if pod == nil {
				return netip.AddrPort{}, false
			}
			ip, err := netip.ParseAddr(pod.Status.PodIP)
			if err != nil {
				return netip.AddrPort{}, false
			}
			return netip.AddrPortFrom(ip, uint16(targetPort(pod, sp))), true
		}
	}
	return netip.AddrPort{}, false
}

// pick is the client sidecar's load balancer: the EDS endpoint of the pod
// kube-proxy would pick when EDS has it, so that both paths meet the same
// pod, else the first.
func (n *network) pick(eps []netip.AddrPort) int {
	if n.dst.pod != nil {
		for i, ep := range eps {
			if ep.Addr().String() == n.dst.pod.Status.PodIP {
				return i
			}
		}
	}
	return 0
}

// listens are the protocols the echo in pod answers on a port, from its
// app container's arguments: HTTP and the TCP echo on --ports (it sorts
// connections by their first bytes), gRPC on --grpc-ports.
func listens(pod *corev1.Pod) func(uint16) []envoy.Protocol {
	ports := map[uint16][]envoy.Protocol{}
	for _, c := range pod.Spec.Containers {
		if c.Name != manifests.ContainerName {
			continue
		}
		for _, a := range append(slices.Clone(c.Command), c.Args...) {
			for flag, protos := range map[string][]envoy.Protocol{"--ports=": {envoy.HTTP1, envoy.TCP}, "--grpc-ports=": {envoy.GRPC}} {
				list, ok := strings.CutPrefix(a, flag)
				if !ok {
					continue
				}
				for _, p := range strings.Split(list, ",") {
					if n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16); err == nil && n > 0 {
						ports[uint16(n)] = protos
					}
				}
			}
		}
	}
	return func(p uint16) []envoy.Protocol { return ports[p] }
}

// decidedAt is when the push arrived after which req's decision has been
// what it is now: going back through the pushes of the sidecars on the
// request's way, newest first, to the first one before which the
// evaluator decides otherwise (or cannot decide). When none within
// historyDepth pushes changes it, the oldest push looked at is the answer
// (the decision is at least that old); zero when no sidecar is on the way.
func (n *network) decidedAt(req envoy.Request, now envoy.Outcome) time.Time {
	type push struct {
		ip         netip.Addr
		snap, prev *xds.Snapshot
	}
	var pushes []push
	current := map[netip.Addr]*xds.Snapshot{}
	for ip, c := range n.clients {
		used := n.hosts[ip].Sidecar.Config
		current[ip] = used
		snaps := c.Snapshots()
		i := slices.IndexFunc(snaps, func(s *xds.Snapshot) bool { return s.Seq == used.Seq })
		for ; i > 0 && len(pushes) < historyDepth*len(n.clients); i-- {
			pushes = append(pushes, push{ip: ip, snap: snaps[i], prev: snaps[i-1]})
		}
	}
	sort.Slice(pushes, func(i, j int) bool { return pushes[i].snap.Push.Received.After(pushes[j].snap.Push.Received) })
	if len(pushes) > historyDepth {
		pushes = pushes[:historyDepth]
	}
	var at time.Time
	for _, p := range pushes {
		at = p.snap.Push.Received
		current[p.ip] = p.prev
		before := &rewound{network: n, configs: current}
		r := req
		r.Client = before.Host(r.Client.IP)
		if r.Client == nil {
			r.Client = req.Client
		}
		out, err := envoy.Evaluate(before, r)
		if err != nil || !sameDecision(out, now) {
			return at
		}
	}
	return at
}

// rewound is the network with some sidecars' earlier configurations.
type rewound struct {
	*network
	configs map[netip.Addr]*xds.Snapshot
}

func (r *rewound) Host(ip netip.Addr) *envoy.Host {
	h := r.network.Host(ip)
	if h == nil || h.Sidecar == nil {
		return h
	}
	// A host the evaluation met only now (made while rewinding) has no
	// earlier configuration in configs: it keeps the one it was made with.
	c, ok := r.configs[ip]
	if !ok {
		return h
	}
	cp := *h
	sc := *h.Sidecar
	sc.Config = c
	cp.Sidecar = &sc
	return &cp
}
