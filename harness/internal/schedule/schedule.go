package schedule

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshproof/meshproof/harness/scenario"
)

// DefaultParallel is how many scenarios `meshproof run` and the Ginkgo
// suite run at once unless told otherwise: on a CI runner of two cores most
// of a scenario's time is waiting (probe rounds, observe windows,
// certificate renewals), so four keep the cores busy without making any
// step late.
const DefaultParallel = 4

// Schedule is the order a run starts scenarios in, and which of them run
// together.
type Schedule struct {
	// Parallel is how many scenarios run at once, at most.
	Parallel int
	// Together are the isolated scenarios, longest first: up to Parallel
	// of them run at once, each in namespaces of its own.
	Together []Placement
	// Alone are the scenarios that run alone, in file order, after the
	// others, on the fixtures' own namespaces; each says why.
	Alone []Placement
	// Serial, when set, says why every scenario runs alone (Together is
	// then empty): --parallel 1, or a cluster whose fixture namespaces
	// were there before the run.
	Serial string
}

// Option adjusts Build.
type Option func(*buildOptions)

type buildOptions struct {
	serial map[string]string // cluster name -> why
}

// SerialOn runs every scenario of cluster alone, on the fixtures' own
// namespaces, for the reason why (e.g. a fixture namespace that was there
// before the run is the user's, and copies of it would not be it).
func SerialOn(cluster, why string) Option {
	return func(o *buildOptions) {
		if o.serial == nil {
			o.serial = map[string]string{}
		}
		o.serial[cluster] = why
	}
}

// SerialReason is why every scenario runs alone with --parallel 1.
const SerialReason = "--parallel 1: one scenario at a time, in the fixtures' own namespaces, in file order"

// Build schedules scenarios (selected from s, in file order) to run up to
// parallel at once.
func Build(s *scenario.Suite, scenarios []*scenario.Scenario, parallel int, opts ...Option) Schedule {
	var o buildOptions
	for _, opt := range opts {
		opt(&o)
	}
	sch := Schedule{Parallel: max(parallel, 1)}
	if sch.Parallel == 1 {
		sch.Serial = SerialReason
	}
	for _, sc := range scenarios {
		p := Place(s, sc)
		switch why, serial := o.serial[sc.Cluster]; {
		case sch.Serial != "":
			p.Isolated, p.Alone = false, sch.Serial
		case serial:
			p.Isolated, p.Alone = false, why
		}
		if p.Isolated {
			sch.Together = append(sch.Together, p)
		} else {
			sch.Alone = append(sch.Alone, p)
		}
	}
	// Longest first: the long ones start at once, the short ones fill the
	// gaps. A stable sort keeps file order among equals.
	slices.SortStableFunc(sch.Together, func(a, b Placement) int { return cmp.Compare(b.Estimate, a.Estimate) })
	return sch
}

// Order is every scenario in the order the run starts them.
func (sch Schedule) Order() []Placement { return append(slices.Clone(sch.Together), sch.Alone...) }

// Lines describe the schedule for people: which scenarios run together,
// and why the others wait.
func (sch Schedule) Lines() []string {
	var out []string
	if sch.Serial != "" {
		out = append(out, "every scenario runs alone: "+sch.Serial)
		for _, p := range sch.Alone {
			out = append(out, "  "+p.Scenario.Name)
		}
		return out
	}
	if len(sch.Together) > 0 {
		out = append(out, fmt.Sprintf("up to %d at once, each in namespaces of its own, longest first:", sch.Parallel))
		for _, p := range sch.Together {
			out = append(out, fmt.Sprintf("  %s (about %s)", p.Scenario.Name, round(p.Estimate)))
		}
	}
	if len(sch.Alone) > 0 {
		what := "then alone, one after the other, on the fixtures' own namespaces:"
		if len(sch.Together) == 0 {
			what = "every scenario runs alone, one after the other, on the fixtures' own namespaces:"
		}
		out = append(out, what)
		for _, p := range sch.Alone {
			out = append(out, "  "+p.Scenario.Name+": "+p.Alone)
		}
	}
	return out
}

func round(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}

// String is Lines, one per line.
func (sch Schedule) String() string { return strings.Join(sch.Lines(), "\n") }
