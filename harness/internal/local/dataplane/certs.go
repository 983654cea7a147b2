package dataplane

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshproof/meshproof/harness/internal/ca"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// Certs is what one simulated sidecar holds: its SDS secrets "default"
// (Chain, leaf first) and "ROOTCA" (Roots).
type Certs struct {
	Chain []*x509.Certificate
	Roots []*x509.Certificate
	// Issued is when the sidecar got them; renewal counts from here, as
	// istio-agent counts from the secret's creation.
	Issued time.Time
}

// Leaf is the workload certificate.
func (c *Certs) Leaf() *x509.Certificate { return c.Chain[0] }

// CertSource issues a sidecar's certificates for a pod, valid for ttl.
// IstiodCA is the real one; tests of the decisions use their own.
type CertSource interface {
	Issue(ctx context.Context, pod *corev1.Pod, ttl time.Duration) (*Certs, error)
}

// sidecar is one pod's simulated istio-agent: the certificates it holds.
type sidecar struct {
	certs *Certs
	renew time.Time
}

// certsOf returns the certificates pod's sidecar holds now, issuing them on
// first use and renewing them once the grace period is reached: istio-agent
// rotates a secret when less than SECRET_GRACE_PERIOD_RATIO of its lifetime
// is left (security/pkg/nodeagent/cache: rotateTime), here without the
// agent's jitter. The pod's UID keys the cache, so a new pod of the same
// name starts with new certificates.
func (e *Execer) certsOf(ctx context.Context, pod *corev1.Pod) (*Certs, error) {
	if injection.Proxy(pod) == nil {
		return nil, fmt.Errorf("pod %s/%s has no %s container", pod.Namespace, pod.Name, injection.ContainerName)
	}
	ttl, err := secretTTL(pod)
	if err != nil {
		return nil, err
	}
	ratio, err := gracePeriodRatio(pod)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	sc := e.sidecars[pod.UID]
	e.mu.Unlock()
	now := e.now()
	if sc != nil && now.Before(sc.renew) {
		return sc.certs, nil
	}
	certs, err := e.certs.Issue(ctx, pod, ttl)
	if err != nil {
		if sc != nil && now.Before(sc.certs.Leaf().NotAfter) {
			// istio-agent keeps serving the secret it holds while a
			// renewal fails (istiod restarting, e.g. for a root rotation
			// or an upgrade) and retries: the certificate is valid until
			// its NotAfter.
			e.log.Debug("simulated sidecar keeps its certificate: renewal failed", "pod", pod.Namespace+"/"+pod.Name,
				"serial", sc.certs.Leaf().SerialNumber.Text(16), "notAfter", sc.certs.Leaf().NotAfter, "error", err)
			return sc.certs, nil
		}
		return nil, fmt.Errorf("the sidecar of %s/%s has no certificate: %w", pod.Namespace, pod.Name, err)
	}
	if len(certs.Chain) == 0 || len(certs.Roots) == 0 {
		return nil, fmt.Errorf("the sidecar of %s/%s got an empty chain or no roots", pod.Namespace, pod.Name)
	}
	if certs.Issued.IsZero() {
		certs.Issued = now
	}
	leaf := certs.Leaf()
	grace := time.Duration(ratio * float64(leaf.NotAfter.Sub(certs.Issued)))
	next := &sidecar{certs: certs, renew: leaf.NotAfter.Add(-grace)}
	e.mu.Lock()
	e.sidecars[pod.UID] = next
	e.mu.Unlock()
	e.log.Info("simulated sidecar got certificates", "pod", pod.Namespace+"/"+pod.Name,
		"serial", leaf.SerialNumber.Text(16), "notAfter", leaf.NotAfter, "renewAt", next.renew)
	return certs, nil
}

// verifyPeer is what an Envoy with roots does with a peer's chain in Istio
// mTLS: chain to the roots, and read the SPIFFE ID.
func verifyPeer(chain, roots []*x509.Certificate) (string, error) {
	return ca.VerifyWorkloadChain(chain, roots...)
}

// IssueSidecarCertificates gets pod's sidecar its certificates now, as
// istio-agent does when the pod starts (before its Envoy is ready), so that
// the pod turns Ready only with them (cluster.Sidecars.CertifyWith). The
// simulated sidecar then serves them until their renewal.
func (e *Execer) IssueSidecarCertificates(ctx context.Context, pod *corev1.Pod) error {
	_, err := e.certsOf(ctx, pod)
	return err
}
