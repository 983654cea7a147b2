package oracle

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Observed is what a real data plane did for one pair in one cell of a
// conformance matrix (a policy combination applied to a real istiod).
type Observed struct {
	From, To string
	Port     int
	Result   scenario.Result
	Reason   string
	// Detail is the probe's error text, for the failure message.
	Detail string
}

// Disagreement is a pair for which Istio did not do what the oracle
// predicted, in a named cell.
type Disagreement struct {
	Cell      string
	Observed  Observed
	Predicted Prediction
	// Missing says the oracle had no prediction for the pair.
	Missing bool
}

func (d Disagreement) String() string {
	o := d.Observed
	got := string(o.Result)
	if o.Reason != "" {
		got += " (" + o.Reason + ")"
	}
	if o.Detail != "" {
		got += ": " + o.Detail
	}
	if d.Missing {
		return fmt.Sprintf("cell %q: %s -> %s:%d: Istio gave %s, the oracle predicts nothing for the pair", d.Cell, o.From, o.To, o.Port, got)
	}
	want := string(d.Predicted.Result)
	if d.Predicted.Reason != "" {
		want += " (" + d.Predicted.Reason + ")"
	}
	return fmt.Sprintf("cell %q: %s -> %s:%d: Istio gave %s, the oracle predicts %s because %s", d.Cell, o.From, o.To, o.Port, got, want, d.Predicted.Why)
}

// Conform holds what a real data plane did in one cell against the
// oracle's predictions for it: the result must match, and the reason too
// where the prediction names one.
func Conform(cell string, predicted []Prediction, observed []Observed) []Disagreement {
	var out []Disagreement
	for _, o := range observed {
		p, ok := Find(predicted, o.From, o.To, o.Port)
		switch {
		case !ok:
			out = append(out, Disagreement{Cell: cell, Observed: o, Missing: true})
		case p.Result != o.Result || (p.Reason != "" && p.Reason != o.Reason):
			out = append(out, Disagreement{Cell: cell, Observed: o, Predicted: p})
		}
	}
	return out
}
