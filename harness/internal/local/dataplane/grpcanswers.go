package dataplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/scenario"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// What the simulation answers of gRPC: a grpc:// call (plain gRPC from the
// application) from a pod with a simulated sidecar or none, towards a
// Service's grpc port, served by a sidecar workload's echo or a proxyless
// one's. Decisions come from the oracle as for HTTP, the proxyless server
// by its mixed rules; the result is the real probe's, made by the echo's
// own classifier (echoapi.ClassifyGRPCReply, GRPCErrorReason) from the
// reply or the gRPC status the call would have ended with.
//
// Not answered, so never pretended: any gRPC call from a proxyless pod
// (what its grpc-go and xDS client send only real processes can show; a
// rehearsal runs them), xds:/// targets from any pod (only grpc-go's xDS
// client resolves them), grpcs:// (the probe's own certificates, which no
// pod holds), Envoy's admin and handshakes in a proxyless pod (it runs no
// Envoy), and a protocol the port does not serve (the echo's HTTP server
// does not speak gRPC, nor its gRPC server HTTP/1.1). A proxyless pod's
// HTTP and TCP are answered: they leave as the application wrote them, as
// from a pod without sidecar (the oracle's mixed rules).

// errProxylessNotSimulated refuses what only a proxyless pod's real
// processes can answer.
var errProxylessNotSimulated = fmt.Errorf("%w: it needs a proxyless gRPC pod's own processes (Istio's grpc-agent template: grpc-go configured by pilot-agent, no Envoy), which only a real pod or a rehearsal's real processes stand for", errUnknownCommand)

// proxyless reports whether injection gave the pod Istio's proxyless gRPC
// data plane: an istio-proxy container running pilot-agent without Envoy
// (the grpc-agent template sets DISABLE_ENVOY on it).
func proxyless(pod *corev1.Pod) bool {
	return injection.Proxy(pod) != nil && proxyEnv(pod, "DISABLE_ENVOY") == "true"
}

// hasEnvoy reports whether the pod's traffic goes through a (simulated)
// Envoy sidecar.
func hasEnvoy(pod *corev1.Pod) bool { return injection.Proxy(pod) != nil && !proxyless(pod) }

// refuseTarget says why the simulation does not answer a target of a
// probe in client, or nil.
func refuseTarget(client *corev1.Pod, t echoapi.Target) error {
	u, err := url.Parse(t.URL)
	if err != nil {
		return nil // the request reports it
	}
	switch {
	case u.Scheme == echoapi.SchemeXDS:
		return fmt.Errorf("%w: %s is an xDS target, which only grpc-go's xDS client with pilot-agent's bootstrap resolves", errUnknownCommand, t.URL)
	case u.Scheme == echoapi.SchemeGRPCS:
		return fmt.Errorf("%w: %s needs the probe's own certificate files, which no simulated pod holds", errUnknownCommand, t.URL)
	case u.Scheme == echoapi.SchemeGRPC && proxyless(client):
		return fmt.Errorf("a gRPC call from %s/%s: %w", client.Namespace, client.Name, errProxylessNotSimulated)
	}
	return nil
}

// errWrongProtocol is a target whose scheme the port's server does not
// speak: what the real echo would answer is not modelled.
func errWrongProtocol(t echoapi.Target, dst *destination) error {
	return fmt.Errorf("%w: %s calls Service port %s/%s:%d, which serves %s", errUnknownCommand, t.URL, dst.service.Namespace, dst.service.Name, dst.port.Port, protocol(dst.port))
}

// grpcStatus is how a call ended when it did not return a reply: grpc-go's
// status code name and message.
type grpcStatus struct{ code, message string }

func (s *grpcStatus) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", s.code, s.message)
}

// unavailable is the status grpc-go gives a call whose connection failed
// with transport error err.
func unavailable(err error) *grpcStatus {
	return &grpcStatus{code: "Unavailable", message: fmt.Sprintf("connection error: desc = %q", "transport: Error while dialing: "+err.Error())}
}

// prefaceError is the status of a connection the server closed or reset
// after it was established.
func prefaceError(err error) *grpcStatus {
	return &grpcStatus{code: "Unavailable", message: fmt.Sprintf("connection error: desc = %q", "error reading server preface: "+err.Error())}
}

// probeGRPC is one gRPC call of a batch.
func (e *Execer) probeGRPC(ctx context.Context, client *corev1.Pod, t echoapi.Target, attempt int) (echoapi.ProbeResult, error) {
	start := time.Now()
	ctx, decided := withAmbientMark(ctx)
	reply, st, d, err := e.call(ctx, client, t)
	if err != nil {
		return echoapi.ProbeResult{}, err
	}
	latency := time.Since(start)
	var outcome echoapi.GRPCOutcome
	if st != nil {
		outcome.Result, outcome.Reason = echoapi.ResultFail, echoapi.GRPCErrorReason(st.code, st.message)
	} else {
		outcome = echoapi.ClassifyGRPCReply(reply)
	}
	res := echoapi.ProbeResult{
		Target: t.Name, URL: t.URL, Attempt: attempt,
		Latency: latency.String(), LatencyNS: latency.Nanoseconds(),
		Result: outcome.Result, Reason: outcome.Reason, XFCC: outcome.XFCC,
		PeerURI: outcome.PeerURI, ProxyURI: outcome.ProxyURI,
	}
	if st != nil {
		res.Error = st.Error()
	}
	if outcome.Echo != nil {
		res.ServerPod, res.ServerNamespace, res.ServerServiceAccount = outcome.Echo.Pod, outcome.Echo.Namespace, outcome.Echo.ServiceAccount
	}
	e.label(&res, d)
	e.labelAmbient(&res, *decided)
	return res, nil
}

// call decides one gRPC call: the echo's reply, or the status it ended
// with. err is a failure of the simulation itself.
func (e *Execer) call(ctx context.Context, client *corev1.Pod, t echoapi.Target) (reply []byte, st *grpcStatus, d *decision, err error) {
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
	dst, err := e.resolve(ctx, client.Namespace, host, port)
	var noHost *errNoSuchHost
	switch {
	case errors.As(err, &noHost):
		return nil, unavailable(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}), nil, nil
	case err != nil && dst != nil:
		return nil, unavailable(connError("dial", syscall.ECONNREFUSED)), nil, nil
	case err != nil:
		return nil, nil, nil, err
	case protocol(dst.port) != scenario.ProtocolGRPC:
		return nil, nil, nil, errWrongProtocol(t, dst)
	}
	if dst.pod != nil {
		switch out, err := e.ambient(ctx, client, dst, 256, 512); {
		case err != nil:
			return nil, nil, nil, err
		case out.handled:
			markAmbient(ctx)
			switch {
			case out.answered:
				return grpcEchoReply(client, dst, u, "", ""), nil, nil, nil
			case out.upstream503:
				return nil, &grpcStatus{code: "Unavailable", message: echoapi.EnvoyUpstreamResetBody + ". reset reason: connection termination"}, nil, nil
			}
			return nil, prefaceError(connError("read", syscall.ECONNRESET)), nil, nil
		case enrolled(client):
			markAmbient(ctx)
		}
	}
	if e.decidesByEnvoy(client, dst) {
		d, err := e.evaluated(ctx, client, dst, envoy.GRPC, u.Host, echoapi.GRPCEchoMethod)
		if err != nil {
			return nil, nil, nil, err
		}
		reply, st := e.renderGRPC(client, dst, u, d)
		return reply, st, d, nil
	}
	reply, st, err = e.callByOracle(ctx, client, dst, u)
	return reply, st, nil, err
}

// callByOracle decides a gRPC call from the oracle's rules: for a
// proxyless end, or without the Envoy evaluator (WithSidecars).
func (e *Execer) callByOracle(ctx context.Context, client *corev1.Pod, dst *destination, u *url.URL) (reply []byte, st *grpcStatus, err error) {
	switch {
	case dst.pod == nil && hasEnvoy(client):
		// Envoy's local reply for a cluster without endpoints, which it
		// sends a gRPC client as UNAVAILABLE.
		return nil, &grpcStatus{code: "Unavailable", message: "no healthy upstream"}, nil
	case dst.pod == nil:
		return nil, unavailable(connError("dial", syscall.ECONNREFUSED)), nil
	}
	pred, err := e.predict(ctx, client, dst)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case pred.Result == scenario.ResultMTLS:
		clientID, serverID, clientLeaf, why := e.handshake(ctx, client, dst)
		if why != nil {
			return nil, &grpcStatus{code: "Unavailable", message: echoapi.EnvoyUpstreamResetBody + ". reset reason: remote connection failure, transport failure reason: TLS_error: " + why.Error()}, nil
		}
		if proxyless(dst.pod) {
			// grpc-go terminated the client sidecar's mTLS itself.
			return grpcEchoReply(client, dst, u, "", clientID), nil, nil
		}
		sum := sha256.Sum256(clientLeaf.Raw)
		return grpcEchoReply(client, dst, u, fmt.Sprintf(`By=%s;Hash=%s;Subject="";URI=%s`, serverID, hex.EncodeToString(sum[:]), clientID), ""), nil, nil
	case pred.Result == scenario.ResultPlaintext:
		return grpcEchoReply(client, dst, u, "", ""), nil, nil
	case pred.Result == scenario.ResultFail && pred.Reason == echoapi.ReasonReset:
		return nil, prefaceError(connError("read", syscall.ECONNRESET)), nil
	case pred.Result == scenario.ResultFail && pred.Reason == echoapi.ReasonEOF,
		pred.Result == scenario.ResultFail && pred.Reason == "" && proxyless(dst.pod):
		// A proxyless server closing a plaintext connection: the oracle
		// leaves open whether the client sees FIN or RST; grpc-go's
		// usual one is EOF.
		return nil, prefaceError(errors.New("EOF")), nil
	case pred.Result == scenario.ResultFail && pred.Reason == echoapi.ReasonUpstream503:
		return nil, &grpcStatus{code: "Unavailable", message: echoapi.EnvoyUpstreamResetBody + ". reset reason: connection termination"}, nil
	}
	return nil, nil, fmt.Errorf("the oracle predicts %s, which the simulated data plane cannot render for gRPC (%s)", pred, pred.Why)
}

// grpcEchoReply is what the gRPC echo in the server pod answers: its
// identity and the call's metadata, with the XFCC header its sidecar added
// (xfcc), or the client certificate's URI when grpc-go terminated mTLS
// itself (peerURI).
func grpcEchoReply(client *corev1.Pod, dst *destination, u *url.URL, xfcc, peerURI string) []byte {
	headers := map[string][]string{
		":authority": {u.Host}, "content-type": {"application/grpc"}, "user-agent": {"grpc-go"},
		strings.ToLower(SimulatedHeader): {Label},
	}
	resp := echoapi.GRPCEchoResponse{EchoResponse: echoapi.EchoResponse{
		Pod: dst.pod.Name, Namespace: dst.pod.Namespace, ServiceAccount: serviceAccount(dst.pod), Hostname: dst.pod.Name,
		Port: targetPort(dst.pod, dst.port), Method: "POST", Path: echoapi.GRPCEchoMethod, Host: u.Host, Protocol: "grpc",
		RemoteAddr: net.JoinHostPort(client.Status.PodIP, "0"), Headers: headers,
	}}
	if xfcc != "" {
		headers[strings.ToLower(echoapi.XFCCHeader)] = []string{xfcc} // gRPC metadata keys are lower case
		elems, err := echoapi.ParseXFCC(xfcc)
		if err != nil {
			resp.XFCCError = err.Error()
		}
		resp.XFCC = elems
	}
	if peerURI != "" {
		resp.PeerURIs, resp.TLSVersion = []string{peerURI}, "TLS 1.3"
	}
	b, _ := json.Marshal(resp)
	return b
}
