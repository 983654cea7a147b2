package ca

import (
	"crypto/x509"
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// SecretTrusting is b's cacerts Secret with root-cert.pem holding roots, in
// the order given, instead of b's root alone: the shape of a root CA
// rotation, where istiod distributes several roots (old first) as the
// mesh's trust anchors while it signs with one intermediate. b's own root
// must be among roots, or istiod would refuse the Secret (its cert-chain.pem
// must verify against root-cert.pem).
func (b *Bundle) SecretTrusting(namespace string, labels map[string]string, roots ...*x509.Certificate) (*corev1.Secret, error) {
	found := false
	for _, r := range roots {
		if r == nil {
			return nil, fmt.Errorf("ca: a nil root certificate in the trust bundle")
		}
		found = found || r.Equal(b.Root)
	}
	if !found {
		return nil, fmt.Errorf("ca: the trust bundle (%d roots) lacks the bundle's own root %q, which signs its intermediate", len(roots), b.Root.Subject)
	}
	s, err := b.Secret(namespace, labels)
	if err != nil {
		return nil, err
	}
	s.Data[RootCertKey] = EncodeCertificatesPEM(roots...)
	return s, nil
}
