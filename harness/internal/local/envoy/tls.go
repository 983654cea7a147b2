package envoy

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/meshproof/meshproof/harness/internal/local/memo"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// Transport sockets by type URL.
const (
	upstreamTLSType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	downstreamTLSType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	rawBufferType     = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
)

// The SDS secrets istio-agent serves an Envoy sidecar ([SDS]).
const (
	workloadSecret = "default"
	rootSecret     = "ROOTCA"
	// systemRootSecret is the proxy image's system trust store, which
	// istiod names for a DestinationRule SIMPLE without caCertificates
	// (pilot/pkg/networking/core/cluster_tls.go, security.FileRootSystemCACert):
	// public CAs, none of which signed a mesh's workload certificate.
	systemRootSecret = "file-root:system"
)

// Identity is what a sidecar's secret discovery gives it: its workload
// certificate chain (leaf first) and the roots it trusts. A nil Identity,
// or one without a chain, is a sidecar that has none yet.
type Identity struct {
	Chain []*x509.Certificate
	Roots []*x509.Certificate
}

// Leaf is the workload certificate, or nil.
func (id *Identity) Leaf() *x509.Certificate {
	if id == nil || len(id.Chain) == 0 {
		return nil
	}
	return id.Chain[0]
}

// tlsContext is what the evaluator reads of an Upstream- or
// DownstreamTlsContext.
type tlsContext struct {
	// certificate is the SDS name of the certificate presented, "" none.
	certificate string
	// validation is the SDS name of the trusted roots, "" none (the peer's
	// certificate is not verified).
	validation string
	// sans are the subject alternative names the peer's certificate must
	// have one of, none when empty.
	sans []*tlsv3.SubjectAltNameMatcher
	alpn []string
	sni  string
	// requireClientCert is DownstreamTlsContext's.
	requireClientCert bool
}

func readCommon(c *tlsv3.CommonTlsContext, t *tlsContext) error {
	if len(c.GetTlsCertificates()) > 0 || c.GetTlsCertificateProviderInstance() != nil || c.GetTlsCertificateCertificateProviderInstance() != nil {
		return undecidable("a TLS context with inline certificates or a certificate provider, not an SDS secret")
	}
	switch n := len(c.GetTlsCertificateSdsSecretConfigs()); {
	case n == 1:
		t.certificate = c.GetTlsCertificateSdsSecretConfigs()[0].GetName()
	case n > 1:
		return undecidable("a TLS context with %d certificates", n)
	}
	t.alpn = c.GetAlpnProtocols()
	var def *tlsv3.CertificateValidationContext
	switch v := c.GetValidationContextType().(type) {
	case nil:
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		t.validation = v.ValidationContextSdsSecretConfig.GetName()
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		t.validation = v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
		def = v.CombinedValidationContext.GetDefaultValidationContext()
	case *tlsv3.CommonTlsContext_ValidationContext:
		def = v.ValidationContext
	default:
		return undecidable("a TLS validation context of kind %T", v)
	}
	if def != nil {
		if def.GetTrustedCa() != nil || def.GetCaCertificateProviderInstance() != nil || len(def.GetVerifyCertificateHash()) > 0 || len(def.GetVerifyCertificateSpki()) > 0 {
			return undecidable("a TLS validation context with inline roots, a provider or pinned hashes")
		}
		if def.GetSystemRootCerts() != nil {
			t.validation = systemRootSecret
		}
		t.sans = def.GetMatchTypedSubjectAltNames()
		//nolint:staticcheck // istiod may still write the deprecated field.
		for _, m := range def.GetMatchSubjectAltNames() {
			t.sans = append(t.sans, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m})
		}
	}
	return nil
}

// transportSocket decodes a transport socket: nil for plaintext
// (raw_buffer, or none set), else its TLS context.
func transportSocket(ts *corev3.TransportSocket) (*tlsContext, error) {
	if ts == nil {
		return nil, nil
	}
	switch url := ts.GetTypedConfig().GetTypeUrl(); url {
	case rawBufferType:
		return nil, nil
	case upstreamTLSType:
		u, err := xds.Unpack[*tlsv3.UpstreamTlsContext](ts.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		t := &tlsContext{sni: u.GetSni()}
		if err := readCommon(u.GetCommonTlsContext(), t); err != nil {
			return nil, err
		}
		return t, nil
	case downstreamTLSType:
		d, err := xds.Unpack[*tlsv3.DownstreamTlsContext](ts.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		t := &tlsContext{requireClientCert: d.GetRequireClientCertificate().GetValue()}
		if err := readCommon(d.GetCommonTlsContext(), t); err != nil {
			return nil, err
		}
		return t, nil
	default:
		return nil, undecidable("transport socket %s (%s)", ts.GetName(), url)
	}
}

// secretChain is the certificate an SDS name gives id.
func secretChain(name string, id *Identity) ([]*x509.Certificate, error) {
	if name != workloadSecret {
		return nil, undecidable("SDS certificate %q: only istio-agent's %q is known", name, workloadSecret)
	}
	if id == nil || len(id.Chain) == 0 {
		return nil, nil
	}
	return id.Chain, nil
}

// secretRoots are the roots an SDS validation name gives id; public is
// true for the system trust store, which holds no mesh root.
func secretRoots(name string, id *Identity) (roots []*x509.Certificate, public bool, err error) {
	switch name {
	case rootSecret:
		if id == nil {
			return nil, false, nil
		}
		return id.Roots, false, nil
	case systemRootSecret:
		return nil, true, nil
	}
	return nil, false, undecidable("SDS validation context %q: only istio-agent's %q and the system's %q are known", name, rootSecret, systemRootSecret)
}

// verify checks a presented chain against a validation context of the
// verifying side ([CERT-VALIDATION]): the chain must lead to one of the
// roots and a SAN must match, when the context names roots and SANs.
func verify(chain []*x509.Certificate, t *tlsContext, verifier *Identity) error {
	if len(chain) == 0 {
		return errors.New("no certificate presented")
	}
	if t.validation != "" {
		roots, public, err := secretRoots(t.validation, verifier)
		if err != nil {
			return err
		}
		if public {
			return fmt.Errorf("the certificate of %s is not signed by a public CA the system trust store holds: CERTIFICATE_VERIFY_FAILED", spiffeID(chain[0]))
		}
		if len(roots) == 0 {
			return errors.New("no roots to verify with (the verifying sidecar has no ROOTCA secret)")
		}
		if err := checkChain(verified, chain, roots, time.Now()); err != nil {
			return fmt.Errorf("CERTIFICATE_VERIFY_FAILED: %w", err)
		}
	}
	if len(t.sans) > 0 && !sanMatches(chain[0], t.sans) {
		return fmt.Errorf("CERTIFICATE_VERIFY_FAILED: subject alternative names %s match none of %s", strings.Join(uriSANs(chain[0]), ","), sanList(t.sans))
	}
	return nil
}

func sanMatches(c *x509.Certificate, ms []*tlsv3.SubjectAltNameMatcher) bool {
	for _, m := range ms {
		var values []string
		switch m.GetSanType() {
		case tlsv3.SubjectAltNameMatcher_URI:
			values = uriSANs(c)
		case tlsv3.SubjectAltNameMatcher_DNS:
			values = c.DNSNames
		default:
			continue
		}
		for _, v := range values {
			if stringMatches(m.GetMatcher(), v) {
				return true
			}
		}
	}
	return false
}

func stringMatches(m *matcherv3.StringMatcher, v string) bool {
	if m.GetIgnoreCase() {
		v = strings.ToLower(v)
	}
	fold := func(s string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(s)
		}
		return s
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return v == fold(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(v, fold(p.Prefix))
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(v, fold(p.Suffix))
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(v, fold(p.Contains))
	}
	return false
}

func sanList(ms []*tlsv3.SubjectAltNameMatcher) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.GetMatcher().String())
	}
	return "[" + strings.Join(out, "; ") + "]"
}

func uriSANs(c *x509.Certificate) []string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	return out
}

// spiffeID is a certificate's first URI SAN, "" when it has none.
func spiffeID(c *x509.Certificate) string {
	if c == nil || len(c.URIs) == 0 {
		return ""
	}
	return c.URIs[0].String()
}

// negotiateALPN is the protocol a TLS server picks: the first of its own
// list the client offered (BoringSSL's server preference, as Envoy
// configures its ALPN select callback), none when they share none.
func negotiateALPN(server, client []string) string {
	for _, p := range server {
		if slices.Contains(client, p) {
			return p
		}
	}
	return ""
}

// verified remembers the chains that verified, with the span of time in
// which the chain they built stays valid: every simulated request between
// two sidecars presents the same certificates to the same roots until a
// rotation, and checking the signatures again each time was 9% of a
// rehearsal's in-process CPU (2.8 of 31.4 CPU-seconds in
// harness/rehearsal's TestDefaultScenariosPass). Failures are not
// remembered.
// They are keyed by the SHA-256 of the chain and the roots.
var verified = memo.New[[sha256.Size]byte, validity](chainMemoGeneration)

// chainMemoGeneration bounds verified's generations (memo.Map).
const chainMemoGeneration = 1024

// validity is when a verified chain holds: from the latest NotBefore to
// the earliest NotAfter of its certificates.
type validity struct{ from, until time.Time }

// checkChain verifies chain (leaf first, then intermediates) against roots
// at now, as x509.Certificate.Verify does, or answers from a chain in
// valid (verified before) whose certificates are all still valid at now.
func checkChain(valid *memo.Map[[sha256.Size]byte, validity], chain, roots []*x509.Certificate, now time.Time) error {
	h := sha256.New()
	for _, c := range chain {
		h.Write(c.Raw)
	}
	h.Write([]byte{0})
	for _, r := range roots {
		h.Write(r.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	if v, ok := valid.Get(k); ok && !now.Before(v.from) && !now.After(v.until) {
		return nil
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return err
	}
	v := validity{from: chains[0][0].NotBefore, until: chains[0][0].NotAfter}
	for _, c := range chains[0][1:] {
		if c.NotBefore.After(v.from) {
			v.from = c.NotBefore
		}
		if c.NotAfter.Before(v.until) {
			v.until = c.NotAfter
		}
	}
	valid.Put(k, v)
	return nil
}
