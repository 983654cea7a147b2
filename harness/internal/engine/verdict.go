package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Verdict is what step index of sc came to, from the error RunStep
// returned: passed, or failed with the error's text and the evidence its
// type carries: an expect step's table (*ExpectationError), the deadlines
// of a transition or rotation (*DeadlineError). A rotate step that saw no
// new serial fails with the serial it kept serving and its missed deadline.
// A skipped step is the run's decision, not RunStep's; the run sets the
// status itself.
func Verdict(sc *scenario.Scenario, index int, started time.Time, took time.Duration, err error) results.Verdict {
	st := &sc.Steps[index]
	v := results.Verdict{
		Scenario: sc.Name, Step: st.Name, Kind: st.Kind(), Status: results.Passed,
		Started: started, Duration: took, Source: st.Source.Position.String(),
	}
	if err == nil {
		return v
	}
	v.Status, v.Reason = results.Failed, err.Error()
	var xe *ExpectationError
	if errors.As(err, &xe) {
		v.Table = xe.Table()
		if xe.WireLeak != "" {
			v.Failure = results.FailureWirePlaintext
		}
	}
	var le *WireLeakError
	if errors.As(err, &le) {
		v.Failure = results.FailureWirePlaintext
	}
	var de *DeadlineError
	if errors.As(err, &de) {
		v.Deadlines = de.Deadlines
	}
	return v
}

// DeadlineError is a step that failed with the deadlines it was judged
// by, met or not, so that its verdict shows them next to the reason.
type DeadlineError struct {
	Deadlines []results.Deadline
	Err       error
}

func (e *DeadlineError) Error() string { return e.Err.Error() }
func (e *DeadlineError) Unwrap() error { return e.Err }

// deadline records a bound the step was judged by as an EventDeadline
// event (the timeline draws it, see results.Event) and returns it for the
// verdict.
func (e *Engine) deadline(sc *scenario.Scenario, st *scenario.Step, d results.Deadline) results.Deadline {
	met := "met"
	if !d.Met {
		met = "missed"
	}
	ev := results.Event{Time: e.now(), Scenario: sc.Name, Step: st.Name, Kind: results.EventDeadline,
		Detail: fmt.Sprintf("%s (%s): %s", d.Name, met, d.Detail), Deadline: &d}
	e.rec.RecordEvent(ev)
	e.log.Info(ev.Detail, "step", st.Name, "event", ev.Kind)
	return d
}

// Table is the error's expected-against-observed table as data.
func (e *ExpectationError) Table() []results.Row {
	out := make([]results.Row, len(e.rows))
	for i, r := range e.rows {
		last := "nothing"
		if len(r.last) > 0 {
			last = summarize(r.last)
		}
		out[i] = results.Row{From: r.expectation.From, To: r.expectation.To, Port: r.expectation.Port,
			Expected: describeExpectation(r.expectation), LastObserved: last, OverTheWait: formatCounts(r.counts), Why: r.lastWhy}
		if len(r.wire) > 0 {
			out[i].Wire = formatCounts(r.wire)
		}
	}
	return out
}
