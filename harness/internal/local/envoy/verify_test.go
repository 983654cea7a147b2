package envoy

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/memo"
)

// A chain verified once is answered from the memo only while every
// certificate of it is still valid, and only for the same roots.
func TestVerifiedChainsAreRememberedWhileValid(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, _, chain, err := mesh.IssueWorkloadCert("spiffe://cluster.local/ns/a/sa/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m := memo.New[[32]byte, validity](8)
	now := time.Now()
	roots := []*x509.Certificate{mesh.Root}
	for range 2 {
		if err := checkChain(m, chain, roots, now); err != nil {
			t.Fatalf("a chain of the mesh's root: %v", err)
		}
	}
	if n := m.Len(); n != 1 {
		t.Errorf("the memo holds %d chains, want the one verified", n)
	}
	if err := checkChain(m, chain, roots, chain[0].NotAfter.Add(time.Second)); err == nil {
		t.Error("the remembered chain verified after its leaf expired")
	}
	if err := checkChain(m, chain, roots, chain[0].NotBefore.Add(-time.Second)); err == nil {
		t.Error("the remembered chain verified before its leaf's NotBefore")
	}
	if err := checkChain(m, chain, []*x509.Certificate{other.Root}, now); err == nil {
		t.Error("the chain verified against another mesh's root")
	}
}
