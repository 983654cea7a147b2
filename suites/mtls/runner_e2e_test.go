//go:build e2e

package mtls

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"

	. "github.com/onsi/ginkgo/v2"

	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

const e2eBuild = true

// ginkgoRunner adapts the run library (harness/run) to the spec tree:
// `make e2e` and `meshproof run` do the same work through the same code.
type ginkgoRunner struct{ *run.Run }

func newRunner(t *testing.T, s *scenario.Suite) (spec.Runner, string) {
	suiteConfig, _ := GinkgoConfiguration()
	filter, err := run.WithLabelFilter(suiteConfig.LabelFilter)
	if err != nil {
		t.Fatal(err)
	}
	r, err := run.New(s, run.WithReports(*reportsDir), run.WithSuiteName(run.SuiteName(*scenariosFile)), run.WithKeep(*keep), filter,
		run.WithGracePeriod(suiteConfig.GracePeriod), run.WithLogger(slog.New(run.NewProgressHandler(GinkgoWriter))))
	if err != nil {
		t.Fatalf("opening the report folder: %v", err)
	}
	return ginkgoRunner{r}, r.JUnitPath()
}

// Setup sets up the clusters; every scenario is Serial, so Ginkgo runs
// them all on this process and the other processes (with -p) only wait.
func (g ginkgoRunner) Setup(ctx context.Context) ([]byte, error) {
	if err := g.Run.Setup(ctx); err != nil {
		return nil, err
	}
	return json.Marshal(g.Kubeconfigs())
}

func (g ginkgoRunner) Connect(context.Context, []byte) error { return nil }

// Teardown cleans up and closes the run folder (report.html); Ginkgo
// writes the JUnit report itself.
func (g ginkgoRunner) Teardown(ctx context.Context) error {
	err := g.Run.Teardown(ctx)
	if cerr := g.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
