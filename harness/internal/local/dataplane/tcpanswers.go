package dataplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/scenario"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// probeTCP is one TCP echo of a batch: what `echo probe` reports of a
// tcp:// target, decided like an HTTP request from the stored objects, and
// counted by the server's simulated sidecar as Istio's stats filter counts
// it, for the harness's witness to read (stats).
func (e *Execer) probeTCP(ctx context.Context, client *corev1.Pod, t echoapi.Target, attempt int) (echoapi.ProbeResult, error) {
	start := time.Now()
	nonce := newNonce()
	ctx, decided := withAmbientMark(ctx)
	reply, reqErr, d, err := e.exchangeTCP(ctx, client, t, nonce)
	if err != nil {
		return echoapi.ProbeResult{}, err
	}
	latency := time.Since(start)
	outcome, echo := echoapi.ClassifyTCP(reply, nonce, reqErr)
	res := echoapi.ProbeResult{
		Target: t.Name, URL: t.URL, Attempt: attempt,
		Latency: latency.String(), LatencyNS: latency.Nanoseconds(),
		Result: outcome.Result, Reason: outcome.Reason,
	}
	if reqErr != nil {
		res.Error = reqErr.Error()
	}
	if echo != nil {
		res.ServerPod, res.ServerNamespace, res.ServerServiceAccount = echo.Pod, echo.Namespace, echo.ServiceAccount
	}
	e.label(&res, d)
	e.labelAmbient(&res, *decided)
	return res, nil
}

func newNonce() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// exchangeTCP decides one connection: the reply line the probe would read,
// or the error its dial or read would fail with. err is a failure of the
// simulation itself.
//
// The oracle decides mtls, plaintext or fail as for HTTP; the surfaces of
// a failure differ, since tcp_proxy has no HTTP status to answer with.
// Where a client without sidecar meets a sidecar that refuses it (STRICT),
// the sidecar closes a connection whose first bytes it never read, which
// the kernel turns into a reset, as in Istio's task where curl sees exit
// code 56. Where the client's own sidecar could not make or keep its
// upstream connection, that sidecar's tcp_proxy closes the probe's
// connection: with the greeting unread (a reset) when the upstream failed
// before it was established, e.g. an mTLS handshake the server side does
// not finish, after reading it (an EOF) when the upstream closed later,
// e.g. plaintext a STRICT server resets (the oracle's [TCPCLOSE]). The
// simulation renders both as an EOF; the oracle leaves a TCP failure's
// reason open, so no expectation depends on which.
func (e *Execer) exchangeTCP(ctx context.Context, client *corev1.Pod, t echoapi.Target, nonce string) (reply []byte, reqErr error, d *decision, err error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("target URL %q: %w", t.URL, err)
	}
	host, port, err := hostPort(u.Host)
	if err != nil {
		return nil, nil, nil, err
	}
	if t.Port != 0 {
		port = t.Port
	}
	dialErr := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	dst, err := e.resolve(ctx, client.Namespace, host, port)
	var noHost *errNoSuchHost
	switch {
	case errors.As(err, &noHost):
		return nil, dialErr(&net.DNSError{Err: "no such host", Name: host, IsNotFound: true}), nil, nil
	case err != nil && dst != nil:
		return nil, connError("dial", syscall.ECONNREFUSED), nil, nil
	case err != nil:
		return nil, nil, nil, err
	case protocol(dst.port) == scenario.ProtocolGRPC:
		return nil, nil, nil, errWrongProtocol(t, dst)
	}
	if dst.pod != nil {
		switch out, err := e.ambient(ctx, client, dst, uint64(len(nonce)+1), 256); {
		case err != nil:
			return nil, nil, nil, err
		case out.handled:
			markAmbient(ctx)
			switch {
			case out.answered:
				return tcpEchoReply(client, dst, nonce), nil, nil, nil
			case out.upstream503:
				return nil, io.EOF, nil, nil
			}
			return nil, connError("read", syscall.ECONNRESET), nil, nil
		case enrolled(client):
			markAmbient(ctx)
		}
	}
	if e.decidesByEnvoy(client, dst) {
		d, err := e.evaluated(ctx, client, dst, envoy.TCP, u.Host, "")
		if err != nil {
			return nil, nil, nil, err
		}
		reply, reqErr := e.renderTCP(client, dst, nonce, d)
		return reply, reqErr, d, nil
	}
	reply, reqErr, err = e.exchangeByOracle(ctx, client, dst, nonce)
	return reply, reqErr, nil, err
}

// exchangeByOracle decides a TCP exchange from the oracle's rules: for a
// proxyless end, or without the Envoy evaluator (WithSidecars).
func (e *Execer) exchangeByOracle(ctx context.Context, client *corev1.Pod, dst *destination, nonce string) (reply []byte, reqErr, err error) {
	switch {
	case dst.pod == nil && hasEnvoy(client):
		// tcp_proxy finds no healthy upstream and closes the connection
		// it has not read from yet.
		return nil, connError("read", syscall.ECONNRESET), nil
	case dst.pod == nil:
		return nil, connError("dial", syscall.ECONNREFUSED), nil
	}
	pred, err := e.predict(ctx, client, dst)
	if err != nil {
		return nil, nil, err
	}
	switch pred.Result {
	case scenario.ResultMTLS:
		clientID, serverID, _, why := e.handshake(ctx, client, dst)
		if why != nil {
			return nil, io.EOF, nil
		}
		e.countTCP(dst.pod, client, istiostats.Peer{SecurityPolicy: istiostats.PolicyMutualTLS, SourcePrincipal: clientID, DestinationPrincipal: serverID})
		return tcpEchoReply(client, dst, nonce), nil, nil
	case scenario.ResultPlaintext:
		if injection.Proxy(dst.pod) != nil {
			e.countTCP(dst.pod, client, istiostats.Peer{SecurityPolicy: istiostats.PolicyNone, SourcePrincipal: istiostats.Unknown, DestinationPrincipal: istiostats.Unknown})
		}
		return tcpEchoReply(client, dst, nonce), nil, nil
	case scenario.ResultFail:
		if !hasEnvoy(client) {
			return nil, connError("read", syscall.ECONNRESET), nil
		}
		return nil, io.EOF, nil
	}
	return nil, nil, fmt.Errorf("the oracle predicts %s, which the simulated data plane cannot render (%s)", pred, pred.Why)
}

// tcpEchoReply is the line `echo serve` in the server pod answers with.
func tcpEchoReply(client *corev1.Pod, dst *destination, nonce string) []byte {
	b, _ := json.Marshal(echoapi.TCPEchoResponse{
		Pod: dst.pod.Name, Namespace: dst.pod.Namespace, ServiceAccount: serviceAccount(dst.pod), Hostname: dst.pod.Name,
		Port: targetPort(dst.pod, dst.port), RemoteAddr: net.JoinHostPort(client.Status.PodIP, "0"), Nonce: nonce,
	})
	return b
}

// tcpPeer is what a simulated server sidecar counts a connection under:
// the witness's peer and the client workload, for the labels Istio adds.
type tcpPeer struct {
	istiostats.Peer
	sourceWorkload, sourceNamespace string
}

// countTCP counts one inbound connection at server's simulated sidecar.
// The counts live as long as the pod (its UID), as Envoy's counters live
// as long as the sidecar.
func (e *Execer) countTCP(server, client *corev1.Pod, p istiostats.Peer) {
	peer := tcpPeer{Peer: p, sourceWorkload: istiostats.Unknown, sourceNamespace: istiostats.Unknown}
	if p.SecurityPolicy == istiostats.PolicyMutualTLS {
		// Over mTLS the sidecars exchange workload metadata.
		peer.sourceWorkload, peer.sourceNamespace = workloadName(client), client.Namespace
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tcpCounts == nil {
		e.tcpCounts = map[types.UID]map[tcpPeer]uint64{}
	}
	if e.tcpCounts[server.UID] == nil {
		e.tcpCounts[server.UID] = map[tcpPeer]uint64{}
	}
	e.tcpCounts[server.UID][peer]++
}

// workloadName is the name Istio reports a pod's workload by: its app
// label here, which the fixtures set to the Deployment's name.
func workloadName(pod *corev1.Pod) string {
	if app := pod.Labels["app"]; app != "" {
		return app
	}
	return pod.Name
}

// istioTCPLabels are the labels of Istio's TCP metrics, in the order its
// stats filter writes them (istio/proxy istio_stats.cc, populatePeerInfo
// and populateFlagsAndConnectionSecurity, reporter first).
var istioTCPLabels = []string{
	"reporter", "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_canonical_service", "destination_canonical_revision", "destination_service_name",
	"destination_service_namespace", "destination_cluster", "request_protocol", "response_flags", "connection_security_policy",
}

// stats answers `pilot-agent request GET stats/prometheus` in a pod's
// istio-proxy container: the istio_tcp_connections_opened_total samples
// of what its simulated sidecar counted, in Envoy's Prometheus text. A
// real sidecar lists hundreds of other statistics; the simulation has
// none of them.
func (e *Execer) stats(pod *corev1.Pod) []byte {
	e.mu.Lock()
	counted := e.tcpCounts[pod.UID]
	samples := make([]istiostats.Sample, 0, len(counted))
	for peer, n := range counted {
		app := workloadName(pod)
		samples = append(samples, istiostats.Sample{Name: istiostats.TCPConnectionsOpened, Value: float64(n), Labels: map[string]string{
			"reporter": istiostats.ReporterDestination, "source_workload": peer.sourceWorkload, "source_canonical_service": peer.sourceWorkload,
			"source_canonical_revision": "latest", "source_workload_namespace": peer.sourceNamespace, "source_principal": peer.SourcePrincipal,
			"source_app": peer.sourceWorkload, "source_version": istiostats.Unknown, "source_cluster": istiostats.Unknown,
			"destination_workload": app, "destination_workload_namespace": pod.Namespace, "destination_principal": peer.DestinationPrincipal,
			"destination_app": app, "destination_version": istiostats.Unknown, "destination_service": app + "." + pod.Namespace + ".svc.cluster.local",
			"destination_canonical_service": app, "destination_canonical_revision": "latest", "destination_service_name": app,
			"destination_service_namespace": pod.Namespace, "destination_cluster": "Kubernetes", "request_protocol": "tcp",
			"response_flags": "-", "connection_security_policy": peer.SecurityPolicy,
		}})
	}
	e.mu.Unlock()
	return istiostats.Format(samples, "counter", istioTCPLabels...)
}
