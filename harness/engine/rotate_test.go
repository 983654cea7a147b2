package engine

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/ca"
)

const wantID = "spiffe://cluster.local/ns/meshproof/sa/service-b"

func issue(t *testing.T, b *ca.Bundle, id string) ServedCert {
	t.Helper()
	leaf, _, chain, err := b.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, err := servedCert(append([]*x509.Certificate{leaf}, chain...))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRotationCheck(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	before := issue(t, mesh, wantID)
	// Certificates issued within the same second share notBefore; the check
	// compares the recorded times, so the earlier one is moved back.
	before.NotBefore = before.NotBefore.Add(-30 * time.Second)
	after := issue(t, mesh, wantID)
	good := RotationCheck{WantID: wantID, Before: before, After: after, AfterSidecar: after, Roots: []*x509.Certificate{mesh.Root}, TrafficTotal: 20}
	if err := good.Verify(); err != nil {
		t.Fatalf("a good rotation fails: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*RotationCheck)
		want   string
	}{
		"unchanged": {func(r *RotationCheck) { r.After = r.Before; r.AfterSidecar = r.Before }, "did not change"},
		"other identity": {func(r *RotationCheck) {
			r.After = issue(t, mesh, "spiffe://cluster.local/ns/x/sa/y")
			r.AfterSidecar = r.After
		}, "identity changed or is wrong"},
		"older":            {func(r *RotationCheck) { r.Before, r.After, r.AfterSidecar = r.After, r.Before, r.Before }, "not newer"},
		"sources disagree": {func(r *RotationCheck) { r.AfterSidecar = r.Before }, "config dump holds serial"},
		"wrong root":       {func(r *RotationCheck) { r.Roots = []*x509.Certificate{other.Root} }, "does not verify against the mesh root"},
		"no root":          {func(r *RotationCheck) { r.Roots = nil }, "no mesh root"},
		"traffic failed":   {func(r *RotationCheck) { r.TrafficFailed = 2 }, "2 of 20 mTLS requests failed"},
		"no traffic":       {func(r *RotationCheck) { r.TrafficTotal = 0 }, "no mTLS request ran"},
	} {
		r := good
		tc.mutate(&r)
		if err := r.Verify(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error saying %q", name, err, tc.want)
		}
	}
}
