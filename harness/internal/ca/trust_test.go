package ca

import (
	"strings"
	"testing"
)

func TestSecretTrustingHoldsEveryRootInOrderAndSignsWithItsOwnIntermediate(t *testing.T) {
	old, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	next, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	s, err := next.SecretTrusting("istio-system", nil, old.Root, next.Root)
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ParseCertificatesPEM(s.Data[RootCertKey])
	if err != nil {
		t.Fatal(err)
	}
	if len(roots) != 2 || !roots[0].Equal(old.Root) || !roots[1].Equal(next.Root) {
		t.Errorf("root-cert.pem holds %d roots, want the old then the new one", len(roots))
	}
	chain, err := ParseCertificatesPEM(s.Data[CertChainKey])
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[0].Equal(next.Intermediate) || !chain[1].Equal(next.Root) {
		t.Error("cert-chain.pem is not the new intermediate then its root")
	}
	if ca, _ := ParseCertificatesPEM(s.Data[CACertKey]); len(ca) != 1 || !ca[0].Equal(next.Intermediate) {
		t.Error("ca-cert.pem is not the new intermediate")
	}

	_, err = old.SecretTrusting("istio-system", nil, next.Root)
	if err == nil || !strings.Contains(err.Error(), "lacks the bundle's own root") {
		t.Errorf("a trust bundle without the signing root: err = %v", err)
	}
}
