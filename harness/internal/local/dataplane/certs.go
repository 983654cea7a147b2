package dataplane

import (
	"context"
	"crypto/x509"
	"errors"
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
	// renewing is set while a renewal runs in the background.
	renewing bool
}

// renewalTimeout bounds one background renewal (a TokenRequest, a CSR to
// istiod, istiod's TokenReview); a renewal that fails is tried again by
// the next use after it.
const renewalTimeout = 30 * time.Second

// certsOf returns the certificates pod's sidecar holds now, issuing them on
// first use and renewing them once the grace period is reached: istio-agent
// rotates a secret when less than SECRET_GRACE_PERIOD_RATIO of its lifetime
// is left (security/pkg/nodeagent/cache: rotateTime), here without the
// agent's jitter. The renewal runs in the background, as istio-agent's
// does, while the sidecar serves the certificates it holds until the new
// ones arrive: a request never waits for istiod's CA (a renewal on the
// request's path timed requests out on a loaded machine, failing rotate
// steps for a delay no real sidecar has). Only a sidecar without a valid
// certificate (the first use, or after expiry) waits for one. The pod's
// UID keys the cache, so a new pod of the same name starts with new
// certificates.
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
	if sc != nil && now.Before(sc.certs.Leaf().NotAfter) {
		e.renewInBackground(&sc.renewing, func(ctx context.Context) error {
			_, err := e.issue(ctx, pod, ttl, ratio)
			return err
		}, sc.certs, "simulated sidecar", "pod", pod.Namespace+"/"+pod.Name)
		return sc.certs, nil
	}
	certs, err := e.issue(ctx, pod, ttl, ratio)
	if err != nil {
		return nil, fmt.Errorf("the sidecar of %s/%s has no certificate: %w", pod.Namespace, pod.Name, err)
	}
	return certs, nil
}

// renewInBackground runs renew, bounded by renewalTimeout, unless a
// renewal of the same holder already runs (*renewing, guarded by e.mu). A
// renewal that fails (istiod restarting, e.g. for a root rotation or an
// upgrade) leaves the holder serving held, valid until its NotAfter, as
// istio-agent and ztunnel do while they retry; the failure is logged as
// who's, with attrs.
func (e *Execer) renewInBackground(renewing *bool, renew func(context.Context) error, held *Certs, who string, attrs ...any) {
	e.mu.Lock()
	if *renewing {
		e.mu.Unlock()
		return
	}
	*renewing = true
	e.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), renewalTimeout)
		defer cancel()
		err := renew(ctx)
		e.mu.Lock()
		*renewing = false
		e.mu.Unlock()
		if err != nil {
			e.log.Debug(who+" keeps its certificate: renewal failed", append(attrs,
				"serial", held.Leaf().SerialNumber.Text(16), "notAfter", held.Leaf().NotAfter, "error", err)...)
		}
	}()
}

// issue gets pod's sidecar new certificates from the CA and makes them the
// ones it holds.
func (e *Execer) issue(ctx context.Context, pod *corev1.Pod, ttl time.Duration, ratio float64) (*Certs, error) {
	certs, err := e.certs.Issue(ctx, pod, ttl)
	if err != nil {
		return nil, err
	}
	if len(certs.Chain) == 0 || len(certs.Roots) == 0 {
		return nil, errors.New("the CA returned an empty chain or no roots")
	}
	if certs.Issued.IsZero() {
		certs.Issued = e.now()
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
