package engine

import (
	"sync"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// How long after an mtls step its policies were in force, pair by pair
// (results.Enforcement): the first expect step after the apply measures it
// from the first observation of each row at the outcome it confirmed. A
// rehearsal's observation says when the configuration push arrived after
// which its decision was what it is (Observation.DecidedAt): the figure is
// then the time from the apply to that push. On a real data plane it is
// the time to the first probe round at the new outcome, an upper bound at
// the resolution of the probing interval.

// applied is the last mtls step of a scenario whose enforcement no expect
// step has measured yet.
type applied struct {
	step string
	at   time.Time
}

// enforcement holds what the engine measured, by scenario and step.
type enforcement struct {
	mu       sync.Mutex
	pending  map[string]applied
	measured map[[2]string][]results.Enforcement
}

// noteApplied records that step of sc applied its policies at t.
func (e *Engine) noteApplied(sc *scenario.Scenario, step string, t time.Time) {
	e.enforcement.mu.Lock()
	defer e.enforcement.mu.Unlock()
	if e.enforcement.pending == nil {
		e.enforcement.pending = map[string]applied{}
	}
	e.enforcement.pending[sc.Name] = applied{step: step, at: t}
}

// enforced measures the rows of an expect step that held against the
// scenario's pending apply, if any.
func (e *Engine) enforced(sc *scenario.Scenario, st *scenario.Step, rows []*rowHistory) {
	e.enforcement.mu.Lock()
	defer e.enforcement.mu.Unlock()
	ap, ok := e.enforcement.pending[sc.Name]
	if !ok {
		return
	}
	delete(e.enforcement.pending, sc.Name)
	var out []results.Enforcement
	for _, r := range rows {
		if r.first == nil {
			continue
		}
		o := r.first
		en := results.Enforcement{Policies: ap.step, From: o.From, To: o.To, Port: o.Port, By: results.EnforcedByProbe}
		changed := o.Time
		if o.DecidedAt != nil {
			changed, en.By = *o.DecidedAt, results.EnforcedByPush
		}
		if en.After = changed.Sub(ap.at); en.After <= 0 {
			en.After, en.Unchanged = 0, o.DecidedAt != nil
		}
		out = append(out, en)
	}
	if e.enforcement.measured == nil {
		e.enforcement.measured = map[[2]string][]results.Enforcement{}
	}
	e.enforcement.measured[[2]string{sc.Name, st.Name}] = out
}

// EnforcedAfter is what step of scenario measured of the apply before it
// (none when it measured nothing); the run puts it into the step's
// verdict.
func (e *Engine) EnforcedAfter(scenarioName, step string) []results.Enforcement {
	e.enforcement.mu.Lock()
	defer e.enforcement.mu.Unlock()
	return e.enforcement.measured[[2]string{scenarioName, step}]
}
