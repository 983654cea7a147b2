//go:build linux

package envoy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
)

var update = flag.Bool("update", false, "capture testdata/*.json from the real istiod of a local cluster")

// TestCaptureFromIstiod regenerates the evaluator's (and the conformance
// unit test's) test data, xdstest/testdata, from what the
// real istiod serves: a local cluster with istiod and Istio's charts, the
// capture fixtures, and for every capture cell its policies applied as a
// run applies them and the sidecars' configurations once istiod has
// pushed. It captures with -update only (minutes of a local cluster);
// without it, it checks that the captures the unit tests read are those
// of today's cells: one per cell, taken under the cell's policies, with a
// snapshot of every in-mesh capture workload.
func TestCaptureFromIstiod(t *testing.T) {
	if !*update {
		capturesMatchCells(t)
		return
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	m := xdstest.Start(ctx, t, "lc-envoy-capture", captureNamespace, captureWorkloads()...)
	clients := map[string]*xds.Sidecar{}
	for _, w := range captureWorkloads() {
		if w.InMesh {
			clients[w.Name] = m.Sidecar(ctx, t, w.Name)
		}
	}
	var all []*xds.Sidecar
	for _, c := range clients {
		all = append(all, c)
	}
	for i, cell := range captureCells {
		applied := m.Apply(ctx, t, cell.policies, i)
		last, err := xdstest.Settle(ctx, applied, all...)
		if err != nil {
			t.Fatal(err)
		}
		for w, sc := range clients {
			if n := sc.NACKs(); len(n) > 0 {
				t.Errorf("%s: %s NACKed: %v", cell.name, w, n)
			}
		}
		c, err := m.Capture(cell.name, cell.policies, captureWorkloads(), clients)
		if err != nil {
			t.Fatal(err)
		}
		file := xdstest.CaptureFile(cell.name)
		if err := c.Write(file); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: settled %s after the apply; wrote %s", cell.name, last.Sub(applied).Round(time.Millisecond), file)
	}
}

// capturesMatchCells fails when a cell has no capture, or its capture was
// taken under other policies or other fixtures than the cell's now (run
// with -update to capture again).
func capturesMatchCells(t *testing.T) {
	t.Helper()
	for _, cell := range captureCells {
		file := xdstest.CaptureFile(cell.name)
		c, snaps, err := xdstest.ReadCapture(file)
		if err != nil {
			t.Errorf("cell %q: %v (run with -update to capture it)", cell.name, err)
			continue
		}
		want, _ := json.Marshal(cell.policies)
		got, _ := json.Marshal(c.Policies)
		if c.Cell != cell.name || !bytes.Equal(got, want) {
			t.Errorf("cell %q: %s holds cell %q under policies %s, want %s (run with -update)", cell.name, file, c.Cell, got, want)
		}
		for _, w := range captureWorkloads() {
			if _, ok := snaps[w.Name]; ok != w.InMesh {
				t.Errorf("cell %q: %s has a sidecar snapshot of %s: %t, want %t (run with -update)", cell.name, file, w.Name, ok, w.InMesh)
			}
		}
	}
}
