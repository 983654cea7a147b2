package diagnose

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
)

// realKeys returns real private keys in the PEM forms Go and OpenSSL
// write: PKCS#8, PKCS#1 RSA and SEC 1 EC.
func realKeys(t *testing.T) map[string]string {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // a test key, only scrubbed
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	return map[string]string{
		"pkcs8": enc("PRIVATE KEY", pkcs8),
		"rsa":   enc("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)),
		"ec":    enc("EC PRIVATE KEY", sec1),
	}
}

func TestScrubPrivateKeys(t *testing.T) {
	cert := "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
	for name, key := range realKeys(t) {
		t.Run(name, func(t *testing.T) {
			// As plain text, as a JSON string (line breaks escaped) and
			// base64-encoded, as DataSource.inline_bytes appears in a dump.
			jsonKey, err := json.Marshal(key)
			if err != nil {
				t.Fatal(err)
			}
			inputs := map[string]string{
				"plain":  "before\n" + key + cert + "after",
				"json":   `{"private_key":{"inline_string":` + string(jsonKey) + `},"chain":"` + strings.ReplaceAll(cert, "\n", `\n`) + `"}`,
				"base64": `{"private_key":{"inline_bytes":"` + base64.StdEncoding.EncodeToString([]byte(key)) + `"},"chain":"` + strings.ReplaceAll(cert, "\n", `\n`) + `"}`,
				// The end marker lost (a cut output): the rest of the string goes.
				"unterminated": `{"private_key":{"inline_string":"` + strings.ReplaceAll(key[:len(key)/2], "\n", `\n`) + `"},"next":"kept"}`,
			}
			for form, in := range inputs {
				out, n := ScrubPrivateKeys([]byte(in))
				got := string(out)
				if n != 1 {
					t.Errorf("%s: %d keys scrubbed, want 1", form, n)
				}
				if strings.Contains(got, "PRIVATE KEY") || strings.Contains(got, "LS0tLS1CRUdJTi") {
					t.Errorf("%s: key survived:\n%s", form, got)
				}
				if !strings.Contains(got, Redacted) {
					t.Errorf("%s: no redaction marker:\n%s", form, got)
				}
				if form == "unterminated" && !strings.Contains(got, `"next":"kept"`) {
					t.Errorf("%s: scrubbed past the end of the string:\n%s", form, got)
				}
				if form != "unterminated" && !strings.Contains(got, "MIIBszCCAVmgAwIBAgIUY2VydGlmaWNhdGU=") {
					t.Errorf("%s: the certificate was scrubbed too:\n%s", form, got)
				}
				if (form == "json" || form == "base64" || form == "unterminated") && !json.Valid(out) {
					t.Errorf("%s: scrubbing broke the JSON:\n%s", form, got)
				}
			}
		})
	}
}

func TestScrubLeavesDumpsWithoutKeysAlone(t *testing.T) {
	// Envoy's own redaction, certificates and long base64 that is not a key.
	in := `{"private_key":{"inline_string":"[redacted]"},"chain":{"inline_bytes":"` +
		base64.StdEncoding.EncodeToString([]byte(strings.Repeat("-----BEGIN CERTIFICATE-----\nabc\n", 4))) + `"}}`
	out, n := ScrubPrivateKeys([]byte(in))
	if n != 0 || string(out) != in {
		t.Errorf("scrubbed %d keys from a dump without any:\n%s", n, out)
	}
}

// The usual dump: Envoy redacted the key itself. About 1 MiB, the size of
// a sidecar's full config dump in a small mesh.
func BenchmarkScrubConfigDump(b *testing.B) {
	redacted := strings.Replace(configDump(), fakeKeyPEM, "[redacted]", 1)
	benchmarkScrub(b, redacted)
}

// A dump holding a key in every secret, the slow path.
func BenchmarkScrubConfigDumpWithKeys(b *testing.B) {
	benchmarkScrub(b, configDump())
}

func benchmarkScrub(b *testing.B, secret string) {
	dump := []byte(strings.Repeat(secret, 1<<20/len(secret)))
	b.SetBytes(int64(len(dump)))
	for b.Loop() {
		ScrubPrivateKeys(dump)
	}
}

// The signatures must find a key encoded at any offset of a base64 run.
func TestBase64SignaturesFindEveryAlignment(t *testing.T) {
	for k := range 3 {
		enc := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", k) + "-----BEGIN EC PRIVATE KEY-----\nabc"))
		if !containsAny([]byte(enc), encodedMarkers) {
			t.Errorf("offset %d: %s holds no signature of %v", k, enc, encodedMarkers)
		}
	}
	if containsAny([]byte(base64.StdEncoding.EncodeToString([]byte("-----BEGIN CERTIFICATE-----"))), encodedMarkers) {
		t.Error("a certificate's encoding matched a private key signature")
	}
}
