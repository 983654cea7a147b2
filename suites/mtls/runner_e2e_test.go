//go:build e2e

package mtls

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"regexp"
	"testing"

	. "github.com/onsi/ginkgo/v2"

	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

const e2eBuild = true

// ginkgoRunner adapts the run library (harness/run) to the spec tree:
// `make e2e` and `meshproof run` do the same work through the same code.
//
// One process runs the scenarios, as meshproof run does: the run library's
// scheduler starts them after the setup (up to --parallel at once, isolated
// ones in namespaces of their own, the others alone), and each spec waits
// for its step's outcome and reports it. Ginkgo's own parallel processes
// could not share one cluster's schedule (an exclusive scenario must wait
// for the others on the same cluster), so every scenario stays Serial for
// Ginkgo: with -p the other processes only wait, and spec names and JUnit
// are the same as meshproof run's.
type ginkgoRunner struct {
	*run.Run
	progress *run.Progress
}

func newRunner(t *testing.T, s *scenario.Suite) (spec.Runner, string) {
	suiteConfig, _ := GinkgoConfiguration()
	filter, err := run.WithLabelFilter(suiteConfig.LabelFilter)
	if err != nil {
		t.Fatal(err)
	}
	focus, err := specFilter(suiteConfig.FocusStrings, suiteConfig.SkipStrings)
	if err != nil {
		t.Fatal(err)
	}
	r, err := run.New(s, run.WithReports(*reportsDir), run.WithSuiteName(run.SuiteName(*scenariosFile)), run.WithKeep(*keep), filter,
		run.WithGracePeriod(suiteConfig.GracePeriod), run.WithLogger(slog.New(run.NewProgressHandler(GinkgoWriter))),
		run.WithParallel(*parallel), run.WithScenarioFilter(focus))
	if err != nil {
		t.Fatalf("opening the report folder: %v", err)
	}
	return &ginkgoRunner{Run: r}, r.JUnitPath()
}

// specFilter selects the scenarios of which Ginkgo's --focus and --skip
// leave some step to run, so that the scheduler runs exactly those.
func specFilter(focus, skip []string) (func(*scenario.Scenario) bool, error) {
	compile := func(exprs []string) ([]*regexp.Regexp, error) {
		var out []*regexp.Regexp
		for _, e := range exprs {
			re, err := regexp.Compile(e)
			if err != nil {
				return nil, err
			}
			out = append(out, re)
		}
		return out, nil
	}
	f, err := compile(focus)
	if err != nil {
		return nil, err
	}
	s, err := compile(skip)
	if err != nil {
		return nil, err
	}
	matches := func(res []*regexp.Regexp, text string) bool {
		for _, re := range res {
			if re.MatchString(text) {
				return true
			}
		}
		return false
	}
	return func(sc *scenario.Scenario) bool {
		for _, st := range sc.Steps {
			text := sc.Name + " " + st.Name
			if (len(f) == 0 || matches(f, text)) && !matches(s, text) {
				return true
			}
		}
		return false
	}, nil
}

// Setup sets up the clusters and starts the scenarios' schedule.
func (g *ginkgoRunner) Setup(ctx context.Context) ([]byte, error) {
	if err := g.Run.Setup(ctx); err != nil {
		return nil, err
	}
	// The schedule outlives the setup node: its context is the run's,
	// ended by an interrupt or a spec's timeout (Progress).
	g.progress = g.Start(context.WithoutCancel(ctx), context.WithoutCancel(ctx))
	return json.Marshal(g.Kubeconfigs())
}

func (g *ginkgoRunner) Connect(context.Context, []byte) error { return nil }

var errNoSchedule = errors.New("the setup did not start the scenarios")

// BeginScenario waits until the schedule began the scenario.
func (g *ginkgoRunner) BeginScenario(ctx context.Context, sc *scenario.Scenario) error {
	if g.progress == nil {
		return errNoSchedule
	}
	return g.progress.Began(ctx, sc)
}

// RunStep waits for the step's outcome in the schedule.
func (g *ginkgoRunner) RunStep(ctx context.Context, sc *scenario.Scenario, index int) error {
	if g.progress == nil {
		return errNoSchedule
	}
	return g.progress.Step(ctx, sc, index)
}

// EndScenario waits for the scenario's clean-up.
func (g *ginkgoRunner) EndScenario(ctx context.Context, sc *scenario.Scenario) error {
	if g.progress == nil {
		return errNoSchedule
	}
	return g.progress.Ended(ctx, sc)
}

// errSuiteEnded stops what Ginkgo will not report any more (after an
// interrupt, --fail-fast, or scenarios it skipped).
var errSuiteEnded = errors.New("the Ginkgo suite ended")

// Teardown stops what is left of the schedule (after a normal run,
// nothing: every scenario's AfterAll waited for its end), cleans up and
// closes the run folder (report.html); the suite writes junit.xml from the
// verdicts.
func (g *ginkgoRunner) Teardown(ctx context.Context) error {
	if g.progress != nil {
		g.progress.Stop(errSuiteEnded)
		g.progress.Wait()
	}
	err := g.Run.Teardown(ctx)
	if cerr := g.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
