package ca

import (
	"strings"
	"testing"
	"time"
)

func TestLoadSecretRoundTrip(t *testing.T) {
	for _, alg := range []KeyAlgorithm{ECDSAP256, RSA2048} {
		b, err := Generate(WithKeyAlgorithm(alg))
		if err != nil {
			t.Fatal(err)
		}
		s, err := b.Secret("", nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := LoadSecret(s)
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if !got.Root.Equal(b.Root) || !got.Intermediate.Equal(b.Intermediate) || got.RootKey != nil {
			t.Errorf("%s: loaded bundle differs: %v", alg, got)
		}
		// The loaded intermediate key still signs workload certificates that
		// chain to the root.
		leaf, _, chain, err := got.IssueWorkloadCert("spiffe://cluster.local/ns/a/sa/b", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := VerifyWorkloadChain(chain, b.Root); err != nil || id != "spiffe://cluster.local/ns/a/sa/b" || leaf == nil {
			t.Errorf("%s: issued chain: %q %v", alg, id, err)
		}
	}
}

func TestLoadSecretErrorsNeverShowTheKey(t *testing.T) {
	b, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Secret("", nil)
	if err != nil {
		t.Fatal(err)
	}
	key := string(s.Data[CAKeyKey])
	s.Data[CAKeyKey] = []byte(key[:len(key)/2] + "\n-----END PRIVATE KEY-----\n")
	_, err = LoadSecret(s)
	if err == nil || strings.Contains(err.Error(), key[40:80]) {
		t.Fatalf("a broken key: %v", err)
	}
	delete(s.Data, RootCertKey)
	if _, err := LoadSecret(s); err == nil || !strings.Contains(err.Error(), RootCertKey) {
		t.Fatalf("a missing root: %v", err)
	}
}
