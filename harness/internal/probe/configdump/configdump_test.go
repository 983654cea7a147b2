package configdump

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

const workloadID = "spiffe://cluster.local/ns/meshproof/sa/service-b"

// testPKI is a mesh root, an intermediate under it and a workload leaf, in
// the shape istiod issues them.
type testPKI struct {
	root    *x509.Certificate
	rootKey *ecdsa.PrivateKey
	// chain is what the workload presents: leaf, then intermediate.
	chain []*x509.Certificate
}

func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	now := time.Now()
	serial := int64(0)
	issue := func(tmpl, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ca := func(org string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{Organization: []string{org}}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	}
	rootKey, interKey, leafKey := newKey(), newKey(), newKey()
	root := issue(ca("cluster.local"), nil, nil, rootKey)
	inter := issue(ca("cluster.local intermediate"), root, rootKey, interKey)
	id, err := url.Parse(workloadID)
	if err != nil {
		t.Fatal(err)
	}
	leaf := issue(&x509.Certificate{URIs: []*url.URL{id}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, inter, interKey, leafKey)
	return testPKI{root: root, rootKey: rootKey, chain: []*x509.Certificate{leaf, inter}}
}

func (p testPKI) rootKeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(p.rootKey)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), err
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func names(secrets map[string]Secret) string {
	var out []string
	for n := range secrets {
		out = append(out, n)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func render(t testing.TB, secrets ...Secret) []byte {
	t.Helper()
	b, err := Render(secrets...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// istioDump is what `pilot-agent request GET
// config_dump?mask=dynamic_active_secrets` prints in a sidecar: the
// workload chain under "default", the mesh root under "ROOTCA", with what a
// real dump has around them that the parser must step over: a config of
// another type, a warming secret, per-secret client status.
func istioDump(t testing.TB, pki testPKI) []byte {
	t.Helper()
	dump := render(t,
		Secret{Name: WorkloadSecretName, VersionInfo: "2026-01-02T03:04:05Z/7", LastUpdated: "2026-01-02T03:04:05.678Z", CertificateChain: pki.chain},
		Secret{Name: RootSecretName, LastUpdated: "2026-01-02T03:04:05.123Z", TrustedCA: []*x509.Certificate{pki.root}})
	var doc map[string]any
	if err := json.Unmarshal(dump, &doc); err != nil {
		t.Fatal(err)
	}
	secrets := doc["configs"].([]any)[0].(map[string]any)
	for _, s := range secrets["dynamic_active_secrets"].([]any) {
		s.(map[string]any)["client_status"] = "ACKED"
	}
	secrets["dynamic_warming_secrets"] = []any{map[string]any{
		"name": "file-root:/etc/certs/root-cert.pem", "version_info": "uninitialized",
		"secret": map[string]any{"@type": TLSSecretType, "name": "file-root:/etc/certs/root-cert.pem"},
	}}
	bootstrap := map[string]any{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
		"bootstrap": map[string]any{"node": map[string]any{"id": "sidecar~10.244.0.13~service-b-0.meshproof~meshproof.svc.cluster.local"}}}
	doc["configs"] = []any{bootstrap, secrets}
	out, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRenderMatchesEnvoy(t *testing.T) {
	pki := newTestPKI(t)
	var doc struct {
		Configs []struct {
			Type    string `json:"@type"`
			Secrets []struct {
				Name   string `json:"name"`
				Secret struct {
					Type string `json:"@type"`
					TLS  struct {
						Chain struct {
							InlineBytes string `json:"inline_bytes"`
						} `json:"certificate_chain"`
						Key struct {
							InlineBytes string `json:"inline_bytes"`
						} `json:"private_key"`
					} `json:"tls_certificate"`
				} `json:"secret"`
			} `json:"dynamic_active_secrets"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(render(t, Secret{Name: "default", CertificateChain: pki.chain}), &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.Configs[0].Secrets[0]
	if doc.Configs[0].Type != SecretsConfigDumpType || s.Name != "default" || s.Secret.Type != TLSSecretType {
		t.Fatalf("rendered %+v", doc)
	}
	// Envoy shows the key as the base64 of "[redacted]".
	if s.Secret.TLS.Key.InlineBytes != "W3JlZGFjdGVkXQ==" {
		t.Errorf("private key %q, want Envoy's redaction", s.Secret.TLS.Key.InlineBytes)
	}
	pemBytes, err := base64.StdEncoding.DecodeString(s.Secret.TLS.Chain.InlineBytes)
	if err != nil || !strings.HasPrefix(string(pemBytes), "-----BEGIN CERTIFICATE-----") {
		t.Errorf("chain inline_bytes %q is not base64 PEM (%v)", s.Secret.TLS.Chain.InlineBytes, err)
	}
}

func TestParseConfigDump(t *testing.T) {
	pki := newTestPKI(t)
	secrets, err := Parse(istioDump(t, pki))
	if err != nil {
		t.Fatal(err)
	}
	if got := names(secrets); got != "ROOTCA, default" {
		t.Fatalf("secrets %s, want ROOTCA and default only (warming secrets are not active)", got)
	}
	def, root := secrets["default"], secrets["ROOTCA"]
	if !sameCerts(def.CertificateChain, pki.chain) || len(def.TrustedCA) != 0 {
		t.Errorf("default: chain of %d, %d roots; want service-b's chain only", len(def.CertificateChain), len(def.TrustedCA))
	}
	if !sameCerts(root.TrustedCA, []*x509.Certificate{pki.root}) || len(root.CertificateChain) != 0 {
		t.Errorf("ROOTCA: %d roots, chain of %d; want the mesh root only", len(root.TrustedCA), len(root.CertificateChain))
	}
	if def.VersionInfo != "2026-01-02T03:04:05Z/7" || def.LastUpdated != "2026-01-02T03:04:05.678Z" {
		t.Errorf("default version %q updated %q", def.VersionInfo, def.LastUpdated)
	}
}

// rewriteDump decodes a rendered dump, lets edit change it, and encodes it.
func rewriteDump(t testing.TB, dump []byte, edit func(secrets []any)) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(dump, &doc); err != nil {
		t.Fatal(err)
	}
	scd := doc["configs"].([]any)[1].(map[string]any)
	edit(scd["dynamic_active_secrets"].([]any))
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func field(v any, path ...string) map[string]any {
	m := v.(map[string]any)
	for _, p := range path {
		m = m[p].(map[string]any)
	}
	return m
}

// camelCase renames every snake_case key, as a protobuf JSON printer
// without "preserve proto field names" would.
func camelCase(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, val := range v {
			parts := strings.Split(k, "_")
			for i := 1; i < len(parts); i++ {
				parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
			}
			out[strings.Join(parts, "")] = camelCase(val)
		}
		return out
	case []any:
		for i := range v {
			v[i] = camelCase(v[i])
		}
	}
	return v
}

func TestParseConfigDumpAcceptsProtobufJSONVariants(t *testing.T) {
	pki := newTestPKI(t)
	dump := istioDump(t, pki)
	chainDS := func(s []any) map[string]any {
		return field(s[0], "secret", "tls_certificate", "certificate_chain")
	}
	pemOf := func(ds map[string]any) []byte {
		b, err := base64.StdEncoding.DecodeString(ds["inline_bytes"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var camel map[string]any
	if err := json.Unmarshal(dump, &camel); err != nil {
		t.Fatal(err)
	}
	camelDump, err := json.Marshal(camelCase(camel))
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string][]byte{
		"lowerCamelCase names": camelDump,
		"inline_string": rewriteDump(t, dump, func(s []any) {
			ds := chainDS(s)
			ds["inline_string"] = string(pemOf(ds))
			delete(ds, "inline_bytes")
		}),
		"url-safe unpadded base64": rewriteDump(t, dump, func(s []any) {
			ds := chainDS(s)
			ds["inline_bytes"] = base64.RawURLEncoding.EncodeToString(pemOf(ds))
		}),
		"unknown fields": rewriteDump(t, dump, func(s []any) {
			field(s[0])["error_state"] = map[string]any{"details": "old rejection"}
			field(s[0], "secret")["future_field"] = []any{1, 2}
			chainDS(s)["watched_directory"] = map[string]any{"path": "/x"}
		}),
		"name only on the secret": rewriteDump(t, dump, func(s []any) {
			delete(field(s[0]), "name")
		}),
	}
	for name, d := range variants {
		t.Run(name, func(t *testing.T) {
			secrets, err := Parse(d)
			if err != nil {
				t.Fatal(err)
			}
			chain, roots := secrets[WorkloadSecretName].CertificateChain, secrets[RootSecretName].TrustedCA
			if !sameCerts(chain, pki.chain) || !sameCerts(roots, []*x509.Certificate{pki.root}) {
				t.Fatalf("chain of %d, %d roots", len(chain), len(roots))
			}
		})
	}
}

func TestParseConfigDumpRejects(t *testing.T) {
	pki := newTestPKI(t)
	dump := istioDump(t, pki)
	key, err := pki.rootKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		dump []byte
		want string
	}{
		"certificates in a file": {rewriteDump(t, dump, func(s []any) {
			field(s[0], "secret", "tls_certificate")["certificate_chain"] = map[string]any{"filename": "/etc/certs/cert-chain.pem"}
		}), `default`},
		"bad base64": {rewriteDump(t, dump, func(s []any) {
			field(s[1], "secret", "validation_context", "trusted_ca")["inline_bytes"] = "not base64!"
		}), "not base64"},
		"key in the chain": {rewriteDump(t, dump, func(s []any) {
			field(s[0], "secret", "tls_certificate", "certificate_chain")["inline_bytes"] = base64.StdEncoding.EncodeToString(key)
		}), "want CERTIFICATE"},
		"no pem": {rewriteDump(t, dump, func(s []any) {
			field(s[1], "secret", "validation_context", "trusted_ca")["inline_bytes"] = base64.StdEncoding.EncodeToString([]byte("hello"))
		}), "no PEM CERTIFICATE"},
		"empty data source": {rewriteDump(t, dump, func(s []any) {
			field(s[1], "secret", "validation_context")["trusted_ca"] = map[string]any{}
		}), "empty data source"},
		"nameless": {rewriteDump(t, dump, func(s []any) {
			delete(field(s[0]), "name")
			delete(field(s[0], "secret"), "name")
		}), "no name"},
		"duplicate": {rewriteDump(t, dump, func(s []any) {
			field(s[1])["name"] = "default"
		}), `"default" appears twice`},
		"other secret type": {rewriteDump(t, dump, func(s []any) {
			field(s[0], "secret")["@type"] = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.GenericSecret"
		}), "GenericSecret"},
		"configs not a list": {[]byte(`{"configs":{}}`), "as JSON"},
		"empty":              {nil, "as JSON"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			secrets, err := Parse(tc.dump)
			if err == nil {
				t.Fatalf("want an error, got secrets %s", names(secrets))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if name == "key in the chain" && strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Fatalf("error quotes key material: %v", err)
			}
		})
	}
	if _, err := Parse(rewriteDump(t, dump, func(s []any) {
		field(s[0], "secret", "tls_certificate")["certificate_chain"] = map[string]any{"filename": "/etc/certs/cert-chain.pem"}
	})); err == nil || !strings.Contains(err.Error(), `in file "/etc/certs/cert-chain.pem"`) {
		t.Errorf("file data source: %v, want the file named", err)
	}
}

// FuzzParseConfigDump checks that Parse never panics, that what
// it accepts is well formed (every secret named under its own name, every
// certificate parsed), and that rendering the accepted secrets as Envoy
// would and parsing them again gives back the same certificates. Seeds
// live in testdata/fuzz/FuzzParseConfigDump.
func FuzzParseConfigDump(f *testing.F) {
	pki := newTestPKI(f)
	f.Add(istioDump(f, pki))
	f.Add(render(f, Secret{Name: "default", CertificateChain: pki.chain, TrustedCA: pki.chain[1:]}))
	f.Fuzz(func(t *testing.T, data []byte) {
		secrets, err := Parse(data)
		if err != nil {
			return
		}
		var again []Secret
		for name, s := range secrets {
			if name == "" || name != s.Name {
				t.Fatalf("secret %q filed under %q", s.Name, name)
			}
			for _, c := range append(append([]*x509.Certificate(nil), s.CertificateChain...), s.TrustedCA...) {
				if c == nil || len(c.Raw) == 0 {
					t.Fatalf("secret %q holds an unparsed certificate", name)
				}
			}
			again = append(again, Secret{Name: name, CertificateChain: s.CertificateChain, TrustedCA: s.TrustedCA})
		}
		sort.Slice(again, func(i, j int) bool { return again[i].Name < again[j].Name })
		rendered, err := Render(again...)
		if err != nil {
			t.Fatal(err)
		}
		reparsed, err := Parse(rendered)
		if err != nil {
			t.Fatalf("re-parsing the rendered secrets: %v", err)
		}
		if len(reparsed) != len(secrets) {
			t.Fatalf("round trip kept %d of %d secrets", len(reparsed), len(secrets))
		}
		for name, s := range secrets {
			r := reparsed[name]
			if !sameCerts(r.CertificateChain, s.CertificateChain) || !sameCerts(r.TrustedCA, s.TrustedCA) {
				t.Fatalf("round trip changed the certificates of %q", name)
			}
		}
	})
}
