package dataplane

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The names the oracle knows the two ends of one request by.
const (
	clientKey = "client"
	serverKey = "server"
)

// serviceAccount is the pod's ServiceAccount as the API server stores it.
func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// destination is where one request goes: the Service the URL names, the
// service port, and the pod that would take it.
type destination struct {
	service *corev1.Service
	port    corev1.ServicePort
	pod     *corev1.Pod // nil: the Service has no ready endpoint
}

// errNoSuchHost is a name cluster DNS would not resolve.
type errNoSuchHost struct{ host string }

func (e *errNoSuchHost) Error() string { return "lookup " + e.host + ": no such host" }

// resolve finds the Service a request from a pod in clientNS to host:port
// reaches, as cluster DNS and kube-proxy (or the client's sidecar) route it.
func (e *Execer) resolve(ctx context.Context, clientNS, host string, port int) (*destination, error) {
	name, ns, ok := ServiceName(host, clientNS)
	if !ok {
		return nil, &errNoSuchHost{host: host}
	}
	var svc corev1.Service
	if err := e.world.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, &errNoSuchHost{host: host}
		}
		return nil, fmt.Errorf("reading Service %s/%s: %w", ns, name, err)
	}
	d := &destination{service: &svc}
	found := false
	for _, p := range svc.Spec.Ports {
		if int(p.Port) == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
			d.port, found = p, true
		}
	}
	if !found {
		return d, fmt.Errorf("service %s/%s has no port %d", ns, name, port)
	}
	pod, err := e.endpoint(ctx, &svc)
	if err != nil {
		return nil, err
	}
	d.pod = pod
	return d, nil
}

// ServiceName reads a Service's name and namespace out of a cluster host
// name as the cluster's DNS would: name (in clientNS), name.ns, name.ns.svc,
// name.ns.svc.cluster.local.
func ServiceName(host, clientNS string) (name, ns string, ok bool) {
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	switch {
	case len(parts) == 1:
		return parts[0], clientNS, parts[0] != ""
	case len(parts) == 2, len(parts) == 3 && parts[2] == "svc",
		len(parts) == 5 && parts[2] == "svc" && parts[3] == "cluster" && parts[4] == "local":
		return parts[0], parts[1], parts[0] != "" && parts[1] != ""
	}
	return "", "", false
}

// endpoint is the newest running, ready, not terminating pod the Service
// selects: the one the EndpointSlice controller would list.
func (e *Execer) endpoint(ctx context.Context, svc *corev1.Service) (*corev1.Pod, error) {
	if len(svc.Spec.Selector) == 0 {
		return nil, nil
	}
	var pods corev1.PodList
	if err := e.world.List(ctx, &pods, client.InNamespace(svc.Namespace), client.MatchingLabels(svc.Spec.Selector)); err != nil {
		return nil, fmt.Errorf("listing the pods of Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	var best *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !ready(p) || p.Status.PodIP == "" {
			continue
		}
		if best == nil || p.CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = p
		}
	}
	return best, nil
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// targetPort is the container port a service port forwards to.
func targetPort(pod *corev1.Pod, p corev1.ServicePort) int {
	switch {
	case p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0:
		return int(p.TargetPort.IntVal)
	case p.TargetPort.Type == intstr.String && p.TargetPort.StrVal != "" && pod != nil:
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == p.TargetPort.StrVal {
					return int(cp.ContainerPort)
				}
			}
		}
	}
	return int(p.Port)
}

// protocol is the protocol Istio selects for a Service port: its
// appProtocol, else its name's prefix (ConvertProtocol in istio/istio
// pkg/config/kube/conversion.go); tcp or grpc when it says so (the echo
// serves its gRPC service on a grpc port), http otherwise.
func protocol(p corev1.ServicePort) scenario.PortProtocol {
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
	}
	switch scenario.NameProtocol(name) {
	case string(scenario.ProtocolTCP):
		return scenario.ProtocolTCP
	case string(scenario.ProtocolGRPC):
		return scenario.ProtocolGRPC
	}
	return scenario.ProtocolHTTP
}

// podByIP finds the running pod that has ip, as a connection to it would.
func (e *Execer) podByIP(ctx context.Context, ip string) (*corev1.Pod, error) {
	var pods corev1.PodList
	if err := e.world.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.PodIP == ip && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return p, nil
		}
	}
	return nil, nil
}

// predict asks the oracle what a request from client to port of dst's
// Service does, given the policies stored in the API server right now.
func (e *Execer) predict(ctx context.Context, clientPod *corev1.Pod, dst *destination) (oracle.Prediction, error) {
	port := int(dst.port.Port)
	clientW := scenario.Workload{Name: clientKey, Namespace: clientPod.Namespace, ServiceAccount: serviceAccount(clientPod), Mesh: ptr(injection.Proxy(clientPod) != nil),
		// A proxyless client reaches the simulation only with its HTTP and
		// TCP (grpcanswers.go), which the oracle's mixed rules send as
		// from outside the mesh: pilot-agent intercepts nothing.
		Proxyless: proxyless(clientPod)}
	serverW := scenario.Workload{Name: serverKey, Namespace: dst.service.Namespace, Mesh: ptr(injection.Proxy(dst.pod) != nil),
		Ports: []scenario.Port{{Name: dst.port.Name, Number: port, TargetPort: targetPort(dst.pod, dst.port), Protocol: protocol(dst.port)}}}
	serverW.ServiceAccount = serviceAccount(dst.pod)
	if proxyless(dst.pod) {
		// The oracle's proxyless rules: grpc-go's listener as istiod
		// builds it, and the label that turns PERMISSIVE into STRICT and
		// makes a sidecar client's auto mTLS send mTLS.
		serverW.Proxyless = true
		serverW.TLSModeLabel = dst.pod.Labels[manifests.TLSModeLabel] == manifests.TLSModeIstio
	}
	pas, err := e.peerAuthentications(ctx, dst)
	if err != nil {
		return oracle.Prediction{}, err
	}
	drs, err := e.destinationRules(ctx, clientPod.Namespace, dst.service)
	if err != nil {
		return oracle.Prediction{}, err
	}
	suite := &scenario.Suite{Fixtures: scenario.Fixtures{Workloads: []scenario.Workload{clientW, serverW}}}
	preds, err := oracle.PredictPolicies(suite, &scenario.MTLSStep{PeerAuthentications: pas, DestinationRules: drs})
	if err != nil {
		return oracle.Prediction{}, fmt.Errorf("the stored policies towards %s/%s: %w", dst.service.Namespace, dst.service.Name, err)
	}
	p, ok := oracle.Find(preds, clientKey, serverKey, port)
	if !ok {
		return oracle.Prediction{}, fmt.Errorf("the oracle made no prediction for port %d", port)
	}
	return p, nil
}

func ptr[T any](v T) *T { return &v }

// peerAuthentications converts the stored PeerAuthentications that bear on
// dst's pod to the oracle's form: the mesh-wide ones (root namespace, no
// selector), the server namespace's, and those whose selector matches the
// pod's labels. Port-level modes are keyed by container port, in Istio as
// in the oracle, which maps the probed Service port to it.
func (e *Execer) peerAuthentications(ctx context.Context, dst *destination) ([]scenario.PeerAuthentication, error) {
	var list securityv1.PeerAuthenticationList
	if err := e.world.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing PeerAuthentications: %w", err)
	}
	serverNS := dst.service.Namespace
	var out []scenario.PeerAuthentication
	for _, pa := range list.Items {
		if pa.Namespace != serverNS && pa.Namespace != e.rootNS {
			continue
		}
		mode := scenario.MTLSMode(pa.Spec.GetMtls().GetMode().String())
		sel := pa.Spec.GetSelector().GetMatchLabels()
		if len(sel) == 0 {
			scope := scenario.ScopeNamespace
			if pa.Namespace == e.rootNS {
				scope = scenario.ScopeMesh
			}
			out = append(out, scenario.PeerAuthentication{Scope: scope, Namespace: pa.Namespace, Mode: mode})
			continue
		}
		// A selector in the root namespace is ignored by Istio; the oracle
		// says so, so it gets the policy as written.
		if pa.Namespace != e.rootNS && (dst.pod == nil || !labels.SelectorFromSet(sel).Matches(labels.Set(dst.pod.Labels))) {
			continue
		}
		conv := scenario.PeerAuthentication{Scope: scenario.ScopeWorkload, Namespace: pa.Namespace, Workload: serverKey, Mode: mode}
		for containerPort, m := range pa.Spec.GetPortLevelMtls() {
			if int(containerPort) == targetPort(dst.pod, dst.port) {
				conv.Ports = append(conv.Ports, scenario.PortMode{Port: int(containerPort), Mode: scenario.MTLSMode(m.GetMode().String())})
			}
		}
		out = append(out, conv)
	}
	return out, nil
}

// destinationRules converts the DestinationRules a client in clientNS
// applies to svc, as PushContext.destinationRule in istio/istio
// pilot/pkg/model/push_context.go chooses them: the client's namespace,
// then the Service's, then the root namespace; the first namespace with a
// rule for the host wins, and within it the rules of the most specific
// host (MostSpecificHostMatch in pilot/pkg/model/config.go: the exact host,
// else the longest wildcard). A wildcard rule of the root namespace (host
// "*", as Istio's global-dr) is given to the oracle as mesh-wide, which
// says so in its reason. exportTo and workloadSelector are not modelled: a
// rule using them is refused rather than guessed at.
func (e *Execer) destinationRules(ctx context.Context, clientNS string, svc *corev1.Service) ([]scenario.DestinationRule, error) {
	var list networkingv1.DestinationRuleList
	if err := e.world.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing DestinationRules: %w", err)
	}
	fqdn := svc.Name + "." + svc.Namespace + ".svc.cluster.local"
	for _, ns := range []string{clientNS, svc.Namespace, e.rootNS} {
		var matching []*networkingv1.DestinationRule
		best := -1
		for _, dr := range list.Items {
			if dr.Namespace != ns || !hostMatches(dr.Spec.GetHost(), dr.Namespace, fqdn) {
				continue
			}
			switch spec := hostSpecificity(dr.Spec.GetHost()); {
			case spec > best:
				matching, best = []*networkingv1.DestinationRule{dr}, spec
			case spec == best:
				matching = append(matching, dr)
			}
		}
		if len(matching) == 0 {
			continue
		}
		var out []scenario.DestinationRule
		for _, dr := range matching {
			if len(dr.Spec.GetExportTo()) > 0 || dr.Spec.GetWorkloadSelector() != nil {
				return nil, fmt.Errorf("DestinationRule %s/%s uses exportTo or workloadSelector, which the simulated data plane does not model", dr.Namespace, dr.Name)
			}
			base := scenario.DestinationRule{Scope: scenario.DRScopeWorkload, Workload: serverKey}
			if dr.Namespace == e.rootNS && strings.HasPrefix(dr.Spec.GetHost(), "*") {
				base = scenario.DestinationRule{Scope: scenario.DRScopeMesh}
			}
			tp := dr.Spec.GetTrafficPolicy()
			if tls := tp.GetTls(); tls != nil {
				mode, err := tlsMode(dr, tls.GetMode().String())
				if err != nil {
					return nil, err
				}
				r := base
				r.Mode = mode
				out = append(out, r)
			}
			for _, pl := range tp.GetPortLevelSettings() {
				if pl.GetTls() == nil {
					continue
				}
				mode, err := tlsMode(dr, pl.GetTls().GetMode().String())
				if err != nil {
					return nil, err
				}
				r := base
				r.Mode, r.Port = mode, int(pl.GetPort().GetNumber())
				out = append(out, r)
			}
		}
		// A rule for the host without TLS settings still shadows the rules
		// of later namespaces; with no mode it leaves auto mTLS.
		return out, nil
	}
	return nil, nil
}

// hostSpecificity orders the hosts that match one name as
// MostSpecificHostMatch does: an exact host first, then wildcards by the
// length of what they fix.
func hostSpecificity(host string) int {
	if !strings.HasPrefix(host, "*") {
		return 1 << 30
	}
	return len(host)
}

// tlsMode converts a stored rule's client TLS mode. SIMPLE is one-way TLS
// the oracle decides (no server side of the fixtures terminates it); MUTUAL
// carries the user's own credentials, which the simulation does not hold.
func tlsMode(dr *networkingv1.DestinationRule, mode string) (scenario.TLSMode, error) {
	switch m := scenario.TLSMode(mode); m {
	case scenario.TLSDisable, scenario.TLSIstioMutual, scenario.TLSSimple:
		return m, nil
	}
	return "", fmt.Errorf("DestinationRule %s/%s sets tls mode %s, which the simulated data plane does not model (DISABLE, ISTIO_MUTUAL and SIMPLE only)", dr.Namespace, dr.Name, mode)
}

// hostMatches reports whether a DestinationRule host, written in namespace
// ns, names fqdn: a short name is relative to the rule's namespace, and a
// leading "*." matches any prefix.
func hostMatches(host, ns, fqdn string) bool {
	switch {
	case host == fqdn:
		return true
	case strings.HasPrefix(host, "*"):
		return strings.HasSuffix(fqdn, strings.TrimPrefix(host, "*"))
	case !strings.Contains(host, "."):
		return host+"."+ns+".svc.cluster.local" == fqdn
	}
	name, hns, ok := ServiceName(host, ns)
	return ok && name+"."+hns+".svc.cluster.local" == fqdn
}

// hostPort splits a URL's host, the port defaulting to 80.
func hostPort(hostport string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, 80, nil
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", portStr, err)
	}
	return host, port, nil
}

// proxyEnv reads a variable injection put into the sidecar's environment
// (proxyMetadata lands there).
func proxyEnv(pod *corev1.Pod, name string) string {
	c := injection.Proxy(pod)
	if c == nil {
		return ""
	}
	for _, env := range c.Env {
		if env.Name == name {
			return env.Value
		}
	}
	return ""
}

// secretTTL and gracePeriodRatio are istio-agent's SECRET_TTL and
// SECRET_GRACE_PERIOD_RATIO as the pod's sidecar has them, with the
// agent's defaults (24h, 0.5).
func secretTTL(pod *corev1.Pod) (time.Duration, error) {
	v := proxyEnv(pod, "SECRET_TTL")
	if v == "" {
		return 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("pod %s/%s: SECRET_TTL %q is not a positive duration", pod.Namespace, pod.Name, v)
	}
	return d, nil
}

func gracePeriodRatio(pod *corev1.Pod) (float64, error) {
	v := proxyEnv(pod, "SECRET_GRACE_PERIOD_RATIO")
	if v == "" {
		return 0.5, nil
	}
	r, err := strconv.ParseFloat(v, 64)
	if err != nil || r < 0 || r > 1 {
		return 0, fmt.Errorf("pod %s/%s: SECRET_GRACE_PERIOD_RATIO %q is not a number from 0 to 1", pod.Namespace, pod.Name, v)
	}
	return r, nil
}

// terminatesMTLS asks the oracle whether the server pod's sidecar
// terminates Istio mTLS on a container port under the stored
// PeerAuthentications: what an in-mesh client that insists on mTLS
// (ISTIO_MUTUAL) would get. A DISABLE port has no TLS filter chain, so a
// handshake there sees no certificate.
func (e *Execer) terminatesMTLS(ctx context.Context, server *corev1.Pod, port int) (bool, error) {
	dst := &destination{
		service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: server.Namespace}},
		port:    corev1.ServicePort{Port: int32(port), TargetPort: intstr.FromInt32(int32(port))},
		pod:     server,
	}
	pas, err := e.peerAuthentications(ctx, dst)
	if err != nil {
		return false, err
	}
	clientW := scenario.Workload{Name: clientKey, Namespace: server.Namespace, Mesh: ptr(true)}
	serverW := scenario.Workload{Name: serverKey, Namespace: server.Namespace, Mesh: ptr(true), Ports: []scenario.Port{{Number: port}}}
	suite := &scenario.Suite{Fixtures: scenario.Fixtures{Workloads: []scenario.Workload{clientW, serverW}}}
	preds, err := oracle.PredictPolicies(suite, &scenario.MTLSStep{PeerAuthentications: pas,
		DestinationRules: []scenario.DestinationRule{{Workload: serverKey, Mode: scenario.TLSIstioMutual}}})
	if err != nil {
		return false, fmt.Errorf("the stored PeerAuthentications of %s/%s: %w", server.Namespace, server.Name, err)
	}
	p, ok := oracle.Find(preds, clientKey, serverKey, port)
	if !ok {
		return false, fmt.Errorf("the oracle made no prediction for port %d", port)
	}
	return p.Result == scenario.ResultMTLS, nil
}
