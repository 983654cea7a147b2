package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"

	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/probe/configdump"
	"github.com/meshproof/meshproof/harness/scenario"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// SimulatedHeader is a request header every simulated echo response says
// it received, carrying Label, so a body read by hand says what it is.
const SimulatedHeader = "X-Meshproof-Simulated"

// probe answers `echo probe`: the spec on stdin, one ProbeResult per
// request on stdout, each decided from the stored objects and turned into
// a verdict by echoapi.Classify, the echo program's own classifier, from
// the status, body or transport error the real request would have had.
func (e *Execer) probe(ctx context.Context, client *corev1.Pod, stdin []byte) ([]byte, error) {
	var spec echoapi.ProbeSpec
	dec := json.NewDecoder(bytes.NewReader(stdin))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return nil, fmt.Errorf("echo probe: the spec on stdin: %w", err)
	}
	if len(spec.Targets) == 0 {
		return nil, errors.New("echo probe: the spec has no targets")
	}
	for _, t := range spec.Targets {
		if err := refuseTarget(client, t); err != nil {
			return nil, fmt.Errorf("echo probe: %s: %w", t.Name, err)
		}
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	for _, t := range spec.Targets {
		for attempt := range max(spec.RequestsPerTarget, 1) {
			answer := e.probeHTTP
			switch {
			case strings.HasPrefix(t.URL, "tcp://"):
				answer = e.probeTCP
			case strings.HasPrefix(t.URL, echoapi.SchemeGRPC+"://"):
				answer = e.probeGRPC
			}
			res, err := answer(ctx, client, t, attempt)
			if err != nil {
				return nil, fmt.Errorf("echo probe: %s: %w", t.Name, err)
			}
			if err := enc.Encode(res); err != nil {
				return nil, err
			}
		}
	}
	return out.Bytes(), nil
}

// probeHTTP is one HTTP request of a batch.
func (e *Execer) probeHTTP(ctx context.Context, client *corev1.Pod, t echoapi.Target, attempt int) (echoapi.ProbeResult, error) {
	start := time.Now()
	ctx, decided := withAmbientMark(ctx)
	status, body, reqErr, d, err := e.request(ctx, client, t)
	if err != nil {
		return echoapi.ProbeResult{}, err
	}
	latency := time.Since(start)
	outcome := echoapi.Classify(status, body, reqErr)
	res := echoapi.ProbeResult{
		Target: t.Name, URL: t.URL, Attempt: attempt, StatusCode: status,
		Latency: latency.String(), LatencyNS: latency.Nanoseconds(),
		Result: outcome.Result, Reason: outcome.Reason, XFCC: outcome.XFCC,
	}
	if reqErr != nil {
		res.Error = reqErr.Error()
	}
	if outcome.Echo != nil {
		res.ServerPod, res.ServerNamespace, res.ServerServiceAccount = outcome.Echo.Pod, outcome.Echo.Namespace, outcome.Echo.ServiceAccount
	}
	nearest := outcome.Nearest()
	res.PeerURI, res.ProxyURI = nearest.URI, nearest.By
	e.label(&res, d)
	e.labelAmbient(&res, *decided)
	return res, nil
}

// request decides one GET: what status and body, or which transport error,
// the probe would have seen. err is a failure of the simulation itself
// (the API server unreadable, a policy it cannot model).
func (e *Execer) request(ctx context.Context, client *corev1.Pod, t echoapi.Target) (status int, body []byte, reqErr error, d *decision, err error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return 0, nil, nil, nil, fmt.Errorf("target URL %q: %w", t.URL, err)
	}
	host, port, err := hostPort(u.Host)
	if err != nil {
		return 0, nil, nil, nil, err
	}
	if t.Port != 0 {
		port = t.Port
	}
	wrap := func(err error) error { return &url.Error{Op: "Get", URL: t.URL, Err: err} }
	dst, err := e.resolve(ctx, client.Namespace, host, port)
	var noHost *errNoSuchHost
	switch {
	case errors.As(err, &noHost):
		return 0, nil, wrap(&net.DNSError{Err: "no such host", Name: host, IsNotFound: true}), nil, nil
	case err != nil && dst != nil:
		// A port the Service does not serve: nothing listens behind it.
		return 0, nil, wrap(connError("dial", syscall.ECONNREFUSED)), nil, nil
	case err != nil:
		return 0, nil, nil, nil, err
	case protocol(dst.port) == scenario.ProtocolGRPC:
		return 0, nil, nil, nil, errWrongProtocol(t, dst)
	}
	if dst.pod != nil {
		switch out, err := e.ambient(ctx, client, dst, httpRequestBytes(u), 512); {
		case err != nil:
			return 0, nil, nil, nil, err
		case out.handled:
			markAmbient(ctx)
			switch {
			case out.answered:
				return 200, echoBody(client, dst, u, ""), nil, nil, nil
			case out.upstream503:
				return 503, []byte(echoapi.EnvoyUpstreamResetBody + ". reset reason: connection termination"), nil, nil, nil
			}
			return 0, nil, wrap(connError("read", syscall.ECONNRESET)), nil, nil
		case enrolled(client):
			// The client's ztunnel passed it as plain TCP: the server's
			// own data plane decides, as for a client without a sidecar.
			markAmbient(ctx)
		}
	}
	if e.decidesByEnvoy(client, dst) {
		d, err := e.evaluated(ctx, client, dst, envoy.HTTP1, u.Host, cmpOr(u.Path, "/"))
		if err != nil {
			return 0, nil, nil, nil, err
		}
		status, body, reqErr := e.renderHTTP(client, dst, u, d)
		return status, body, reqErr, d, nil
	}
	status, body, reqErr, err = e.requestByOracle(ctx, client, dst, u, wrap)
	return status, body, reqErr, nil, err
}

// requestByOracle decides a request from the oracle's rules: for a
// proxyless end, or without the Envoy evaluator (WithSidecars).
func (e *Execer) requestByOracle(ctx context.Context, client *corev1.Pod, dst *destination, u *url.URL, wrap func(error) error) (status int, body []byte, reqErr, err error) {
	switch {
	case dst.pod == nil && hasEnvoy(client):
		// Envoy's local reply for a cluster without endpoints.
		return 503, []byte("no healthy upstream"), nil, nil
	case dst.pod == nil:
		// kube-proxy rejects connections to a Service without endpoints.
		return 0, nil, wrap(connError("dial", syscall.ECONNREFUSED)), nil
	}
	pred, err := e.predict(ctx, client, dst)
	if err != nil {
		return 0, nil, nil, err
	}
	switch {
	case pred.Result == scenario.ResultMTLS:
		return e.mtls(ctx, client, dst, u)
	case pred.Result == scenario.ResultPlaintext:
		return 200, echoBody(client, dst, u, ""), nil, nil
	case pred.Result == scenario.ResultFail && pred.Reason == echoapi.ReasonReset:
		return 0, nil, wrap(connError("read", syscall.ECONNRESET)), nil
	case pred.Result == scenario.ResultFail && pred.Reason == echoapi.ReasonUpstream503:
		return 503, []byte(echoapi.EnvoyUpstreamResetBody + ". reset reason: connection termination"), nil, nil
	}
	return 0, nil, nil, fmt.Errorf("the oracle predicts %s, which the simulated data plane cannot render (%s)", pred, pred.Why)
}

// mtls is the Istio mutual TLS handshake between the two sidecars (see
// handshake); any failure is the client sidecar's 503 for a TLS error.
func (e *Execer) mtls(ctx context.Context, client *corev1.Pod, dst *destination, u *url.URL) (int, []byte, error, error) {
	clientID, serverID, clientLeaf, why := e.handshake(ctx, client, dst)
	if why != nil {
		return 503, []byte(echoapi.EnvoyUpstreamResetBody + ". reset reason: remote connection failure, transport failure reason: TLS_error: " + why.Error()), nil, nil
	}
	sum := sha256.Sum256(clientLeaf.Raw)
	xfcc := fmt.Sprintf(`By=%s;Hash=%s;Subject="";URI=%s`, serverID, hex.EncodeToString(sum[:]), clientID)
	return 200, echoBody(client, dst, u, xfcc), nil, nil
}

// handshake is the Istio mutual TLS handshake between the two sidecars,
// with the certificates each holds: the server verifies the client's chain
// against its roots, the client the server's against its roots and expects
// the server's ServiceAccount identity (Istio's subjectAltNames for the
// endpoint). It returns both identities and the client's leaf, or why the
// handshake fails.
func (e *Execer) handshake(ctx context.Context, client *corev1.Pod, dst *destination) (clientID, serverID string, clientLeaf *x509.Certificate, why error) {
	defer func() {
		if why != nil {
			e.log.Info("simulated mTLS handshake failed", "client", client.Namespace+"/"+client.Name, "server", dst.pod.Namespace+"/"+dst.pod.Name, "why", why)
		}
	}()
	cc, err := e.certsOf(ctx, client)
	if err != nil {
		return "", "", nil, err
	}
	sc, err := e.certsOf(ctx, dst.pod)
	if err != nil {
		return "", "", nil, err
	}
	serverID, err = verifyPeer(sc.Chain, cc.Roots)
	if err != nil {
		return "", "", nil, fmt.Errorf("the client does not trust the server: %w", err)
	}
	clientID, err = verifyPeer(cc.Chain, sc.Roots)
	if err != nil {
		return "", "", nil, fmt.Errorf("the server does not trust the client: %w", err)
	}
	want, err := expectedServerID(clientID, dst.pod)
	if err != nil {
		return "", "", nil, err
	}
	if serverID != want {
		return "", "", nil, fmt.Errorf("the server presented %s, want %s", serverID, want)
	}
	return clientID, serverID, cc.Leaf(), nil
}

// expectedServerID is the identity a client sidecar accepts for the server:
// its ServiceAccount in the client's trust domain.
func expectedServerID(clientID string, server *corev1.Pod) (string, error) {
	id, err := url.Parse(clientID)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", id.Host, server.Namespace, serviceAccount(server)), nil
}

// echoBody is what `echo serve` in the server pod answers: its identity and
// the request it received, with the XFCC header its sidecar added, if any.
func echoBody(client *corev1.Pod, dst *destination, u *url.URL, xfcc string) []byte {
	headers := map[string][]string{"User-Agent": {"meshproof-echo"}, SimulatedHeader: {Label}}
	resp := echoapi.EchoResponse{
		Pod: dst.pod.Name, Namespace: dst.pod.Namespace, ServiceAccount: serviceAccount(dst.pod), Hostname: dst.pod.Name,
		Port: targetPort(dst.pod, dst.port), Method: "GET", Path: cmpOr(u.Path, "/"), Host: u.Host, Protocol: "HTTP/1.1",
		RemoteAddr: net.JoinHostPort(client.Status.PodIP, "0"), Headers: headers,
	}
	if xfcc != "" {
		headers[echoapi.XFCCHeader] = []string{xfcc}
		elems, err := echoapi.ParseXFCC(xfcc)
		if err != nil {
			resp.XFCCError = err.Error()
		}
		resp.XFCC = elems
	}
	b, _ := json.Marshal(resp)
	return b
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// connError is the error a socket call fails with.
func connError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
}

// peercert answers `echo peercert --addr ip:port [--alpn ...] [--sni ...]`:
// the chain the sidecar of the pod with that IP presents, then its
// rejection for want of a client certificate.
func (e *Execer) peercert(ctx context.Context, args []string) ([]byte, error) {
	fs := flag.NewFlagSet("peercert", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "", "")
	sni := fs.String("sni", "", "")
	alpn := fs.String("alpn", "istio-peer-exchange,istio", "")
	root := fs.String("root", "", "")
	fs.Duration("timeout", 5*time.Second, "")
	fs.Duration("reject-wait", time.Second, "")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *addr == "" {
		return nil, fmt.Errorf("echo peercert: usage: --addr host:port is required (args %q)", args)
	}
	if *root != "" {
		return nil, errors.New("echo peercert: --root names a file in the pod; the simulated data plane has no pod file system")
	}
	ip, portStr, err := net.SplitHostPort(*addr)
	if err != nil {
		return nil, fmt.Errorf("echo peercert: --addr: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("echo peercert: --addr: port %q: %w", portStr, err)
	}
	report := echoapi.PeerCertReport{Address: *addr, SNI: *sni, Chain: []echoapi.CertInfo{}}
	for _, p := range strings.Split(*alpn, ",") {
		if p = strings.TrimSpace(p); p != "" {
			report.ALPN = append(report.ALPN, p)
		}
	}
	server, err := e.podByIP(ctx, ip)
	if err != nil {
		return nil, err
	}
	switch {
	case server != nil && proxyless(server):
		return nil, fmt.Errorf("echo peercert: %s is a proxyless gRPC pod: %w", *addr, errProxylessNotSimulated)
	case server == nil:
		report.DialError = "dial tcp " + *addr + ": connect: connection refused"
	case injection.Proxy(server) == nil:
		// The echo server answers a ClientHello in plain HTTP.
		report.HandshakeError = "tls: first record does not look like a TLS handshake"
		report.VerifyError = "no certificate was received"
	case e.envoys != nil && !proxyless(server):
		if err := e.peercertByEnvoy(ctx, server, *addr, port, *sni, &report); err != nil {
			return nil, err
		}
	default:
		terminates, err := e.terminatesMTLS(ctx, server, port)
		if err != nil {
			return nil, err
		}
		if !terminates {
			// A DISABLE port: no filter chain matches a ClientHello and the
			// sidecar closes the connection.
			report.HandshakeError = "EOF"
			report.VerifyError = "no certificate was received"
			break
		}
		certs, err := e.certsOf(ctx, server)
		if err != nil {
			e.log.Info("simulated sidecar has no certificate to present", "pod", server.Namespace+"/"+server.Name, "why", err)
			report.HandshakeError = "read tcp " + *addr + ": read: connection reset by peer"
			report.VerifyError = "no certificate was received"
			break
		}
		report.NegotiatedALPN = "istio-peer-exchange"
		report.TLSVersion = "TLS 1.3"
		for _, c := range certs.Chain {
			report.Chain = append(report.Chain, certInfo(c))
		}
		report.HandshakeError = "server rejected the connection after the handshake: remote error: tls: certificate required"
		report.VerifyError = "not verified: no --root given"
	}
	out, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// certInfo describes a certificate the way `echo peercert` does.
func certInfo(c *x509.Certificate) echoapi.CertInfo {
	info := echoapi.CertInfo{
		SerialHex: c.SerialNumber.Text(16), NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), DNSSANs: c.DNSNames, IsCA: c.IsCA,
	}
	for _, u := range c.URIs {
		info.URISANs = append(info.URISANs, u.String())
	}
	sum := sha256.Sum256(c.Raw)
	info.SHA256 = hex.EncodeToString(sum[:])
	info.PEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	return info
}

// Envoy's config dump JSON (admin.v3.SecretsConfigDump), as much as a
// sidecar's SDS secrets fill: protobuf JSON with the proto field names,
// bytes as base64, private keys redacted the way Envoy redacts them.
type (
	dumpOut struct {
		Configs []any `json:"configs"`
		// Simulated is not Envoy's: it labels a dump read by hand.
		Simulated string `json:"meshproof_simulated"`
	}
	secretsDump struct {
		Type    string          `json:"@type"`
		Secrets []dynamicSecret `json:"dynamic_active_secrets,omitempty"`
	}
	dynamicSecret struct {
		Name        string    `json:"name"`
		VersionInfo string    `json:"version_info"`
		LastUpdated string    `json:"last_updated"`
		Secret      tlsSecret `json:"secret"`
	}
	tlsSecret struct {
		Type              string          `json:"@type"`
		Name              string          `json:"name"`
		TLSCertificate    *tlsCertificate `json:"tls_certificate,omitempty"`
		ValidationContext *validation     `json:"validation_context,omitempty"`
	}
	tlsCertificate struct {
		CertificateChain dataSource `json:"certificate_chain"`
		PrivateKey       dataSource `json:"private_key"`
	}
	validation struct {
		TrustedCA dataSource `json:"trusted_ca"`
	}
	dataSource struct {
		InlineBytes string `json:"inline_bytes"`
	}
)

// configDump answers `pilot-agent request GET config_dump[?mask=...]`: the
// sidecar's SDS secrets "default" and "ROOTCA", or none while it has no
// certificates (as Envoy before its first SDS push); the full dump (full)
// also has the clusters, endpoints, listeners and routes istiod served
// the sidecar, when the Envoy evaluator stands in for it (WithSidecars).
func (e *Execer) configDump(ctx context.Context, pod *corev1.Pod, full bool) ([]byte, error) {
	secrets := secretsDump{Type: configdump.SecretsConfigDumpType}
	dump := dumpOut{Simulated: Label}
	if certs, err := e.certsOf(ctx, pod); err != nil {
		e.log.Info("simulated sidecar has no secrets to dump", "pod", pod.Namespace+"/"+pod.Name, "why", err)
	} else {
		version := certs.Issued.UTC().Format(time.RFC3339Nano)
		b64 := func(certs []*x509.Certificate) dataSource {
			var buf bytes.Buffer
			for _, c := range certs {
				_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
			}
			return dataSource{InlineBytes: base64.StdEncoding.EncodeToString(buf.Bytes())}
		}
		secrets.Secrets = []dynamicSecret{
			{Name: configdump.WorkloadSecretName, VersionInfo: version, LastUpdated: version, Secret: tlsSecret{
				Type: configdump.TLSSecretType, Name: configdump.WorkloadSecretName,
				TLSCertificate: &tlsCertificate{CertificateChain: b64(certs.Chain),
					PrivateKey: dataSource{InlineBytes: base64.StdEncoding.EncodeToString([]byte("[redacted]"))}},
			}},
			{Name: configdump.RootSecretName, VersionInfo: version, LastUpdated: version, Secret: tlsSecret{
				Type: configdump.TLSSecretType, Name: configdump.RootSecretName,
				ValidationContext: &validation{TrustedCA: b64(certs.Roots)},
			}},
		}
	}
	dump.Configs = append(dump.Configs, secrets)
	if full && e.envoys != nil && hasEnvoy(pod) && !proxyless(pod) {
		xdsDumps, err := e.xdsDumps(pod)
		if err != nil {
			e.log.Info("simulated sidecar has no xDS configuration to dump", "pod", pod.Namespace+"/"+pod.Name, "why", err)
		}
		for _, d := range xdsDumps {
			dump.Configs = append(dump.Configs, d)
		}
		dump.Simulated = e.envoyLabel
	}
	out, err := json.MarshalIndent(dump, "", " ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}
