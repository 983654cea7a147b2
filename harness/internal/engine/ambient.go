package engine

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/probe/configdump"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// How a pair with an ambient side is proven.
//
// No sidecar adds X-Forwarded-Client-Cert in ambient mode: between an
// ambient pod and any other the mutual TLS is ztunnel's (HBONE), and the
// echo server sees none of it. The witness is ztunnel itself, with the
// method of Istio's own TestL4Telemetry: its metric
// istio_tcp_connections_opened_total, labelled with the reporter, the
// connection_security_policy (mutual_tls for HBONE, unknown for
// plaintext passed through) and the source_principal and
// destination_principal of the mutual TLS. The witnessing ztunnel is the
// server's (reporter destination, counted under the server's workload)
// when the server is ambient, else the client's (reporter source, counted
// under both workloads). ztunnel's image has no shell: its metrics (port
// 15020) are read through the API server (port-forward).
//
// As for TCP over sidecars (tcp.go), a count names no connection: each
// ambient row is probed alone, in a window that no other of meshproof's
// requests to the same witness enters (one at a time per witness, also
// across continuous traffic), and the growth must be of one kind. A
// client's sidecar may reuse an upstream connection across requests (its
// HTTP connection pool; the tunnel it opened to an ambient pod stays
// open), which ztunnel counts once: for such a client the bytes received
// (istio_tcp_received_bytes_total, counted as they flow) stand in for the
// connections. Requests that failed need no witness: ztunnel's denial
// closes the connection after the connect, a reset or an end of stream,
// never an answer.

// ZtunnelWitness reads a ztunnel pod: its metrics and the certificates its
// config dump lists (probe.ZtunnelReader reads them through the API
// server's port-forward).
type ZtunnelWitness interface {
	ZtunnelMetrics(ctx context.Context, ztunnel results.Pod) ([]istiostats.Sample, error)
	ZtunnelCertificates(ctx context.Context, ztunnel results.Pod) (map[string]configdump.ZtunnelCerts, error)
}

// WithZtunnelWitness sets how pairs with an ambient side are proven.
// Without one, a step probing such a pair fails with a harness error.
func WithZtunnelWitness(w ZtunnelWitness) Option { return func(e *Engine) { e.ztunnel = w } }

// The ztunnel pods: the ztunnel chart's DaemonSet in Istio's namespace.
const (
	ztunnelNamespace = scenario.IstioRootNamespace
	ztunnelApp       = "ztunnel"
	// ztunnelContainer is the ztunnel chart's container (it keeps the
	// sidecar's name, istio-proxy: charts/ztunnel/templates/daemonset.yaml).
	ztunnelContainer = "istio-proxy"
)

// enrolmentWait bounds how long a step waits for istio-cni to enrol a
// new ambient pod (it annotates the pod once it has redirected it).
const enrolmentWait = 30 * time.Second

// ambientPair reports whether a pair has an ambient side, or may have one:
// a side that a moveDataPlane step is moving has pods of both data planes
// until its rollout ends, and probeAmbient reads each pod's.
func (e *Engine) ambientPair(from, to string) bool {
	f, t := e.suite.Workload(from), e.suite.Workload(to)
	return f != nil && f.Ambient() || t != nil && t.Ambient() || e.moving[from] || e.moving[to]
}

// checkEnrolment fails naming every running pod of an ambient workload
// that istio-cni has not enrolled (annotation ambient.istio.io/
// redirection=enabled) within enrolmentWait: without it the pod's traffic
// bypasses ztunnel, and nothing a probe saw would be ambient's.
func (e *Engine) checkEnrolment(ctx context.Context) error {
	var missing []string
	err := wait.For(func(ctx context.Context) (bool, error) {
		missing = missing[:0]
		for _, w := range e.suite.Fixtures.Workloads {
			if !w.Ambient() {
				continue
			}
			var pods corev1.PodList
			if err := e.kube.List(ctx, &pods, client.InNamespace(w.Namespace), client.MatchingLabels{manifests.AppLabel: w.Name}); err != nil {
				return false, fmt.Errorf("listing pods of %s: %w", w.Name, err)
			}
			for _, p := range pods.Items {
				if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
					continue
				}
				if got := p.Annotations[manifests.AmbientRedirectionAnnotation]; got != manifests.AmbientRedirectionEnabled {
					missing = append(missing, fmt.Sprintf("pod %s/%s of %s (%s=%q)", p.Namespace, p.Name, w.Name, manifests.AmbientRedirectionAnnotation, got))
				}
			}
		}
		return len(missing) == 0, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(500*time.Millisecond), wait.WithTimeout(min(enrolmentWait, timeLeft(ctx))))
	if len(missing) > 0 {
		return fmt.Errorf("ambient pods not enrolled by istio-cni after %s, so their traffic bypasses ztunnel: %s (is the istio-cni DaemonSet ready on their nodes, and are they labelled %s=%s?)",
			enrolmentWait, strings.Join(missing, "; "), manifests.DataplaneModeLabel, manifests.DataplaneModeAmbient)
	}
	return err
}

// ztunnelOn is the newest running ztunnel pod of a node.
func (e *Engine) ztunnelOn(ctx context.Context, node string) (results.Pod, error) {
	var pods corev1.PodList
	if err := e.kube.List(ctx, &pods, client.InNamespace(ztunnelNamespace), client.MatchingLabels{"app": ztunnelApp}); err != nil {
		return results.Pod{}, fmt.Errorf("listing ztunnel pods: %w", err)
	}
	var best *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName != node || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		if best == nil || p.CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = p
		}
	}
	if best == nil {
		return results.Pod{}, fmt.Errorf("no running ztunnel pod on node %s (namespace %s, label app=%s)", node, ztunnelNamespace, ztunnelApp)
	}
	return results.Pod{Namespace: best.Namespace, Name: best.Name, IP: best.Status.PodIP}, nil
}

// ztunnelWindow is one witnessing ztunnel's counts before a probe.
type ztunnelWindow struct {
	pod            results.Pod
	node           string
	sel            istiostats.ZtunnelSelector
	opened, bytes  istiostats.Counts
	servedPods     []string // the server pods whose answers it witnesses ("" : any)
	answered       int
	pooledByClient bool
}

func (e *Engine) readZtunnel(ctx context.Context, w *ztunnelWindow) (opened, bytes istiostats.Counts, err error) {
	samples, err := e.ztunnel.ZtunnelMetrics(ctx, w.pod)
	if err != nil {
		return nil, nil, err
	}
	if opened, err = istiostats.ZtunnelTCP(samples, istiostats.TCPConnectionsOpened, w.sel); err != nil {
		return nil, nil, err
	}
	bytes, err = istiostats.ZtunnelTCP(samples, istiostats.TCPReceivedBytes, w.sel)
	return opened, bytes, err
}

// ambientWindows finds the witnessing ztunnels of a row and reads their
// counts before the probe. For a side being moved (e.moving) the data
// plane is each pod's own (podPlane): the server's ambient pods are
// witnessed by their ztunnels, its other pods by the client's ztunnel when
// the client pod is ambient; a server pod that answers a sidecar client
// with a sidecar of its own needs no ztunnel, and is listed in direct (its
// X-Forwarded-Client-Cert proves the request, as for any sidecar pair).
func (e *Engine) ambientWindows(ctx context.Context, from string, clientPod results.Pod, x scenario.Expectation) (windows []*ztunnelWindow, direct map[string]bool, err error) {
	client, server := e.suite.Workload(from), e.suite.Workload(x.To)
	clientPlane := client.Plane()
	var clientNode string
	if e.moving[from] || !server.Ambient() || e.moving[x.To] {
		var pod corev1.Pod
		if err := e.kube.Get(ctx, client2key(clientPod), &pod); err != nil {
			return nil, nil, fmt.Errorf("reading client pod %s: %w", clientPod, err)
		}
		clientNode = pod.Spec.NodeName
		if e.moving[from] {
			clientPlane = podPlane(&pod)
		}
	}
	pooled := clientPlane == scenario.DataPlaneSidecar && !e.isTCP(x.To, x.Port)
	// The server's pods by data plane: all ambient or all not, unless it
	// is moving.
	var ambientPods, otherPods []corev1.Pod
	switch {
	case e.moving[x.To]:
		pods, err := e.serverPods(ctx, x.To)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range pods {
			if podPlane(&p) == scenario.DataPlaneAmbient {
				ambientPods = append(ambientPods, p)
			} else {
				otherPods = append(otherPods, p)
			}
		}
	case server.Ambient():
		if ambientPods, err = e.serverPods(ctx, x.To); err != nil {
			return nil, nil, err
		}
	}
	if len(ambientPods) > 0 {
		pods := ambientPods
		byNode := map[string]*ztunnelWindow{}
		for _, p := range pods {
			w := byNode[p.Spec.NodeName]
			if w == nil {
				zp, err := e.ztunnelOn(ctx, p.Spec.NodeName)
				if err != nil {
					return nil, nil, err
				}
				w = &ztunnelWindow{pod: zp, node: p.Spec.NodeName, pooledByClient: pooled,
					sel: istiostats.ZtunnelSelector{Reporter: istiostats.ReporterDestination, Destination: istiostats.Workload{Namespace: server.Namespace, Name: server.Name}}}
				byNode[p.Spec.NodeName] = w
				windows = append(windows, w)
			}
			w.servedPods = append(w.servedPods, p.Name)
		}
	}
	// The server's pods that are not ambient: any of them when it is not
	// moving, else those listed.
	others := []string{""}
	if e.moving[x.To] {
		others = others[:0]
		for _, p := range otherPods {
			others = append(others, p.Name)
		}
	}
	switch {
	case server.Ambient() && !e.moving[x.To] || len(others) == 0:
	case clientPlane == scenario.DataPlaneAmbient:
		zp, err := e.ztunnelOn(ctx, clientNode)
		if err != nil {
			return nil, nil, err
		}
		windows = append(windows, &ztunnelWindow{pod: zp, node: clientNode, servedPods: others,
			sel: istiostats.ZtunnelSelector{Reporter: istiostats.ReporterSource,
				Source: istiostats.Workload{Namespace: client.Namespace, Name: client.Name}, Destination: istiostats.Workload{Namespace: server.Namespace, Name: server.Name}}})
	default:
		// Neither end of these requests is ambient (only a moving pair
		// gets here): the server's own data plane proves them.
		direct = map[string]bool{}
		for _, name := range others {
			direct[name] = true
		}
	}
	for _, w := range windows {
		var err error
		if w.opened, w.bytes, err = e.readZtunnel(ctx, w); err != nil {
			return nil, nil, err
		}
	}
	return windows, direct, nil
}

func client2key(p results.Pod) client.ObjectKey {
	return client.ObjectKey{Namespace: p.Namespace, Name: p.Name}
}

// answered reports whether a request reached the echo server, so that a
// ztunnel must have carried it.
func answered(r echoapi.ProbeResult) bool {
	switch r.Result {
	case echoapi.ResultMTLS, echoapi.ResultPlaintext, echoapi.ResultEchoed:
		return true
	}
	return false
}

// ambientVerdict is what a ztunnel window concluded.
type ambientVerdict struct {
	tcpVerdict
	evidence *results.ZtunnelEvidence
}

// concludeWindow reads a window's ztunnel until it has counted the
// requests it witnessed, and concludes from the growth.
func (e *Engine) concludeWindow(ctx context.Context, w *ztunnelWindow) (ambientVerdict, error) {
	var opened, bytes istiostats.Counts
	var readErr, restarted error
	err := wait.For(func(ctx context.Context) (bool, error) {
		o, b, err := e.readZtunnel(ctx, w)
		if readErr = err; err != nil {
			return false, nil
		}
		if opened, restarted = o.Since(w.opened); restarted != nil {
			return true, nil
		}
		if bytes, restarted = b.Since(w.bytes); restarted != nil {
			return true, nil
		}
		return opened.Total() >= uint64(w.answered) || (w.pooledByClient && bytes.Total() > 0), nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(tcpWitnessPoll), wait.WithTimeout(min(tcpWitnessWait, timeLeft(ctx))))
	who := fmt.Sprintf("ztunnel %s (node %s, reporter %s)", w.pod, w.node, w.sel.Reporter)
	switch {
	case restarted != nil:
		return ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("%s: %v", who, restarted))}, nil
	case err != nil && readErr != nil:
		return ambientVerdict{}, readErr
	case err != nil && ctx.Err() != nil:
		return ambientVerdict{}, ctx.Err()
	case err != nil:
		return ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("%s counted %d of the %d connections answered within %s (%s); are ztunnel's metrics reachable and counting?",
			who, opened.Total(), w.answered, tcpWitnessWait, opened))}, nil
	}
	kinds := map[istiostats.Peer]bool{}
	for p := range opened {
		kinds[p] = true
	}
	for p := range bytes {
		kinds[p] = true
	}
	if len(kinds) != 1 {
		return ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("%s counted connections of more than one kind while %d were answered: %s (bytes: %s)", who, w.answered, opened, bytes))}, nil
	}
	for p := range kinds {
		ev := &results.ZtunnelEvidence{Pod: w.pod.String(), Node: w.node, Reporter: w.sel.Reporter, SecurityPolicy: p.SecurityPolicy,
			SourcePrincipal: p.SourcePrincipal, DestinationPrincipal: p.DestinationPrincipal, Opened: opened[p], Bytes: bytes[p]}
		switch p.SecurityPolicy {
		case istiostats.PolicyMutualTLS:
			return ambientVerdict{tcpVerdict{result: scenario.ResultMTLS, clientID: p.SourcePrincipal, serverID: p.DestinationPrincipal}, ev}, nil
		case istiostats.PolicyUnknown, istiostats.PolicyNone:
			return ambientVerdict{tcpVerdict{result: scenario.ResultPlaintext}, ev}, nil
		}
		return ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("%s counted the connections with connection_security_policy %q", who, p.SecurityPolicy)), evidence: ev}, nil
	}
	panic("unreachable: one kind")
}

// probeAmbient probes one row with an ambient side inside its ztunnel
// window(s) and returns its observations, each answered request's verdict
// and identities from ztunnel's counts. An error is the harness's.
func (e *Engine) probeAmbient(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, clientPod results.Pod, x scenario.Expectation, requests int) ([]results.Observation, error) {
	if e.ztunnel == nil {
		return nil, fmt.Errorf("%s -> %s:%d has an ambient side, and this engine has no ztunnel witness to prove how its connections go", from, x.To, x.Port)
	}
	server := e.suite.Workload(x.To)
	// One window per witness at a time; a moving pair may have both kinds
	// of witness, always locked in this order.
	var keys []string
	if server.Ambient() || e.moving[x.To] {
		keys = append(keys, "ztunnel/"+x.To)
	}
	if !server.Ambient() || e.moving[x.To] {
		keys = append(keys, "ztunnel-source/"+from)
	}
	for _, key := range keys {
		lock := e.tcpLocks.of(key)
		lock.Lock()
		defer lock.Unlock()
	}

	windows, direct, err := e.ambientWindows(ctx, from, clientPod, x)
	if err != nil {
		return nil, err
	}
	target := e.target(x)
	if e.isTCP(x.To, x.Port) {
		target = e.tcpTarget(x)
	}
	spec := echoapi.ProbeSpec{
		Targets:           []echoapi.Target{target},
		RequestsPerTarget: requests,
		Timeout:           echoapi.Duration(e.suite.Defaults.RequestTimeout.Duration),
		Deadline:          echoapi.Duration(time.Duration(requests)*e.suite.Defaults.RequestTimeout.Duration + time.Second),
	}
	answers, err := e.watched(ctx, st, clientPod, spec, func() ([]echoapi.ProbeResult, error) { return e.probe(ctx, from, clientPod, spec) })
	if err != nil {
		return nil, fmt.Errorf("probing from %s (%s): %w", from, clientPod, err)
	}
	now := e.now()
	windowOf := func(r echoapi.ProbeResult) *ztunnelWindow {
		for _, w := range windows {
			for _, p := range w.servedPods {
				if p == "" || p == r.ServerPod {
					return w
				}
			}
		}
		return nil
	}
	for _, r := range answers {
		if answered(r) {
			if w := windowOf(r); w != nil {
				w.answered++
			}
		}
	}
	verdicts := map[*ztunnelWindow]ambientVerdict{}
	for _, w := range windows {
		if w.answered == 0 {
			continue
		}
		v, err := e.concludeWindow(ctx, w)
		if err != nil {
			return nil, err
		}
		verdicts[w] = v
	}
	out := make([]results.Observation, 0, len(answers))
	for _, r := range answers {
		o := e.observe(observation(now, sc.Name, st.Name, from, x, clientPod.Name, r), st)
		if answered(r) && (direct[r.ServerPod] || direct[""]) {
			out = append(out, o) // the echo server's own evidence
			continue
		}
		if answered(r) && windowOf(r) == nil && len(e.moving) > 0 {
			// A pod of a rolling workload turned ready after the windows
			// opened: no count has a baseline for it, and the mesh did
			// nothing wrong. The harness tries the round again.
			return nil, fmt.Errorf("%s -> %s:%d was answered by pod %q, which was not ready when the probe's ztunnel windows opened (%s is rolling)", from, x.To, x.Port, r.ServerPod, x.To)
		}
		if answered(r) {
			w := windowOf(r)
			v, ok := verdicts[w]
			switch {
			case w == nil || !ok:
				v = ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("pod %q answered, but was not a ready pod of %s before the probe, so no ztunnel's counts have a baseline", r.ServerPod, x.To))}
			case r.Result == echoapi.ResultMTLS && v.result == scenario.ResultPlaintext:
				v = ambientVerdict{tcpVerdict: noWitness(fmt.Sprintf("the echo server saw an X-Forwarded-Client-Cert of %s, but ztunnel counted plaintext: %s", r.PeerURI, v.evidence)), evidence: v.evidence}
			}
			o.Result, o.Reason, o.ClientID, o.ServerID = v.result, v.reason, v.clientID, v.serverID
			if v.detail != "" {
				o.Error = v.detail
			}
			o.Ztunnel = v.evidence
		}
		out = append(out, o)
	}
	return out, nil
}

// rotateAmbient is a rotate step of an ambient workload: its certificate
// lives in its node's ztunnel, read from ztunnel's config dump (its admin
// port, bound to localhost in the pod: through a port-forward) for the
// workload's identity, while mTLS traffic from another in-mesh workload
// keeps flowing to it (witnessed by ztunnel). ztunnel renews it at half
// its life (src/tls/certificate.rs refresh_at), with the TTL its chart's
// env.SECRET_TTL gives (istio.workloadCertTTL).
func (e *Engine) rotateAmbient(ctx context.Context, sc *scenario.Scenario, st *scenario.Step) error {
	if e.ztunnel == nil {
		return errors.New("the engine has no ztunnel witness: it cannot read an ambient workload's certificate")
	}
	w := e.suite.Workload(st.Rotate.Workload)
	_, inside := e.observers(w.Name)
	if inside == "" {
		return fmt.Errorf("a rotate step needs another in-mesh workload to keep traffic flowing to %s", w.Name)
	}
	ref, err := e.readyPod(ctx, w.Name)
	if err != nil {
		return err
	}
	var pod corev1.Pod
	if err := e.kube.Get(ctx, client2key(ref), &pod); err != nil {
		return fmt.Errorf("reading pod %s: %w", ref, err)
	}
	zpod, err := e.ztunnelOn(ctx, pod.Spec.NodeName)
	if err != nil {
		return err
	}
	id := w.SPIFFEID(e.cluster.Istio.TrustDomain)
	var dumpRoots []*x509.Certificate
	read := func(ctx context.Context) (ServedCert, error) {
		certs, err := e.ztunnel.ZtunnelCertificates(ctx, zpod)
		if err != nil {
			return ServedCert{}, err
		}
		c, ok := certs[id]
		switch {
		case !ok:
			return ServedCert{}, fmt.Errorf("ztunnel %s holds no certificate for %s", zpod, id)
		case c.State != "Available":
			return ServedCert{}, fmt.Errorf("ztunnel %s's certificate for %s is %s", zpod, id, c.State)
		}
		dumpRoots = c.Roots
		return servedCert(append(slices.Clone(c.Chain), c.Roots...))
	}
	if err := e.awaitFlowing(ctx, sc, st, inside, w.Name, w.Ports[0].Number); err != nil {
		return err
	}
	before, err := read(ctx)
	if err != nil {
		return fmt.Errorf("reading the certificate of %s from ztunnel's config dump: %w", w.Name, err)
	}
	e.event(sc, st, results.EventSerial, "ztunnel %s holds serial %s for %s (%s), valid %s to %s", zpod, before.Serial, w.Name, before.SPIFFEID, before.NotBefore.Format(time.RFC3339), before.NotAfter.Format(time.RFC3339))
	after, traffic, met, failed, total, err := e.awaitNewSerial(ctx, sc, st, certHolder{subject: "ztunnel " + zpod.String(), verb: "holds", of: " for " + w.Name},
		inside, w.Name, w.Ports[0].Number, before, read)
	if err != nil {
		return err
	}
	check := RotationCheck{WantID: id, Before: before, After: after, CrossReads: []CertRead{{FromZtunnel, after}}, OneSource: FromZtunnel,
		TrafficFailed: len(failed), TrafficTotal: total, FirstFailure: first(failed)}
	if check.Roots, err = e.meshRoots(ctx, w.Namespace); err != nil {
		return err
	}
	if len(dumpRoots) > 0 && !sameCerts(dumpRoots, check.Roots) {
		e.log.Info("ztunnel's roots differ from the root ConfigMap (a root rotation may be in progress)", "workload", w.Name, "configMap", RootCertConfigMap)
	}
	if err := errors.Join(check.Verify(), traffic.Err()); err != nil {
		return &DeadlineError{Deadlines: []results.Deadline{met}, Err: err}
	}
	return nil
}
