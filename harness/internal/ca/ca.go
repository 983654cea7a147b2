// Package ca generates the certificate authority meshproof plugs into Istio
// ("plug in CA certificates"): a self-signed root and an intermediate signed
// by it. istiod signs workload certificates with the intermediate, so a test
// that knows the root can check exactly which CA issued what a workload
// presents, and can tell a rotated certificate from the old one.
//
// Private keys stay in memory. Their type redacts itself in every fmt verb
// and in slog, so printing or logging a Bundle never leaks key material.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"time"
)

// KeyAlgorithm selects the key type and size of generated keys.
type KeyAlgorithm string

const (
	// ECDSAP256 is the default: small, fast, and what Istio itself uses
	// for workload keys.
	ECDSAP256 KeyAlgorithm = "ECDSA-P256"
	RSA2048   KeyAlgorithm = "RSA-2048"
	RSA4096   KeyAlgorithm = "RSA-4096"
)

// Default validity periods. The intermediate is shorter-lived than the root,
// as a CA hierarchy should be; both are far longer than any test run.
const (
	DefaultRootValidity         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateValidity = 365 * 24 * time.Hour
	DefaultOrganization         = "meshproof"
)

// clockSkew backdates NotBefore so that a kind node whose clock is slightly
// behind the host still accepts freshly generated certificates.
const clockSkew = 5 * time.Minute

type options struct {
	algorithm            KeyAlgorithm
	rootValidity         time.Duration
	intermediateValidity time.Duration
	organization         string
	now                  func() time.Time
}

// Option configures Generate.
type Option func(*options)

// WithKeyAlgorithm selects the algorithm of the root and intermediate keys
// (ECDSAP256 by default).
func WithKeyAlgorithm(a KeyAlgorithm) Option { return func(o *options) { o.algorithm = a } }

// WithValidity sets how long the root and the intermediate are valid.
func WithValidity(root, intermediate time.Duration) Option {
	return func(o *options) { o.rootValidity, o.intermediateValidity = root, intermediate }
}

// WithOrganization sets the subject organization of both CA certificates.
func WithOrganization(org string) Option { return func(o *options) { o.organization = org } }

// WithClock sets the source of "now" used for validity periods.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// PrivateKey holds a private key in memory. It never prints its contents:
// String, GoString, Format and LogValue all return a redacted description.
// Use PEM to obtain the encoded key, e.g. to put it in a Secret.
type PrivateKey struct {
	signer    crypto.Signer
	algorithm KeyAlgorithm
}

// Signer returns the key for signing.
func (k *PrivateKey) Signer() crypto.Signer { return k.signer }

// Public returns the public half of the key.
func (k *PrivateKey) Public() crypto.PublicKey { return k.signer.Public() }

// Algorithm reports the key's algorithm.
func (k *PrivateKey) Algorithm() KeyAlgorithm { return k.algorithm }

// PEM encodes the key as an unencrypted PKCS#8 "PRIVATE KEY" block, which
// istiod accepts for ca-key.pem regardless of the key type.
func (k *PrivateKey) PEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	if err != nil {
		return nil, fmt.Errorf("encode %s private key as PKCS#8: %w", k.algorithm, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func (k *PrivateKey) redacted() string {
	if k == nil {
		return "PrivateKey(<nil>)"
	}
	return "PrivateKey(" + string(k.algorithm) + ", REDACTED)"
}

// String redacts the key.
func (k *PrivateKey) String() string { return k.redacted() }

// GoString redacts the key for %#v.
func (k *PrivateKey) GoString() string { return k.redacted() }

// Format redacts the key for every verb, including %x and %+v, which would
// otherwise bypass String.
func (k *PrivateKey) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.redacted())) }

// LogValue redacts the key in log/slog output.
func (k *PrivateKey) LogValue() slog.Value { return slog.StringValue(k.redacted()) }

// MarshalText redacts the key in encoders that honour encoding.TextMarshaler
// (JSON, YAML), so that serialising a struct that holds a key cannot leak it.
func (k *PrivateKey) MarshalText() ([]byte, error) { return []byte(k.redacted()), nil }

var (
	_ fmt.Formatter  = (*PrivateKey)(nil)
	_ fmt.GoStringer = (*PrivateKey)(nil)
	_ slog.LogValuer = (*PrivateKey)(nil)
)

// Bundle is a root CA and an intermediate CA signed by it.
type Bundle struct {
	Root            *x509.Certificate
	RootKey         *PrivateKey
	Intermediate    *x509.Certificate
	IntermediateKey *PrivateKey
}

// Format prints a one-line summary of the bundle (subjects, serials,
// expiry), never key material, for every verb.
func (b *Bundle) Format(f fmt.State, _ rune) {
	if b == nil {
		_, _ = f.Write([]byte("ca.Bundle(<nil>)"))
		return
	}
	_, _ = fmt.Fprintf(f, "ca.Bundle{Root: %s, RootKey: %s, Intermediate: %s, IntermediateKey: %s}",
		describe(b.Root), b.RootKey.redacted(), describe(b.Intermediate), b.IntermediateKey.redacted())
}

// LogValue summarises the bundle in log/slog output without key material.
func (b *Bundle) LogValue() slog.Value { return slog.StringValue(fmt.Sprint(b)) }

func describe(c *x509.Certificate) string {
	if c == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q serial=%x notAfter=%s", c.Subject.String(), c.SerialNumber, c.NotAfter.UTC().Format(time.RFC3339))
}

// Generate creates a new root CA and an intermediate CA signed by it.
func Generate(opts ...Option) (*Bundle, error) {
	o := options{
		algorithm:            ECDSAP256,
		rootValidity:         DefaultRootValidity,
		intermediateValidity: DefaultIntermediateValidity,
		organization:         DefaultOrganization,
		now:                  time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.rootValidity <= 0 || o.intermediateValidity <= 0 {
		return nil, fmt.Errorf("CA validity must be positive, got root %s and intermediate %s", o.rootValidity, o.intermediateValidity)
	}
	if o.intermediateValidity > o.rootValidity {
		return nil, fmt.Errorf("intermediate validity %s exceeds root validity %s; the intermediate would outlive its issuer", o.intermediateValidity, o.rootValidity)
	}

	rootKey, err := newKey(o.algorithm)
	if err != nil {
		return nil, err
	}
	intermediateKey, err := newKey(o.algorithm)
	if err != nil {
		return nil, err
	}
	notBefore := o.now().Add(-clockSkew).Truncate(time.Second)

	rootTemplate := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{o.organization}, CommonName: "meshproof root CA"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(o.rootValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	root, err := sign(rootTemplate, rootTemplate, rootKey.Public(), rootKey.signer)
	if err != nil {
		return nil, fmt.Errorf("self-sign root CA: %w", err)
	}

	// MaxPathLen 0: the intermediate may sign workload certificates only,
	// never another CA — the shape Istio's plug-in-CA tooling produces.
	intermediateTemplate := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{o.organization}, CommonName: "meshproof intermediate CA"},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(o.intermediateValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	intermediate, err := sign(intermediateTemplate, root, intermediateKey.Public(), rootKey.signer)
	if err != nil {
		return nil, fmt.Errorf("sign intermediate CA with root: %w", err)
	}

	return &Bundle{Root: root, RootKey: rootKey, Intermediate: intermediate, IntermediateKey: intermediateKey}, nil
}

// IssueWorkloadCert signs a workload certificate with the intermediate, in
// the shape istiod issues them: no subject, the SPIFFE ID as the only URI
// SAN, usable for both TLS client and server. It returns the leaf, its key,
// and the chain a workload presents (leaf, then intermediate). Tests use it
// to exercise identity and rotation checks without a cluster.
func (b *Bundle) IssueWorkloadCert(spiffeID string, validity time.Duration) (*x509.Certificate, *PrivateKey, []*x509.Certificate, error) {
	id, err := parseSPIFFEID(spiffeID)
	if err != nil {
		return nil, nil, nil, err
	}
	if validity <= 0 {
		return nil, nil, nil, fmt.Errorf("workload certificate validity must be positive, got %s", validity)
	}
	key, err := newKey(ECDSAP256)
	if err != nil {
		return nil, nil, nil, err
	}
	notBefore := time.Now().Add(-clockSkew).Truncate(time.Second)
	notAfter := notBefore.Add(validity)
	if notAfter.After(b.Intermediate.NotAfter) {
		notAfter = b.Intermediate.NotAfter
	}
	template := &x509.Certificate{
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{id},
	}
	leaf, err := sign(template, b.Intermediate, key.Public(), b.IntermediateKey.signer)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign workload certificate for %s: %w", spiffeID, err)
	}
	return leaf, key, []*x509.Certificate{leaf, b.Intermediate}, nil
}

func newKey(a KeyAlgorithm) (*PrivateKey, error) {
	var (
		s   crypto.Signer
		err error
	)
	switch a {
	case ECDSAP256:
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		s, err = rsa.GenerateKey(rand.Reader, 2048)
	case RSA4096:
		s, err = rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, fmt.Errorf("unsupported key algorithm %q (want %s, %s or %s)", a, ECDSAP256, RSA2048, RSA4096)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", a, err)
	}
	return &PrivateKey{signer: s, algorithm: a}, nil
}

func sign(template, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	template.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, template, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// EncodeCertificatesPEM concatenates the certificates as PEM "CERTIFICATE"
// blocks, in order.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// ParseCertificatesPEM parses every "CERTIFICATE" block in data, in order.
// Blocks of other types are an error rather than silently skipped, so that
// a key pasted into a chain by mistake is noticed.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// VerifyWorkloadChain checks that chain (leaf first, then intermediates, as
// a workload presents it in the TLS handshake) leads to one of roots, and
// returns the leaf's SPIFFE ID. Verification follows SPIFFE X.509-SVID
// rules rather than web PKI: no DNS name is checked, any extended key usage
// is accepted, the leaf must not be a CA, and it must carry exactly one URI
// SAN, with the spiffe scheme.
func VerifyWorkloadChain(chain []*x509.Certificate, roots ...*x509.Certificate) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("empty workload certificate chain")
	}
	if len(roots) == 0 {
		return "", errors.New("no trusted root given to verify the workload chain against")
	}
	leaf := chain[0]
	if leaf.IsCA {
		return "", fmt.Errorf("workload certificate %q is a CA certificate; a SPIFFE leaf must not be", leaf.Subject)
	}
	if len(leaf.URIs) != 1 {
		return "", fmt.Errorf("workload certificate has %d URI SANs, want exactly one SPIFFE ID", len(leaf.URIs))
	}
	id := leaf.URIs[0]
	if _, err := parseSPIFFEID(id.String()); err != nil {
		return "", fmt.Errorf("workload certificate URI SAN: %w", err)
	}

	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return "", fmt.Errorf("workload certificate %s does not chain to the trusted root: %w", id, err)
	}
	return id.String(), nil
}

// VerifyWorkloadChainPEM is VerifyWorkloadChain for PEM input: chainPEM
// holds the presented chain (leaf first), rootsPEM one or more roots.
func VerifyWorkloadChainPEM(chainPEM, rootsPEM []byte) (string, error) {
	chain, err := ParseCertificatesPEM(chainPEM)
	if err != nil {
		return "", fmt.Errorf("workload chain: %w", err)
	}
	roots, err := ParseCertificatesPEM(rootsPEM)
	if err != nil {
		return "", fmt.Errorf("trusted roots: %w", err)
	}
	return VerifyWorkloadChain(chain, roots...)
}

// parseSPIFFEID checks the parts of the SPIFFE ID format that matter here:
// spiffe scheme, a trust domain, a path, and nothing else.
func parseSPIFFEID(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("SPIFFE ID %q: %w", s, err)
	}
	switch {
	case u.Scheme != "spiffe":
		return nil, fmt.Errorf("SPIFFE ID %q: scheme must be spiffe", s)
	case u.Host == "":
		return nil, fmt.Errorf("SPIFFE ID %q: missing trust domain", s)
	case u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("SPIFFE ID %q: must not have user info, port, query or fragment", s)
	}
	return u, nil
}
