package engine

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// How a TCP port's result is proven.
//
// Over HTTP the server's sidecar adds X-Forwarded-Client-Cert to a request
// that arrived over mutual TLS, and the echo server shows it. Over TCP
// nothing reaches the application but the bytes, so the echo's round trip
// proves only that the connection worked (echoapi.ResultEchoed). The
// witness of how it arrived is the server's sidecar itself: Istio's stats
// filter counts every inbound TCP connection in
// istio_tcp_connections_opened_total{reporter="destination"} with its
// connection_security_policy (mutual_tls or none) and the client's and its
// own SPIFFE identity (source_principal, destination_principal); see
// harness/internal/probe/istiostats for the source. The engine reads those counts
// from every ready pod of the server workload before the probe, runs the
// probe, and reads the counts of the pod that answered until they have
// grown by at least the connections echoed (bounded by tcpWitnessWait).
//
// A count names no connection, so the engine keeps other connections out
// of the window and refuses to guess when one got in: the TCP probes of
// one server workload are serialised (one witness window at a time, also
// across continuous traffic's concurrent clients), and the window's
// growth must be of exactly one kind of peer. Then every echoed connection
// was that kind: mtls with the counted identities, or plaintext. Growth of
// several kinds (another client's connections, the probe's own failed
// attempts counted differently), a count that went down (a restarted
// sidecar) or no growth in time (Istio's telemetry turned off) is
// fail/no-witness, which no expectation accepts: the connection worked,
// and how is unproven. A server pod without a sidecar needs no witness: no
// sidecar can have terminated mutual TLS in front of it, so an echo from
// it is plaintext.

// ReasonNoWitness is the fail reason of a TCP connection that echoed but
// whose server sidecar's statistics could not tell how it arrived; it is
// never what a step expects.
const ReasonNoWitness = "no-witness"

// tcpWitnessWait bounds the wait for the server's sidecar to count the
// probe's connections. Istio counts a TCP connection at the latest when
// it closes, which the probe's have by the time it returns; the rest is
// the sidecar's event loop and the exec.
const tcpWitnessWait = 10 * time.Second

// tcpWitnessPoll is how often the counts are read within that wait.
const tcpWitnessPoll = 250 * time.Millisecond

// ConnectionWitness reads what a server pod's sidecar counted of the TCP
// connections it accepted, by peer (probe.StatsReader reads Istio's
// standard metrics through the sidecar's admin interface).
type ConnectionWitness interface {
	InboundTCP(ctx context.Context, server results.Pod) (istiostats.Counts, error)
}

// WithConnectionWitness sets how TCP ports' results are proven. Without
// one, a step probing a tcp port fails with a harness error: mtls over TCP
// cannot be told from plaintext without it.
func WithConnectionWitness(w ConnectionWitness) Option { return func(e *Engine) { e.witness = w } }

// keyedLocks is one mutex per key: the TCP witness windows per server
// workload, the probes per proxyless client workload.
type keyedLocks struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (w *keyedLocks) of(workload string) *sync.Mutex {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.locks == nil {
		w.locks = map[string]*sync.Mutex{}
	}
	if w.locks[workload] == nil {
		w.locks[workload] = &sync.Mutex{}
	}
	return w.locks[workload]
}

// isTCP reports whether a server's port carries TCP.
func (e *Engine) isTCP(to string, port int) bool {
	w := e.suite.Workload(to)
	if w == nil {
		return false
	}
	p := w.Port(port)
	return p != nil && p.Protocol == scenario.ProtocolTCP
}

// tcpTarget is a TCP row's target: the server's Service, as for HTTP.
func (e *Engine) tcpTarget(x scenario.Expectation) echoapi.Target {
	w := e.suite.Workload(x.To)
	u := url.URL{Scheme: "tcp", Host: fmt.Sprintf("%s.%s.svc.cluster.local:%d", w.Name, w.Namespace, x.Port)}
	return echoapi.Target{Name: targetName(x.To, x.Port), URL: u.String(), Port: x.Port}
}

// serverPods are the workload's pods that may take a connection: the
// Service's endpoints, running, ready and not terminating. A pod not ready
// yet (its sidecar may not answer its admin requests either) gets no
// baseline; should it answer all the same, its echo is unwitnessed.
func (e *Engine) serverPods(ctx context.Context, workload string) ([]corev1.Pod, error) {
	w := e.suite.Workload(workload)
	var pods corev1.PodList
	if err := e.kube.List(ctx, &pods, client.InNamespace(w.Namespace), client.MatchingLabels{"app": w.Name}); err != nil {
		return nil, fmt.Errorf("listing pods of %s: %w", w.Name, err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && podReady(&p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// tcpVerdict is what the witness concluded for the connections one server
// pod echoed.
type tcpVerdict struct {
	result             scenario.Result
	reason             string
	clientID, serverID string
	detail             string // why no-witness
}

// probeTCP probes one TCP row (requests connections) from a client pod
// inside one witness window and returns its observations. An error is the
// harness's: no request ran, or its witness could not be read.
func (e *Engine) probeTCP(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, client results.Pod, x scenario.Expectation, requests int) ([]results.Observation, error) {
	if e.witness == nil {
		return nil, fmt.Errorf("%s -> %s:%d is a tcp port, and this engine has no connection witness to prove how its connections arrive", from, x.To, x.Port)
	}
	lock := e.tcpLocks.of(x.To)
	lock.Lock()
	defer lock.Unlock()

	pods, err := e.serverPods(ctx, x.To)
	if err != nil {
		return nil, err
	}
	before := map[string]istiostats.Counts{}
	withoutSidecar := map[string]bool{}
	for i := range pods {
		p := &pods[i]
		if injection.Proxy(p) == nil {
			withoutSidecar[p.Name] = true
			continue
		}
		counts, err := e.witness.InboundTCP(ctx, results.Pod{Namespace: p.Namespace, Name: p.Name, IP: p.Status.PodIP})
		if err != nil {
			return nil, err
		}
		before[p.Name] = counts
	}

	spec := echoapi.ProbeSpec{
		Targets:           []echoapi.Target{e.tcpTarget(x)},
		RequestsPerTarget: requests,
		Timeout:           echoapi.Duration(e.suite.Defaults.RequestTimeout.Duration),
		Deadline:          echoapi.Duration(time.Duration(requests)*e.suite.Defaults.RequestTimeout.Duration + time.Second),
	}
	answers, err := e.watched(ctx, st, client, spec, func() ([]echoapi.ProbeResult, error) { return e.prober.Probe(ctx, client, spec) })
	if err != nil {
		return nil, fmt.Errorf("probing from %s (%s): %w", from, client, err)
	}
	now := e.now()

	echoed := map[string]int{}
	for _, r := range answers {
		if r.Result == echoapi.ResultEchoed {
			echoed[r.ServerPod]++
		}
	}
	verdicts := map[string]tcpVerdict{}
	for server, n := range echoed {
		switch counts, ok := before[server]; {
		case withoutSidecar[server]:
			verdicts[server] = tcpVerdict{result: scenario.ResultPlaintext}
		case !ok:
			verdicts[server] = noWitness(fmt.Sprintf("pod %q answered, but was not a ready pod of %s before the probe, so its sidecar's counts have no baseline", server, x.To))
		default:
			ref := results.Pod{Namespace: e.suite.Workload(x.To).Namespace, Name: server}
			v, err := e.witnessed(ctx, ref, counts, n)
			if err != nil {
				return nil, err
			}
			verdicts[server] = v
		}
	}

	out := make([]results.Observation, 0, len(answers))
	for _, r := range answers {
		o := e.observe(observation(now, sc.Name, st.Name, from, x, client.Name, r), st)
		if r.Result == echoapi.ResultEchoed {
			v := verdicts[r.ServerPod]
			o.Result, o.Reason, o.ClientID, o.ServerID = v.result, v.reason, v.clientID, v.serverID
			if v.detail != "" {
				o.Error = v.detail
			}
		}
		out = append(out, o)
	}
	return out, nil
}

func noWitness(detail string) tcpVerdict {
	return tcpVerdict{result: scenario.ResultFail, reason: ReasonNoWitness, detail: detail}
}

// witnessed reads a server pod's counts until they have grown by at least
// the n connections it echoed, and concludes from the growth. An error is
// a sidecar whose statistics cannot be read.
func (e *Engine) witnessed(ctx context.Context, server results.Pod, before istiostats.Counts, n int) (tcpVerdict, error) {
	var delta istiostats.Counts
	var readErr, restarted error
	err := wait.For(func(ctx context.Context) (bool, error) {
		after, err := e.witness.InboundTCP(ctx, server)
		if readErr = err; err != nil {
			return false, nil
		}
		if delta, restarted = after.Since(before); restarted != nil {
			return true, nil
		}
		return delta.Total() >= uint64(n), nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(tcpWitnessPoll), wait.WithTimeout(min(tcpWitnessWait, timeLeft(ctx))))
	switch {
	case restarted != nil:
		return noWitness(fmt.Sprintf("the sidecar of %s: %v", server, restarted)), nil
	case err != nil && readErr != nil:
		return tcpVerdict{}, readErr
	case err != nil && ctx.Err() != nil:
		return tcpVerdict{}, ctx.Err()
	case err != nil:
		return noWitness(fmt.Sprintf("the sidecar of %s counted %d of the %d connections echoed within %s (%s); are Istio's standard metrics turned off?",
			server, delta.Total(), n, tcpWitnessWait, delta)), nil
	case len(delta) != 1:
		return noWitness(fmt.Sprintf("the sidecar of %s counted connections of more than one kind while %d were probed: %s", server, n, delta)), nil
	}
	for p := range delta {
		switch p.SecurityPolicy {
		case istiostats.PolicyMutualTLS:
			return tcpVerdict{result: scenario.ResultMTLS, clientID: p.SourcePrincipal, serverID: p.DestinationPrincipal}, nil
		case istiostats.PolicyNone:
			return tcpVerdict{result: scenario.ResultPlaintext}, nil
		}
		return noWitness(fmt.Sprintf("the sidecar of %s counted the connections with connection_security_policy %q", server, p.SecurityPolicy)), nil
	}
	panic("unreachable: delta has one peer")
}
