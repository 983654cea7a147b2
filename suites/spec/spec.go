// Package spec declares the Ginkgo spec tree of a scenario suite: one
// Ordered container per scenario, carrying its labels, and one It per step,
// named exactly as `meshproof plan` names them. What the specs do is up to a
// Runner, so the same tree runs the real e2e suite and the small suites that
// test this package's reporting.
package spec

import (
	"context"
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Runner does the work behind the specs. It records its own verdicts and
// collects its own diagnostics (harness/run does both); the specs only
// report what it returns.
type Runner interface {
	// Setup runs once, on the first Ginkgo process, before any scenario:
	// clusters, Istio, the echo image, the fixtures. Its error is the
	// setup's failure, as is. What it returns is
	// handed to Connect on every process.
	Setup(ctx context.Context) ([]byte, error)
	// Connect prepares a process to run steps, from what Setup returned.
	Connect(ctx context.Context, setup []byte) error
	// BeginScenario runs before a scenario's first step. Its error is the
	// first step's failure, as is: say which scenario it was preparing.
	BeginScenario(ctx context.Context, sc *scenario.Scenario) error
	// RunStep runs one step.
	RunStep(ctx context.Context, sc *scenario.Scenario, index int) error
	// EndScenario runs after a scenario, also when it failed.
	EndScenario(ctx context.Context, sc *scenario.Scenario) error
	// Teardown runs once after everything, also after a failed setup or an
	// interrupt.
	Teardown(ctx context.Context) error
}

// margin is added to a step's own timeout for Ginkgo's node timeout: the
// step reports its own timeout with a table; Ginkgo's is the backstop.
const margin = 30 * time.Second

// Option configures Declare.
type Option func(*options)

type options struct{ junit string }

// WithJUnit writes the run's JUnit report to path (when path is not empty),
// in the strict form CI tools' XSD validators accept.
func WithJUnit(path string) Option { return func(o *options) { o.junit = path } }

// Declare registers the suite's nodes. Call it at the top level of a suite
// file (var _ = spec.Declare(...)) or before RunSpecs.
func Declare(s *scenario.Suite, r Runner, opts ...Option) bool {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.junit != "" {
		ReportAfterSuite("JUnit report", func(report Report) {
			// The same JUnit as `meshproof run` writes of the same run:
			// from the verdicts (the runner's, where it records them, and
			// what Ginkgo saw besides), every planned step a test case.
			scs := scenarios(s)
			verdicts := Verdicts(report, scs, r)
			if err := junit.Write(junit.FromVerdicts(report.SuiteDescription, scs, verdicts, report.StartTime, report.RunTime), o.junit); err != nil {
				Fail(err.Error())
			}
		})
	}
	SynchronizedBeforeSuite(func(ctx SpecContext) []byte {
		start := time.Now()
		data, err := r.Setup(ctx)
		if err != nil {
			progress("setup failed after %s", time.Since(start).Round(time.Second))
			Fail(err.Error())
		}
		progress("setup done in %s", time.Since(start).Round(time.Second))
		return data
	}, func(ctx SpecContext, data []byte) {
		if err := r.Connect(ctx, data); err != nil {
			Fail(fmt.Sprintf("connecting to the clusters: %v", err))
		}
	}, NodeTimeout(s.Defaults.SetupTimeout.Duration+margin))

	SynchronizedAfterSuite(func() {}, func(ctx SpecContext) {
		if err := r.Teardown(ctx); err != nil {
			Fail(fmt.Sprintf("teardown: %v", err))
		}
	}, NodeTimeout(s.Defaults.SetupTimeout.Duration+margin))

	for i := range s.Scenarios {
		declareScenario(&s.Scenarios[i], r)
	}
	return true
}

func declareScenario(sc *scenario.Scenario, r Runner) {
	// Serial: Ginkgo's parallel processes never run scenarios at once. A
	// runner that does (the run library's schedule: isolated scenarios
	// beside each other, the others alone) runs them in one process and
	// its specs report each step as it ends.
	Describe(sc.Name, Ordered, Serial, Label(sc.Labels...), func() {
		BeforeAll(func(ctx SpecContext) {
			progress("scenario %s on %s", sc.Name, sc.Cluster)
			if err := r.BeginScenario(ctx, sc); err != nil {
				Fail(err.Error())
			}
		})
		AfterAll(func(ctx SpecContext) {
			if err := r.EndScenario(ctx, sc); err != nil {
				Fail(fmt.Sprintf("cleaning up after scenario %s: %v", sc.Name, err))
			}
		})
		for j := range sc.Steps {
			st := &sc.Steps[j]
			It(st.Name, func(ctx SpecContext) {
				start := time.Now()
				err := r.RunStep(ctx, sc, j)
				took := time.Since(start).Round(time.Millisecond)
				if err != nil {
					progress("  FAIL %s (%s)", st.Name, took)
					Fail(err.Error() + junit.SourceNote(st.Source.Position.String()))
				}
				progress("  ok   %s (%s)", st.Name, took)
			}, NodeTimeout(st.Timeout.Duration+margin))
		}
	})
}

// scenarios are the suite's scenarios, as pointers.
func scenarios(s *scenario.Suite) []*scenario.Scenario {
	out := make([]*scenario.Scenario, len(s.Scenarios))
	for i := range s.Scenarios {
		out[i] = &s.Scenarios[i]
	}
	return out
}

// progress writes a line that `ginkgo -v` shows as the run goes.
func progress(format string, args ...any) {
	GinkgoWriter.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
