package engine

import (
	"context"
	"crypto/x509"

	"github.com/meshproof/meshproof/harness/results"
)

// CertReader reads the certificate a workload's sidecar serves, the two
// ways a rotation check needs.
type CertReader interface {
	// HandshakeChain is the chain the server pod's sidecar presents in a TLS
	// handshake (ALPN istio-peer-exchange, istio) dialled from the
	// out-of-mesh pod `from` without a client certificate: the sidecar
	// presents its chain before it rejects the missing client certificate.
	// Leaf first.
	HandshakeChain(ctx context.Context, from, server results.Pod, port int) ([]*x509.Certificate, error)
	// SidecarSecrets reads the sidecar's own config dump
	// (pilot-agent request GET config_dump?mask=dynamic_active_secrets):
	// the chain of secret "default" (leaf first) and the roots of "ROOTCA".
	SidecarSecrets(ctx context.Context, server results.Pod) (chain, roots []*x509.Certificate, err error)
}
