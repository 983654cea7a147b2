package ca

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Names istiod looks for: it reads a plugged-in CA from the Secret "cacerts"
// in its own namespace at start-up, so the Secret must exist before istiod
// is installed.
const (
	SecretName       = "cacerts"
	DefaultNamespace = "istio-system"

	// Keys of the cacerts Secret.
	CACertKey    = "ca-cert.pem"    // intermediate certificate (istiod's signing cert)
	CAKeyKey     = "ca-key.pem"     // intermediate private key
	RootCertKey  = "root-cert.pem"  // root certificate, distributed to workloads as trust anchor
	CertChainKey = "cert-chain.pem" // intermediate then root: the chain istiod appends to workload certs
)

// Secret returns the cacerts Secret for namespace with the given labels
// (typically ownership.Labels(runID)). It holds the intermediate's private
// key: create it and drop it, don't print it.
func (b *Bundle) Secret(namespace string, labels map[string]string) (*corev1.Secret, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	keyPEM, err := b.IntermediateKey.PEM()
	if err != nil {
		return nil, err
	}
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      SecretName,
			Namespace: namespace,
			Labels:    maps.Clone(labels),
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{
			CACertKey:    EncodeCertificatesPEM(b.Intermediate),
			CAKeyKey:     keyPEM,
			RootCertKey:  EncodeCertificatesPEM(b.Root),
			CertChainKey: EncodeCertificatesPEM(b.Intermediate, b.Root),
		},
	}, nil
}

// Install creates the bundle's cacerts Secret in namespace (DefaultNamespace
// if empty) through c, creating the namespace first when it does not exist
// yet, as is the case before Istio is installed. An existing cacerts Secret
// is overwritten, so re-running against a reused cluster plugs in the new CA.
// labels go on the Secret and on a namespace Install creates.
func (b *Bundle) Install(ctx context.Context, c client.Client, namespace string, labels map[string]string) error {
	secret, err := b.Secret(namespace, labels)
	if err != nil {
		return err
	}
	namespace = secret.Namespace

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: maps.Clone(labels)}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s for the %s Secret: %w", namespace, SecretName, err)
	}

	err = c.Create(ctx, secret)
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Secret %s/%s: %w", namespace, SecretName, err)
	}
	existing := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(secret), existing); err != nil {
		return fmt.Errorf("read existing Secret %s/%s to replace it: %w", namespace, SecretName, err)
	}
	existing.Labels = secret.Labels
	existing.Data = secret.Data
	existing.StringData = nil
	if err := c.Update(ctx, existing); err != nil {
		return fmt.Errorf("replace Secret %s/%s: %w", namespace, SecretName, err)
	}
	return nil
}

// LoadSecret reads a cacerts Secret back into a Bundle, to keep using the CA
// a reused cluster's istiod already runs with. The root's private key is not
// in the Secret, so RootKey is nil: the bundle can issue workload
// certificates from its intermediate but not new intermediates.
func LoadSecret(s *corev1.Secret) (*Bundle, error) {
	cert := func(key string) (*x509.Certificate, error) {
		certs, err := ParseCertificatesPEM(s.Data[key])
		if err != nil {
			return nil, fmt.Errorf("secret %s/%s, %s: %w", s.Namespace, s.Name, key, err)
		}
		return certs[0], nil
	}
	root, err := cert(RootCertKey)
	if err != nil {
		return nil, err
	}
	intermediate, err := cert(CACertKey)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(s.Data[CAKeyKey])
	if block == nil {
		return nil, fmt.Errorf("secret %s/%s, %s: no PEM block", s.Namespace, s.Name, CAKeyKey)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		// Keys written by other tools may be PKCS#1 or SEC 1.
		if k, err1 := x509.ParsePKCS1PrivateKey(block.Bytes); err1 == nil {
			parsed, err = k, nil
		} else if k, err2 := x509.ParseECPrivateKey(block.Bytes); err2 == nil {
			parsed, err = k, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s, %s: unreadable private key", s.Namespace, s.Name, CAKeyKey) // never the key itself
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("secret %s/%s, %s: not a signing key", s.Namespace, s.Name, CAKeyKey)
	}
	alg := ECDSAP256
	if r, isRSA := signer.(*rsa.PrivateKey); isRSA {
		alg = RSA2048
		if r.N.BitLen() > 2048 {
			alg = RSA4096
		}
	}
	return &Bundle{Root: root, Intermediate: intermediate, IntermediateKey: &PrivateKey{signer: signer, algorithm: alg}}, nil
}
