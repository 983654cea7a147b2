package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	utilexec "k8s.io/client-go/util/exec"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/probe/configdump"
	"github.com/meshproof/meshproof/harness/results"
)

// meshPKI is a mesh CA and the certificates service-b's sidecar holds.
type meshPKI struct {
	bundle *ca.Bundle
	// chain is service-b's workload chain: leaf, then the intermediate.
	chain []*x509.Certificate
	cert  tls.Certificate
}

func newMeshPKI(t testing.TB) meshPKI {
	t.Helper()
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	leaf, key, chain, err := bundle.IssueWorkloadCert(serviceBID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([][]byte, len(chain))
	for i, c := range chain {
		raw[i] = c.Raw
	}
	return meshPKI{bundle: bundle, chain: chain, cert: tls.Certificate{Certificate: raw, PrivateKey: key.Signer(), Leaf: leaf}}
}

var serverPod = results.Pod{Namespace: "meshproof", Name: "service-b-6c8f-klmno", IP: "127.0.0.1"}

// startSidecarTLS stands in for service-b's sidecar inbound port on
// loopback: it presents the workload chain, offers Istio's ALPN, and
// requires a client certificate from the mesh root, so a client without one
// is rejected after (TLS 1.3) or during (TLS 1.2) the handshake. It
// returns the port.
func startSidecarTLS(t testing.TB, pki meshPKI, maxVersion uint16) int {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(pki.bundle.Root)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pki.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		NextProtos:   []string{"istio-peer-exchange", "istio"},
		MaxVersion:   maxVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, func(conn net.Conn) { conn.(*tls.Conn).Handshake() })
	return portOf(t, ln.Addr().String())
}

// serve accepts connections on ln until the test ends, handing each to
// handle and then closing it.
func serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			handle(conn)
			conn.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func TestHandshakeChainFromRejectingSidecar(t *testing.T) {
	pki := newMeshPKI(t)
	for _, tc := range []struct {
		name       string
		maxVersion uint16
	}{{"tls1.3", 0}, {"tls1.2", tls.VersionTLS12}} {
		t.Run(tc.name, func(t *testing.T) {
			port := startSidecarTLS(t, pki, tc.maxVersion)
			execer := &scriptedExecer{}
			chain, err := NewCertReader(execer).HandshakeChain(t.Context(), legacyPod, serverPod, port)
			if err != nil {
				t.Fatal(err)
			}
			if !sameCerts(chain, pki.chain) {
				t.Fatalf("got %d certificates, want service-b's leaf and intermediate", len(chain))
			}
			id, err := ca.VerifyWorkloadChain(chain, pki.bundle.Root)
			if err != nil || id != serviceBID {
				t.Fatalf("chain verifies as %q (%v), want %s", id, err, serviceBID)
			}
			calls, deadlines := execer.recorded()
			wantArgv := []string{"/echo", "peercert", "--addr", "127.0.0.1:" + strconv.Itoa(port), "--alpn", "istio-peer-exchange,istio"}
			if len(calls) != 1 || calls[0].Pod != legacyPod || calls[0].Container != "app" || !reflect.DeepEqual(calls[0].Argv, wantArgv) || calls[0].Stdin != nil {
				t.Fatalf("execs %v, want %q in the out-of-mesh pod's app container", calls, wantArgv)
			}
			if deadlines[0].IsZero() {
				t.Error("the exec had no deadline")
			}
		})
	}
}

func TestHandshakeChainFailures(t *testing.T) {
	// A plaintext HTTP server, as an app port without a sidecar would be:
	// it answers the client hello with an HTTP error, so the handshake
	// fails before any certificate arrives.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, ln, func(conn net.Conn) {
		conn.Read(make([]byte, 4096))
		conn.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
		// Half-close and drain until the client hangs up, so that no reset
		// overtakes the answer.
		conn.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, conn)
	})
	plaintext := portOf(t, ln.Addr().String())

	tests := []struct {
		name string
		port int
		want []string
	}{
		{"nothing listens", portOf(t, closedPort(t)), []string{"no connection", "refused", serverPod.String(), legacyPod.String()}},
		{"no certificate presented", plaintext, []string{"presented no certificate", "does not look like a TLS handshake"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := NewCertReader(&scriptedExecer{}).HandshakeChain(t.Context(), legacyPod, serverPod, tc.port)
			if err == nil {
				t.Fatalf("want an error, got %d certificates", len(chain))
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

// peerCertReport is what echo peercert prints for a chain.
func peerCertReport(t testing.TB, chain []*x509.Certificate, edit func(*echoapi.PeerCertReport)) string {
	t.Helper()
	report := echoapi.PeerCertReport{Address: "10.244.0.13:8080", HandshakeError: "remote error: tls: certificate required"}
	for _, c := range chain {
		report.Chain = append(report.Chain, echoapi.CertInfo{SerialHex: c.SerialNumber.Text(16), PEM: string(ca.EncodeCertificatesPEM(c))})
	}
	if edit != nil {
		edit(&report)
	}
	b, err := json.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandshakeChainScriptedReports(t *testing.T) {
	pki := newMeshPKI(t)
	server := results.Pod{Namespace: "meshproof", Name: "service-b-0", IP: "fd00:10:244::13"}
	tests := []struct {
		name string
		run  func(context.Context, Command) ([]byte, []byte, error)
		want []string // empty: success, with pki.chain
	}{
		{"report parsed", answer(peerCertReport(t, pki.chain, nil), nil), nil},
		{"image without pem", answer(peerCertReport(t, pki.chain, func(r *echoapi.PeerCertReport) { r.Chain[1].PEM = "" }), nil),
			[]string{"certificate 1", "must be rebuilt"}},
		{"pem and fingerprint disagree", answer(peerCertReport(t, pki.chain, func(r *echoapi.PeerCertReport) { r.Chain[0].SHA256 = strings.Repeat("0", 64) }), nil),
			[]string{"certificate 0", "does not match"}},
		{"two certificates in one entry", answer(peerCertReport(t, pki.chain, func(r *echoapi.PeerCertReport) { r.Chain[0].PEM += r.Chain[1].PEM }), nil),
			[]string{"holds 2 certificates"}},
		{"garbage", answer("OCI runtime exec failed", nil), []string{"not a report"}},
		{"exec fails", answer("", errors.New("container app not found")), []string{"container app not found", "peercert"}},
		{"non-zero exit", func(_ context.Context, cmd Command) ([]byte, []byte, error) {
			err := utilexec.CodeExitError{Err: errors.New("command terminated with exit code 2"), Code: 2}
			return nil, []byte("echo peercert: --addr: missing port"), newExecError(cmd, []byte("echo peercert: --addr: missing port"), err)
		}, []string{"exit code 2", "missing port"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			execer := &scriptedExecer{run: tc.run}
			chain, err := NewCertReader(execer).HandshakeChain(t.Context(), legacyPod, server, 15006)
			calls, _ := execer.recorded()
			if len(calls) != 1 || calls[0].Argv[3] != "[fd00:10:244::13]:15006" {
				t.Fatalf("execs %v, want one dialling the IPv6 address with brackets", calls)
			}
			if len(tc.want) == 0 {
				if err != nil || !sameCerts(chain, pki.chain) {
					t.Fatalf("got %d certificates (%v), want the reported chain", len(chain), err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error, got %d certificates", len(chain))
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestHandshakeChainRejectsBadArguments(t *testing.T) {
	execer := &scriptedExecer{}
	r := NewCertReader(execer)
	noIP := serverPod
	noIP.IP = ""
	if _, err := r.HandshakeChain(t.Context(), legacyPod, noIP, 8080); err == nil || !strings.Contains(err.Error(), "no IP") {
		t.Errorf("pod without IP: %v", err)
	}
	if _, err := r.HandshakeChain(t.Context(), legacyPod, serverPod, 70000); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("port 70000: %v", err)
	}
	if calls, _ := execer.recorded(); len(calls) != 0 {
		t.Errorf("execs %v for arguments that cannot work", calls)
	}
}

// renderDump is the dump pilot-agent prints for a sidecar holding secrets.
func renderDump(t testing.TB, secrets ...configdump.Secret) []byte {
	t.Helper()
	b, err := configdump.Render(secrets...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSidecarSecrets(t *testing.T) {
	pki := newMeshPKI(t)
	execer := &scriptedExecer{run: answer(string(renderDump(t,
		configdump.Secret{Name: "default", CertificateChain: pki.chain},
		configdump.Secret{Name: "ROOTCA", TrustedCA: []*x509.Certificate{pki.bundle.Root}})), nil)}
	chain, roots, err := NewCertReader(execer).SidecarSecrets(t.Context(), serverPod)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCerts(chain, pki.chain) || !sameCerts(roots, []*x509.Certificate{pki.bundle.Root}) {
		t.Fatalf("got chain of %d and %d roots, want service-b's chain and the mesh root", len(chain), len(roots))
	}
	if id, err := ca.VerifyWorkloadChain(chain, roots...); err != nil || id != serviceBID {
		t.Fatalf("chain verifies as %q (%v)", id, err)
	}
	calls, deadlines := execer.recorded()
	wantArgv := []string{"pilot-agent", "request", "GET", "config_dump?mask=dynamic_active_secrets"}
	if len(calls) != 1 || calls[0].Pod != serverPod || calls[0].Container != "istio-proxy" || !reflect.DeepEqual(calls[0].Argv, wantArgv) {
		t.Fatalf("execs %v, want %q in the server's istio-proxy container", calls, wantArgv)
	}
	if deadlines[0].IsZero() {
		t.Error("the exec had no deadline")
	}
}

func TestSidecarSecretsErrors(t *testing.T) {
	pki := newMeshPKI(t)
	root := []*x509.Certificate{pki.bundle.Root}
	tests := []struct {
		name string
		run  func(context.Context, Command) ([]byte, []byte, error)
		want []string
	}{
		{"no workload secret yet", answer(string(renderDump(t, configdump.Secret{Name: "ROOTCA", TrustedCA: root})), nil),
			[]string{`secret "default"`, "active secrets: ROOTCA"}},
		{"no roots", answer(string(renderDump(t, configdump.Secret{Name: "default", CertificateChain: pki.chain})), nil),
			[]string{`secret "ROOTCA"`, "active secrets: default"}},
		{"no secrets at all", answer(string(renderDump(t)), nil),
			[]string{`secret "default"`, "active secrets: none"}},
		{"not a secrets dump", answer(`{"configs":[{"@type":"type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"}]}`, nil),
			[]string{"no type.googleapis.com/envoy.admin.v3.SecretsConfigDump"}},
		{"not json", answer("Error: Get \"http://localhost:15000/config_dump\": connection refused", nil),
			[]string{"as JSON"}},
		{"pilot-agent fails", func(_ context.Context, cmd Command) ([]byte, []byte, error) {
			stderr := []byte("Error: failure running request: dial unix ./etc/istio/proxy/envoy-admin.sock: connect: no such file or directory")
			return nil, stderr, newExecError(cmd, stderr, utilexec.CodeExitError{Err: errors.New("command terminated with exit code 1"), Code: 1})
		}, []string{"container istio-proxy", "pilot-agent request GET", "exit code 1", "envoy-admin.sock"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			chain, roots, err := NewCertReader(&scriptedExecer{run: tc.run}).SidecarSecrets(t.Context(), serverPod)
			if err == nil {
				t.Fatalf("want an error, got %d and %d certificates", len(chain), len(roots))
			}
			for _, want := range append(tc.want, serverPod.String()) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
