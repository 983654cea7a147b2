//go:build linux

package conformance_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/oracle"
)

// The oracle's sidecar rules against Istio itself: a local cluster with the
// real istiod and Istio's charts, two sidecar workloads and one without,
// and for every cell of the matrix its policies applied as a run applies
// them; once istiod has pushed, every pair is decided by evaluating what
// Envoy does with the configuration istiod served the sidecars (package
// envoy), and held to the oracle's prediction. A disagreement fails naming
// its cell.
func TestSidecarConformance(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	m := xdstest.Start(ctx, t, "lc-sidecar-conformance", sidecarNamespace, sidecarWorkloads()...)
	clients := map[string]*xds.Sidecar{}
	var all []*xds.Sidecar
	for _, w := range sidecarWorkloads() {
		if w.InMesh {
			clients[w.Name] = m.Sidecar(ctx, t, w.Name)
			all = append(all, clients[w.Name])
		}
	}
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("local cluster, istiod and the fixtures' sidecars ready in %s", time.Since(start).Round(100*time.Millisecond))

	cells := sidecarCells()
	start = time.Now()
	var slowest time.Duration
	slowestCell, pairs, disagreements := "", 0, 0
	for i, cell := range cells {
		applied := m.Apply(ctx, t, cell.policies, i)
		last, err := xdstest.Settle(ctx, applied, all...)
		if err != nil {
			t.Fatalf("cell %q: %v", cell.name, err)
		}
		if took := last.Sub(applied); took > slowest {
			slowest, slowestCell = took, cell.name
		}
		for w, c := range clients {
			if n := c.NACKs(); len(n) > 0 {
				t.Errorf("cell %q: %s NACKed istiod's configuration: %v", cell.name, w, n)
			}
		}
		nw, err := m.Network(sidecarWorkloads(), clients, bundle)
		if err != nil {
			t.Fatal(err)
		}
		observed, ds, err := judgeCell(cell, oracle.PredictPolicies, nw)
		if err != nil {
			t.Error(err)
			continue
		}
		pairs += len(observed)
		disagreements += len(ds)
		for _, d := range ds {
			t.Error(d)
		}
	}
	took := time.Since(start)
	t.Logf("sidecar conformance matrix: %d cells (%d policy combinations x %d client/server/port pairs), %d disagreements, in %s (%.0f ms per policy combination); slowest push settled %s after the apply (%s)",
		pairs, len(cells), len(sidecarPairs()), disagreements, took.Round(100*time.Millisecond), float64(took.Milliseconds())/float64(len(cells)), slowest.Round(time.Millisecond), slowestCell)
}
