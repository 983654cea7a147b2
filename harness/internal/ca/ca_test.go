package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/meshproof/meshproof/harness/ownership"
)

func generate(t *testing.T, opts ...Option) *Bundle {
	t.Helper()
	b, err := Generate(opts...)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return b
}

func TestIntermediateChainsToRoot(t *testing.T) {
	b := generate(t)
	pool := x509.NewCertPool()
	pool.AddCert(b.Root)
	if _, err := b.Intermediate.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("intermediate does not verify against root: %v", err)
	}
	if err := b.Root.CheckSignatureFrom(b.Root); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	if !bytes.Equal(b.Intermediate.AuthorityKeyId, b.Root.SubjectKeyId) || len(b.Root.SubjectKeyId) == 0 {
		t.Errorf("intermediate AuthorityKeyId %x does not name root SubjectKeyId %x", b.Intermediate.AuthorityKeyId, b.Root.SubjectKeyId)
	}
}

func TestCAConstraints(t *testing.T) {
	b := generate(t)
	for name, c := range map[string]*x509.Certificate{"root": b.Root, "intermediate": b.Intermediate} {
		if !c.IsCA || !c.BasicConstraintsValid {
			t.Errorf("%s: IsCA=%v BasicConstraintsValid=%v, want both true", name, c.IsCA, c.BasicConstraintsValid)
		}
		for _, u := range []x509.KeyUsage{x509.KeyUsageCertSign, x509.KeyUsageCRLSign} {
			if c.KeyUsage&u == 0 {
				t.Errorf("%s: key usage %b lacks %b", name, c.KeyUsage, u)
			}
		}
		if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
			t.Errorf("%s: public key is %T, want ECDSA by default", name, c.PublicKey)
		} else if curve := c.PublicKey.(*ecdsa.PublicKey).Curve; curve != elliptic.P256() {
			t.Errorf("%s: curve %s, want P-256", name, curve.Params().Name)
		}
	}
	if b.Intermediate.MaxPathLen != 0 || !b.Intermediate.MaxPathLenZero {
		t.Errorf("intermediate MaxPathLen=%d MaxPathLenZero=%v, want 0 and true", b.Intermediate.MaxPathLen, b.Intermediate.MaxPathLenZero)
	}
	if !b.Intermediate.NotAfter.Before(b.Root.NotAfter) && !b.Intermediate.NotAfter.Equal(b.Root.NotAfter) {
		t.Errorf("intermediate expires %s after root %s", b.Intermediate.NotAfter, b.Root.NotAfter)
	}
	// MaxPathLen 0 has teeth: a CA signed by the intermediate cannot anchor
	// a leaf that verifies against the root.
	subKey, err := newKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	subCA, err := sign(&x509.Certificate{
		NotBefore: b.Intermediate.NotBefore, NotAfter: b.Intermediate.NotAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, b.Intermediate, subKey.Public(), b.IntermediateKey.Signer())
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := newKey(ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := sign(&x509.Certificate{
		NotBefore: subCA.NotBefore, NotAfter: subCA.NotAfter,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/a/sa/a"}},
	}, subCA, leafKey.Public(), subKey.Signer())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyWorkloadChain([]*x509.Certificate{leaf, subCA, b.Intermediate}, b.Root); err == nil || !strings.Contains(err.Error(), "too many intermediates") {
		t.Errorf("leaf under a sub-CA of the path-length-0 intermediate: got %v, want a path length error", err)
	}
}

func TestWorkloadCertVerifiesOnlyAgainstItsRoot(t *testing.T) {
	b := generate(t)
	other := generate(t)
	const id = "spiffe://cluster.local/ns/mesh/sa/service-a"
	_, _, chain, err := b.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	got, err := VerifyWorkloadChain(chain, b.Root)
	if err != nil {
		t.Fatalf("VerifyWorkloadChain against own root: %v", err)
	}
	if got != id {
		t.Errorf("SPIFFE ID = %q, want %q", got, id)
	}
	if _, err := VerifyWorkloadChain(chain, other.Root); err == nil {
		t.Errorf("chain verified against an unrelated root")
	}
	// Several roots (a trust bundle during root rotation) are accepted.
	if got, err := VerifyWorkloadChain(chain, other.Root, b.Root); err != nil || got != id {
		t.Errorf("VerifyWorkloadChain with a two-root bundle = %q, %v", got, err)
	}
	// Without the intermediate the leaf cannot reach the root.
	if _, err := VerifyWorkloadChain(chain[:1], b.Root); err == nil {
		t.Errorf("leaf without intermediate verified")
	}
	// A leaf from the other CA, presented with our intermediate, must fail.
	_, _, foreign, err := other.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyWorkloadChain([]*x509.Certificate{foreign[0], b.Intermediate}, b.Root); err == nil {
		t.Errorf("foreign leaf verified via our intermediate")
	}

	// PEM form, as read from a pod or a TLS handshake dump.
	got, err = VerifyWorkloadChainPEM(EncodeCertificatesPEM(chain...), EncodeCertificatesPEM(b.Root))
	if err != nil || got != id {
		t.Errorf("VerifyWorkloadChainPEM = %q, %v; want %q", got, err, id)
	}
}

func TestVerifyWorkloadChainRejectsNonSPIFFE(t *testing.T) {
	b := generate(t)
	if _, err := VerifyWorkloadChain([]*x509.Certificate{b.Intermediate}, b.Root); err == nil {
		t.Errorf("a CA certificate was accepted as a workload leaf")
	}
	if _, _, _, err := b.IssueWorkloadCert("https://cluster.local/ns/a/sa/a", time.Hour); err == nil {
		t.Errorf("IssueWorkloadCert accepted a non-spiffe URI")
	}
	if _, err := VerifyWorkloadChain(nil, b.Root); err == nil {
		t.Errorf("empty chain accepted")
	}
	_, _, chain, err := b.IssueWorkloadCert("spiffe://cluster.local/ns/a/sa/a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyWorkloadChain(chain); err == nil {
		t.Errorf("verification without roots succeeded")
	}
}

// The workload certificate and the intermediate work in a real TLS
// handshake: the client verifies the server with VerifyWorkloadChain as
// Istio peers do (SPIFFE, no hostname), proving the shapes are usable.
func TestWorkloadCertInTLSHandshake(t *testing.T) {
	b := generate(t)
	const id = "spiffe://cluster.local/ns/mesh/sa/service-b"
	_, key, chain, err := b.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	serverCert := tls.Certificate{PrivateKey: key.Signer()}
	for _, c := range chain {
		serverCert.Certificate = append(serverCert.Certificate, c.Raw)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{serverCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		done <- conn.(*tls.Conn).Handshake()
	}()

	var seen string
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		InsecureSkipVerify: true, // verification is done by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			var err error
			seen, err = VerifyWorkloadChain(cs.PeerCertificates, b.Root)
			return err
		},
	})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	conn.Close()
	if err := <-done; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if seen != id {
		t.Errorf("peer SPIFFE ID = %q, want %q", seen, id)
	}
}

func TestRSAOption(t *testing.T) {
	b := generate(t, WithKeyAlgorithm(RSA2048))
	for name, c := range map[string]*x509.Certificate{"root": b.Root, "intermediate": b.Intermediate} {
		pub, ok := c.PublicKey.(*rsa.PublicKey)
		if !ok {
			t.Fatalf("%s public key is %T, want RSA", name, c.PublicKey)
		}
		if pub.N.BitLen() != 2048 {
			t.Errorf("%s RSA key has %d bits, want 2048", name, pub.N.BitLen())
		}
	}
	if b.IntermediateKey.Algorithm() != RSA2048 {
		t.Errorf("intermediate key algorithm = %s", b.IntermediateKey.Algorithm())
	}
	_, _, chain, err := b.IssueWorkloadCert("spiffe://cluster.local/ns/a/sa/a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyWorkloadChain(chain, b.Root); err != nil {
		t.Errorf("workload cert under RSA CA: %v", err)
	}
	keyPEM, err := b.IntermediateKey.PEM()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(EncodeCertificatesPEM(b.Intermediate), keyPEM); err != nil {
		t.Errorf("RSA intermediate key PEM does not match its certificate: %v", err)
	}
}

func TestInvalidOptions(t *testing.T) {
	if _, err := Generate(WithKeyAlgorithm("DSA-1024")); err == nil {
		t.Errorf("unsupported algorithm accepted")
	}
	if _, err := Generate(WithValidity(time.Hour, 2*time.Hour)); err == nil {
		t.Errorf("intermediate outliving root accepted")
	}
	if _, err := Generate(WithValidity(0, 0)); err == nil {
		t.Errorf("zero validity accepted")
	}
}

func TestClockAndValidity(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	b := generate(t, WithClock(func() time.Time { return now }), WithValidity(48*time.Hour, 24*time.Hour), WithOrganization("acme"))
	if !b.Root.NotBefore.Before(now) || b.Root.NotBefore.Before(now.Add(-time.Hour)) {
		t.Errorf("root NotBefore %s not shortly before %s", b.Root.NotBefore, now)
	}
	if got := b.Intermediate.NotAfter.Sub(b.Intermediate.NotBefore); got != 24*time.Hour {
		t.Errorf("intermediate validity %s, want 24h", got)
	}
	if got := b.Root.Subject.Organization; len(got) != 1 || got[0] != "acme" {
		t.Errorf("root organization %v", got)
	}
}

func keyMaterial(t *testing.T, b *Bundle) [][]byte {
	t.Helper()
	var out [][]byte
	for _, k := range []*PrivateKey{b.RootKey, b.IntermediateKey} {
		p, err := k.PEM()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
		// The base64 body of the PEM, one line at a time, is what a leak
		// would most likely contain.
		for _, line := range bytes.Split(p, []byte("\n")) {
			if len(line) > 20 && !bytes.HasPrefix(line, []byte("-----")) {
				out = append(out, line)
			}
		}
	}
	return out
}

func TestRedaction(t *testing.T) {
	b := generate(t)
	secrets := keyMaterial(t, b)
	ecKey := b.IntermediateKey.Signer().(*ecdsa.PrivateKey)
	d := ecKey.D.String()
	dHex := fmt.Sprintf("%x", ecKey.D)

	type holder struct {
		Key   *PrivateKey
		Inner struct{ K *PrivateKey }
	}
	h := holder{Key: b.IntermediateKey}
	h.Inner.K = b.RootKey

	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	logger.Info("bundle", "bundle", b, "key", b.IntermediateKey)
	jsonOut, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}

	outputs := map[string]string{
		"bundle":      fmt.Sprintf("%v %+v %#v %s %x %q", b, b, b, b, b, b),
		"bundleValue": fmt.Sprintf("%v %+v %#v", *b, *b, *b),
		"key":         fmt.Sprintf("%v %+v %#v %s %x %X %q %d", b.RootKey, b.RootKey, b.RootKey, b.RootKey, b.RootKey, b.RootKey, b.RootKey, b.RootKey),
		"keyValue":    fmt.Sprintf("%v %+v %#v", *b.RootKey, *b.RootKey, *b.RootKey),
		"holder":      fmt.Sprintf("%v %+v %#v", h, h, h),
		"slog":        logs.String(),
		"json":        string(jsonOut),
	}
	for name, out := range outputs {
		for _, s := range secrets {
			if strings.Contains(out, string(s)) {
				t.Errorf("%s output contains PEM key material %.30q...", name, s)
			}
		}
		if strings.Contains(out, "PRIVATE KEY") {
			t.Errorf("%s output contains a PEM private key header: %s", name, out)
		}
		if strings.Contains(out, d) || strings.Contains(out, dHex) {
			t.Errorf("%s output contains the private scalar", name)
		}
	}
	if !strings.Contains(outputs["bundle"], "REDACTED") || !strings.Contains(outputs["holder"], "REDACTED") {
		t.Errorf("redacted marker missing: %s / %s", outputs["bundle"], outputs["holder"])
	}
}

func TestSecretContents(t *testing.T) {
	b := generate(t)
	labels := ownership.Labels("run-1")
	s, err := b.Secret("", labels)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "cacerts" || s.Namespace != "istio-system" {
		t.Errorf("secret %s/%s, want istio-system/cacerts", s.Namespace, s.Name)
	}
	if len(s.Data) != 4 {
		t.Errorf("secret has %d keys, want 4: %v", len(s.Data), keys(s.Data))
	}
	mustCerts := func(key string) []*x509.Certificate {
		certs, err := ParseCertificatesPEM(s.Data[key])
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		return certs
	}
	if c := mustCerts(CACertKey); len(c) != 1 || !c[0].Equal(b.Intermediate) {
		t.Errorf("ca-cert.pem is not exactly the intermediate")
	}
	if c := mustCerts(RootCertKey); len(c) != 1 || !c[0].Equal(b.Root) {
		t.Errorf("root-cert.pem is not exactly the root")
	}
	if c := mustCerts(CertChainKey); len(c) != 2 || !c[0].Equal(b.Intermediate) || !c[1].Equal(b.Root) {
		t.Errorf("cert-chain.pem is not intermediate followed by root")
	}
	if _, err := tls.X509KeyPair(s.Data[CACertKey], s.Data[CAKeyKey]); err != nil {
		t.Errorf("ca-key.pem does not match ca-cert.pem: %v", err)
	}
	if s.Labels[ownership.ManagedByLabel] != ownership.ManagedByValue || s.Labels[ownership.RunIDLabel] != "run-1" {
		t.Errorf("secret labels %v lack ownership labels", s.Labels)
	}
	labels["mutated"] = "x"
	if _, ok := s.Labels["mutated"]; ok {
		t.Errorf("secret shares the caller's label map")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func newFakeClient(t *testing.T, objs ...client.Object) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
}

func TestInstallCreatesNamespaceAndSecret(t *testing.T) {
	ctx := context.Background()
	c := newFakeClient(t)
	b := generate(t)
	if err := b.Install(ctx, c, "", ownership.Labels("run-1")); err != nil {
		t.Fatalf("Install: %v", err)
	}
	ns := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKey{Name: "istio-system"}, ns); err != nil {
		t.Fatalf("namespace not created: %v", err)
	}
	if ns.Labels[ownership.RunIDLabel] != "run-1" {
		t.Errorf("created namespace labels %v", ns.Labels)
	}
	got := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "cacerts"}, got); err != nil {
		t.Fatalf("secret not created: %v", err)
	}
	if chain, _ := ParseCertificatesPEM(got.Data[CACertKey]); len(chain) != 1 || !chain[0].Equal(b.Intermediate) {
		t.Errorf("stored ca-cert.pem is not the intermediate")
	}

	// A second run replaces the CA in the existing Secret and leaves the
	// existing namespace alone.
	b2 := generate(t)
	if err := b2.Install(ctx, c, "istio-system", ownership.Labels("run-2")); err != nil {
		t.Fatalf("second Install: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "cacerts"}, got); err != nil {
		t.Fatal(err)
	}
	if roots, _ := ParseCertificatesPEM(got.Data[RootCertKey]); len(roots) != 1 || !roots[0].Equal(b2.Root) {
		t.Errorf("second Install did not replace root-cert.pem")
	}
	if got.Labels[ownership.RunIDLabel] != "run-2" {
		t.Errorf("secret labels after replace: %v", got.Labels)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "istio-system"}, ns); err != nil {
		t.Fatal(err)
	}
	if ns.Labels[ownership.RunIDLabel] != "run-1" {
		t.Errorf("Install relabelled an existing namespace: %v", ns.Labels)
	}
}

func TestInstallIntoExistingNamespace(t *testing.T) {
	ctx := context.Background()
	existing := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh-ca", Labels: map[string]string{"owner": "someone-else"}}}
	c := newFakeClient(t, existing)
	if err := generate(t).Install(ctx, c, "mesh-ca", nil); err != nil {
		t.Fatalf("Install: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "mesh-ca", Name: SecretName}, &corev1.Secret{}); err != nil {
		t.Errorf("secret not created in existing namespace: %v", err)
	}
}
