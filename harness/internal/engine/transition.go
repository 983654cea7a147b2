package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// transition applies new policies while traffic flows, then keeps probing
// for the observation window and judges the timeline.
func (e *Engine) transition(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	tr := st.Transition
	predictions, err := oracle.PredictPolicies(e.suite, &tr.To)
	if err != nil {
		return fmt.Errorf("%s: predicting the outcome of the new policies: %w", st.Source.At("transition"), err)
	}
	// Before the change the traffic is expected to follow the policies in
	// force until then, after it the new ones (AnalyzeTransition judges
	// the same split).
	traffic := e.StartTraffic(ctx, sc, st, tr.Traffic, Expecting(e.predictBefore(sc, index)))
	defer traffic.Stop()
	// A baseline before the change: every pair observed at least once.
	if err := wait.For(func(context.Context) (bool, error) {
		if err := traffic.Err(); err != nil {
			return false, err
		}
		return len(traffic.Observations()) >= len(tr.Traffic.Pairs), nil
	}, wait.WithContext(ctx), wait.WithInterval(tr.Traffic.Every.Duration/2), wait.WithTimeout(timeLeft(ctx))); err != nil {
		return fmt.Errorf("no baseline traffic before the change: %w", err)
	}
	changed := e.now()
	traffic.expectFrom(changed, predictions)
	e.eventAt(changed, sc, st, results.EventPolicyChange, "applying %s", tr.To.Summary())
	if err := e.applyPolicies(ctx, sc, index, &tr.To); err != nil {
		return err
	}
	select {
	case <-time.After(tr.Observe.Duration):
	case <-ctx.Done():
		return fmt.Errorf("the step's timeout ended the %s observation window: %w", tr.Observe, ctx.Err())
	}
	report := AnalyzeTransition(traffic.Stop(), changed, predictions, tr.NoPlaintextAfter.Duration)
	if report.Converged {
		e.event(sc, st, results.EventConverged, "every pair matched the new policies %s after the change", report.Convergence.Round(time.Millisecond))
	}
	var deadlines []results.Deadline
	for _, d := range report.Deadlines(tr.NoPlaintextAfter.Duration, e.now()) {
		deadlines = append(deadlines, e.deadline(sc, st, d))
	}
	if err := errors.Join(report.Verify(tr.Traffic.MaxFailures), traffic.Err()); err != nil {
		return &DeadlineError{Deadlines: deadlines, Err: err}
	}
	return nil
}

// predictBefore is the oracle's prediction for the policies in force before
// step index; nil (observations without an expectation) when it cannot
// tell, which leaves the transition's own judgement unaffected.
func (e *Engine) predictBefore(sc *scenario.Scenario, index int) []oracle.Prediction {
	var before *scenario.MTLSStep
	if index > 0 {
		m, err := oracle.PolicyAt(sc, index-1)
		if err != nil {
			return nil
		}
		before = m
	}
	p, err := oracle.PredictPolicies(e.suite, before)
	if err != nil {
		e.log.Info("no expectation for the traffic before the change", "step", sc.Steps[index].Name, "error", err)
		return nil
	}
	return p
}

// TransitionReport is what a transition's timeline shows.
type TransitionReport struct {
	Changed time.Time
	// Failures are the failed requests of the whole step that the new
	// policies do not predict (a pair predicted to fail is not an outage).
	Failures []results.Observation
	// PairConvergence is, per pair, how long after the change its last
	// observation that did not match the prediction was seen.
	PairConvergence map[string]time.Duration
	// Convergence is the longest of them; Converged is false when some pair
	// still did not match at the end of the window.
	Convergence time.Duration
	Converged   bool
	NotSettled  []string
	// LatePlaintext are requests answered in plaintext, later than allowed,
	// by a server the new policies close to plaintext.
	LatePlaintext []results.Observation
}

// AnalyzeTransition judges a transition's observations against the new
// policies' predictions.
func AnalyzeTransition(obs []results.Observation, changed time.Time, predictions []oracle.Prediction, noPlaintextAfter time.Duration) TransitionReport {
	r := TransitionReport{Changed: changed, PairConvergence: map[string]time.Duration{}, Converged: true}
	lastMismatch := map[string]time.Time{}
	lastSeen := map[string]results.Observation{}
	for _, o := range obs {
		p, ok := oracle.Find(predictions, o.From, o.To, o.Port)
		key := fmt.Sprintf("%s -> %s:%d", o.From, o.To, o.Port)
		if o.Result == scenario.ResultFail && !(ok && p.Result == scenario.ResultFail) {
			r.Failures = append(r.Failures, o)
		}
		if !ok || o.Time.Before(changed) {
			continue
		}
		lastSeen[key] = o
		if o.Result != p.Result {
			lastMismatch[key] = o.Time
			if o.Result == scenario.ResultPlaintext && noPlaintextAfter > 0 && o.Time.Sub(changed) > noPlaintextAfter {
				r.LatePlaintext = append(r.LatePlaintext, o)
			}
		}
	}
	for key, last := range lastSeen {
		p, _ := oracle.Find(predictions, last.From, last.To, last.Port)
		if last.Result != p.Result {
			r.Converged = false
			r.NotSettled = append(r.NotSettled, fmt.Sprintf("%s still %s, want %s", key, describe(last), p.Result))
			continue
		}
		d := time.Duration(0)
		if t, ok := lastMismatch[key]; ok {
			d = t.Sub(changed)
		}
		r.PairConvergence[key] = d
		r.Convergence = max(r.Convergence, d)
	}
	sort.Strings(r.NotSettled)
	return r
}

// Deadlines are the bounds the transition was held to: no plaintext to a
// server the new policies close later than noPlaintextAfter after the
// change (when the step sets one), and every pair settled on the new
// policies by the end of the observation window, windowEnd.
func (r TransitionReport) Deadlines(noPlaintextAfter time.Duration, windowEnd time.Time) []results.Deadline {
	var out []results.Deadline
	if noPlaintextAfter > 0 {
		d := results.Deadline{Name: "no plaintext after " + noPlaintextAfter.String(), At: r.Changed.Add(noPlaintextAfter), Met: len(r.LatePlaintext) == 0,
			Detail: "no plaintext request after it"}
		if !d.Met {
			d.Detail = fmt.Sprintf("%d plaintext requests after it: %s", len(r.LatePlaintext), describeObservations(r.LatePlaintext, 3, r.Changed))
		}
		out = append(out, d)
	}
	d := results.Deadline{Name: "converged by the end of the window", At: windowEnd, Met: r.Converged,
		Detail: fmt.Sprintf("every pair matched the new policies %s after the change", r.Convergence.Round(time.Millisecond))}
	if !r.Converged {
		d.Detail = "not settled: " + strings.Join(r.NotSettled, "; ")
	}
	return append(out, d)
}

// Verify returns every way the transition falls short.
func (r TransitionReport) Verify(maxFailures int) error {
	var errs []error
	if len(r.Failures) > maxFailures {
		errs = append(errs, fmt.Errorf("%d failed requests during the transition (at most %d allowed), first: %s", len(r.Failures), maxFailures, describeObservations(r.Failures, 3, r.Changed)))
	}
	if len(r.LatePlaintext) > 0 {
		errs = append(errs, fmt.Errorf("%d requests were still accepted in plaintext after the allowed delay: %s", len(r.LatePlaintext), describeObservations(r.LatePlaintext, 3, r.Changed)))
	}
	if !r.Converged {
		errs = append(errs, fmt.Errorf("not settled at the end of the window: %s", strings.Join(r.NotSettled, "; ")))
	}
	return errors.Join(errs...)
}

func describeObservations(obs []results.Observation, n int, changed time.Time) string {
	var parts []string
	for i, o := range obs {
		if i == n {
			parts = append(parts, fmt.Sprintf("and %d more", len(obs)-n))
			break
		}
		parts = append(parts, fmt.Sprintf("%s -> %s:%d %s at %+.1fs", o.From, o.To, o.Port, describe(o), o.Time.Sub(changed).Seconds()))
	}
	return strings.Join(parts, ", ")
}
