package conformance_test

import (
	"slices"
	"testing"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/scenario"
)

// captureCells are the cells whose configurations the real istiod served
// were captured (xdstest/testdata, written by the envoy package's
// TestCaptureFromIstiod -update).
var captureCells = []string{
	"default",
	"namespace STRICT",
	"namespace STRICT, DR DISABLE",
	"namespace STRICT, DR SIMPLE",
	"namespace DISABLE",
	"namespace PERMISSIVE, workload DISABLE, port 19000 STRICT",
	"mesh PERMISSIVE, namespace DISABLE, workload STRICT",
	"mesh DR ISTIO_MUTUAL",
}

// The matrix's comparison can fail: on configurations the real istiod
// served, the oracle agrees with the evaluator in every captured cell, and
// an oracle with a deliberately wrong rule (a sidecar lets a client
// without one in whatever its PeerAuthentication says) fails exactly the
// cells where a server refuses plaintext, naming them.
func TestWrongOracleRuleFailsNamedCells(t *testing.T) {
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	wrong := func(s *scenario.Suite, m *scenario.MTLSStep) ([]oracle.Prediction, error) {
		preds, err := oracle.PredictPolicies(s, m)
		for i, p := range preds {
			if p.From == "legacy" && p.To == "service-b" && p.Result == scenario.ResultFail {
				preds[i].Result, preds[i].Reason, preds[i].Why = scenario.ResultPlaintext, "", "the wrong rule: a sidecar admits plaintext from outside the mesh"
			}
		}
		return preds, err
	}
	var failed []string
	for _, name := range captureCells {
		c, snaps, err := xdstest.ReadCapture(xdstest.CaptureFile(name))
		if err != nil {
			t.Fatalf("%v (regenerate with go test ./harness/internal/local/envoy -run TestCaptureFromIstiod -update)", err)
		}
		nw, err := xdstest.NewNetwork(c, snaps, bundle)
		if err != nil {
			t.Fatal(err)
		}
		suite := c.Suite()
		cell := sidecarCell{name: c.Cell, policies: c.Policies}
		predict := func(_ *scenario.Suite, m *scenario.MTLSStep) ([]oracle.Prediction, error) {
			return oracle.PredictPolicies(suite, m)
		}
		observed, ds, err := judgeCell(cell, predict, nw)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			t.Errorf("the right oracle disagrees: %s", d)
		}
		_, ds, err = judgeCell(cell, func(_ *scenario.Suite, m *scenario.MTLSStep) ([]oracle.Prediction, error) { return wrong(suite, m) }, nw)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.Cell != c.Cell {
				t.Errorf("a disagreement names cell %q, want %q", d.Cell, c.Cell)
			}
			t.Logf("the wrong rule fails: %s", d)
		}
		if len(ds) > 0 {
			failed = append(failed, c.Cell)
		}
		t.Logf("%s: %d pairs", c.Cell, len(observed))
	}
	want := []string{"namespace STRICT", "namespace STRICT, DR DISABLE", "namespace STRICT, DR SIMPLE",
		"namespace PERMISSIVE, workload DISABLE, port 19000 STRICT", "mesh PERMISSIVE, namespace DISABLE, workload STRICT"}
	if !slices.Equal(failed, want) {
		t.Errorf("the wrong rule failed cells %q, want %q", failed, want)
	}
}
