// Package oracle predicts, from a scenario's policies alone, what Istio does
// with traffic between the fixtures: for every client, server and port,
// whether a request arrives over Istio mutual TLS, in plaintext, or fails
// (and with which reason the probe reports, where that is determinate).
//
// The prediction is a model of Istio's sidecar mode, written from Istio's
// documentation and source; every rule in rules.go names the place it comes
// from. It needs no cluster: `meshproof predict` prints it, and a test holds
// it against every expect table of the repository's scenarios.yaml.
package oracle

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Prediction is the expected outcome of requests from one workload to a
// port of another.
type Prediction struct {
	From string
	To   string
	Port int
	// Result is mtls, plaintext or fail.
	Result scenario.Result
	// Reason is the fail reason the probe reports (reset, upstream-503), set
	// only for a fail whose reason is determinate.
	Reason string
	// Why names the rules that decided, client side then server side.
	Why string
}

// Agrees reports whether an expect row says the same as the prediction: the
// same result and, when the row names a reason, the same reason.
func (p Prediction) Agrees(x scenario.Expectation) bool {
	if p.Result != x.Result {
		return false
	}
	return x.Reason == "" || x.Reason == p.Reason
}

// String is "from -> to:port result (reason)".
func (p Prediction) String() string {
	s := fmt.Sprintf("%s -> %s:%d %s", p.From, p.To, p.Port, p.Result)
	if p.Reason != "" {
		s += " (" + p.Reason + ")"
	}
	return s
}

// Find returns the prediction for one pair and port.
func Find(ps []Prediction, from, to string, port int) (Prediction, bool) {
	for _, p := range ps {
		if p.From == from && p.To == to && p.Port == port {
			return p, true
		}
	}
	return Prediction{}, false
}

// PolicyAt returns the authentication state of the mesh while step
// stepIndex (0-based) of the scenario runs: the policies of the last step
// at or before it that puts a policy set in force (an mtls step, or a
// transition, whose target stays in force after it; the table of step kinds
// says which kinds do), since each such step states the complete set. Nil
// means no meshproof policy at all, i.e. Istio's defaults (PERMISSIVE
// everywhere, auto mTLS).
func PolicyAt(sc *scenario.Scenario, stepIndex int) (*scenario.MTLSStep, error) {
	if stepIndex < 0 || stepIndex >= len(sc.Steps) {
		return nil, fmt.Errorf("scenario %q has steps 1 to %d; there is no step %d", sc.Name, len(sc.Steps), stepIndex+1)
	}
	for i := stepIndex; i >= 0; i-- {
		if m := sc.Steps[i].Policies(); m != nil {
			return m, nil
		}
	}
	return nil, nil
}

// Table is the expect table of step index (0-based), which must be an
// expect step: the rows written in the file, or for `expect: auto` the
// prediction for every pair and port. The engine probes it, plan prints it
// and predict holds the written rows against the prediction.
func Table(s *scenario.Suite, sc *scenario.Scenario, index int) ([]scenario.Expectation, error) {
	st := &sc.Steps[index]
	if st.Expect == nil {
		return nil, fmt.Errorf("step %q is a %s step, not an expect step", st.Name, st.Kind())
	}
	if !st.Expect.Auto {
		return st.Expect.Table, nil
	}
	preds, err := Predict(s, sc, index)
	if err != nil {
		return nil, fmt.Errorf("%s: expect: auto: %w", st.Source.At("expect"), err)
	}
	table := make([]scenario.Expectation, len(preds))
	for i, p := range preds {
		table[i] = scenario.Expectation{From: p.From, To: p.To, Port: p.Port, Result: p.Result, Reason: p.Reason, Source: st.Source}
	}
	return table, nil
}

// Predict returns the expected outcome of every (client, server, port) with
// client != server, in the order of the suite's workloads and the server's
// ports, while step stepIndex (0-based) of the scenario runs (after it,
// for a step that moves workloads between data planes).
//
// It fails when the policies leave the outcome to timing (several
// DestinationRules for one workload, several PeerAuthentications for one
// scope): Istio then applies only the oldest, which a scenario file cannot
// pin down.
func Predict(s *scenario.Suite, sc *scenario.Scenario, stepIndex int) ([]Prediction, error) {
	m, err := PolicyAt(sc, stepIndex)
	if err != nil {
		return nil, err
	}
	// The workloads on the data planes the scenario's moveDataPlane steps
	// left them on by then.
	return PredictPolicies(s.AtStep(sc, stepIndex), m)
}

// PredictPolicies is Predict for a given authentication state; nil means no
// meshproof policy.
func PredictPolicies(s *scenario.Suite, m *scenario.MTLSStep) ([]Prediction, error) {
	// Without proxyless workloads every pair follows the sidecar rules.
	return PredictProxyless(s, m, proxylessWorkloads(s))
}
