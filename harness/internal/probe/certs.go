package probe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/probe/configdump"
	"github.com/meshproof/meshproof/harness/results"
)

// ProxyContainer is the container Istio injects the sidecar as.
const ProxyContainer = "istio-proxy"

// istioALPN is what a sidecar offers when it originates mTLS; offering the
// same makes the server's sidecar pick its mTLS filter chain.
const istioALPN = "istio-peer-exchange,istio"

// configDumpPath asks Envoy for its active SDS secrets only: the full dump
// of a sidecar is megabytes of listeners and clusters.
const configDumpPath = "config_dump?mask=dynamic_active_secrets"

// certExecTimeout bounds one certificate read. `echo peercert` gives up on
// its own after its 5s dial-and-handshake timeout and 1s rejection wait;
// the rest is exec overhead.
const certExecTimeout = 30 * time.Second

// CertReader reads the certificates a sidecar serves. It implements
// engine.CertReader.
type CertReader struct {
	execer Execer
}

// NewCertReader returns a CertReader that execs through e.
func NewCertReader(e Execer) *CertReader { return &CertReader{execer: e} }

// HandshakeChain runs `echo peercert` in the out-of-mesh pod from against
// server's IP and port, and returns the chain server's sidecar presented,
// leaf first. The sidecar then rejects the connection for want of a client
// certificate; that is expected and not an error. No connection, or no
// certificate presented, is.
func (r *CertReader) HandshakeChain(ctx context.Context, from, server results.Pod, port int) ([]*x509.Certificate, error) {
	if server.IP == "" {
		return nil, fmt.Errorf("handshake with %s: the pod has no IP", server)
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("handshake with %s: port %d out of range", server, port)
	}
	ctx, cancel := context.WithTimeout(ctx, certExecTimeout)
	defer cancel()
	addr := net.JoinHostPort(server.IP, strconv.Itoa(port))
	cmd := Command{
		Pod:       from,
		Container: manifests.ContainerName,
		Argv:      []string{image.BinaryPath, "peercert", "--addr", addr, "--alpn", istioALPN},
	}
	stdout, _, err := r.execer.Exec(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("handshake with %s (%s) from %s: %w", server, addr, from, err)
	}
	chain, err := chainFromReport(stdout)
	if err != nil {
		return nil, fmt.Errorf("handshake with %s (%s) from %s: %w", server, addr, from, err)
	}
	return chain, nil
}

// chainFromReport decodes `echo peercert` output into the presented chain.
func chainFromReport(out []byte) ([]*x509.Certificate, error) {
	var report echoapi.PeerCertReport
	if err := json.Unmarshal(out, &report); err != nil {
		return nil, fmt.Errorf("echo peercert output is not a report: %w (starts %.80q)", err, out)
	}
	if report.DialError != "" {
		return nil, fmt.Errorf("no connection: %s", report.DialError)
	}
	if len(report.Chain) == 0 {
		why := report.HandshakeError
		if why == "" {
			why = report.VerifyError
		}
		return nil, fmt.Errorf("the server presented no certificate (%s)", why)
	}
	chain := make([]*x509.Certificate, 0, len(report.Chain))
	for i, info := range report.Chain {
		if info.PEM == "" {
			return nil, fmt.Errorf("certificate %d of the report carries no PEM; the echo image predates the pem field and must be rebuilt", i)
		}
		certs, err := ca.ParseCertificatesPEM([]byte(info.PEM))
		if err != nil {
			return nil, fmt.Errorf("certificate %d of the report: %w", i, err)
		}
		if len(certs) != 1 {
			return nil, fmt.Errorf("certificate %d of the report holds %d certificates, want 1", i, len(certs))
		}
		// The summary and the PEM come from the same certificate; if they
		// disagree, the report is not what echo printed.
		sum := sha256.Sum256(certs[0].Raw)
		if got := hex.EncodeToString(sum[:]); info.SHA256 != "" && got != info.SHA256 {
			return nil, fmt.Errorf("certificate %d of the report: PEM fingerprint %s does not match its sha256 %s", i, got, info.SHA256)
		}
		chain = append(chain, certs[0])
	}
	return chain, nil
}

// SidecarSecrets asks server's sidecar for its config dump, through
// pilot-agent in the istio-proxy container, and returns the workload chain
// of secret "default" (leaf first) and the roots of secret "ROOTCA". Either
// secret missing or empty is an error: the sidecar has not been given its
// certificates yet.
func (r *CertReader) SidecarSecrets(ctx context.Context, server results.Pod) (chain, roots []*x509.Certificate, err error) {
	ctx, cancel := context.WithTimeout(ctx, certExecTimeout)
	defer cancel()
	cmd := Command{
		Pod:       server,
		Container: ProxyContainer,
		Argv:      []string{"pilot-agent", "request", "GET", configDumpPath},
	}
	stdout, _, err := r.execer.Exec(ctx, cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the sidecar secrets of %s: %w", server, err)
	}
	chain, roots, err = workloadSecrets(bytes.TrimSpace(stdout))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the sidecar secrets of %s: %w", server, err)
	}
	return chain, roots, nil
}

// workloadSecrets picks the workload chain and the roots out of a dump.
func workloadSecrets(dump []byte) (chain, roots []*x509.Certificate, err error) {
	secrets, err := configdump.Parse(dump)
	if err != nil {
		return nil, nil, err
	}
	workload, ok := secrets[configdump.WorkloadSecretName]
	if !ok || len(workload.CertificateChain) == 0 {
		return nil, nil, fmt.Errorf("no certificate chain in secret %q (active secrets: %s)", configdump.WorkloadSecretName, secretNames(secrets))
	}
	root, ok := secrets[configdump.RootSecretName]
	if !ok || len(root.TrustedCA) == 0 {
		return nil, nil, fmt.Errorf("no trusted CA in secret %q (active secrets: %s)", configdump.RootSecretName, secretNames(secrets))
	}
	return workload.CertificateChain, root.TrustedCA, nil
}

// secretNames lists the secrets' names for an error message.
func secretNames(secrets map[string]configdump.Secret) string {
	if len(secrets) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(secrets)), ", ")
}
