package engine

import (
	"errors"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Verdict is what step index of sc came to, from the error RunStep
// returned: passed, or failed with the error's text and the evidence its
// type carries (an expect step's table).
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
	}
	return v
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
	}
	return out
}
