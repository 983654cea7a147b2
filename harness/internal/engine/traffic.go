package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	apiwait "k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// event records an event if the recorder keeps them, and logs it.
func (e *Engine) event(sc *scenario.Scenario, st *scenario.Step, kind results.EventKind, format string, args ...any) time.Time {
	return e.eventAt(e.now(), sc, st, kind, format, args...)
}

// eventAt is event at a time the step took before, so that the event and
// what the step did at that time agree exactly.
func (e *Engine) eventAt(at time.Time, sc *scenario.Scenario, st *scenario.Step, kind results.EventKind, format string, args ...any) time.Time {
	ev := results.Event{Time: at, Scenario: sc.Name, Step: st.Name, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	e.rec.RecordEvent(ev)
	e.log.Info(ev.Detail, "step", st.Name, "event", kind)
	return ev.Time
}

// Traffic is continuous probing that runs while a step changes the mesh:
// every client probes its pairs once per period, resolving its ready pod
// anew each time (pods are replaced during upgrades).
//
// A probe the harness could not run (no ready client pod to exec into, an
// exec or API error) is not a request the mesh failed, and is never
// recorded as a failed observation: it is retried within the period
// (probeAttempts, with backoff) and, if every attempt fails, the round is
// lost and a results.EventHarnessError event says so. Such a gap fails the
// step only when a client could not be observed for longer than the gap
// limit (WithObservationGapLimit), because then there is no evidence
// either way for that time; Err says so.
type Traffic struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	obs    []results.Observation
	errs   []error // clients unobservable for longer than the gap limit, wire leaks
	leaked bool    // a WireLeakError is among errs
	// expect are the expectations the step judges the traffic against, in
	// the order they took effect; each observation carries the one in
	// force at its time as Observation.Expected.
	expect []expectPhase
}

// expectPhase is what a step expects of its traffic from a point in time
// on, by pair; a pair it has no prediction for is only observed.
type expectPhase struct {
	since time.Time
	want  map[pair]string
}

// TrafficOption adjusts continuous traffic.
type TrafficOption func(*Traffic)

// Expecting gives the outcomes the step judges the traffic against from
// the start: each observation of a predicted pair carries its prediction
// as Observation.Expected, so the report can mark what differed.
func Expecting(predictions []oracle.Prediction) TrafficOption {
	return func(t *Traffic) { t.expectFrom(time.Time{}, predictions) }
}

// expectFrom makes predictions the expectation of observations made at or
// after since (a transition's policy change).
func (t *Traffic) expectFrom(since time.Time, predictions []oracle.Prediction) {
	want := make(map[pair]string, len(predictions))
	for _, p := range predictions {
		want[pair{p.From, p.To, p.Port}] = results.ExpectedOutcome(scenario.Expectation{Result: p.Result, Reason: p.Reason})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expect = append(t.expect, expectPhase{since: since, want: want})
}

// expected is the expectation in force for o; t.mu must be held.
func (t *Traffic) expected(o results.Observation) string {
	for i := len(t.expect) - 1; i >= 0; i-- {
		if !o.Time.Before(t.expect[i].since) {
			return t.expect[i].want[pair{o.From, o.To, o.Port}]
		}
	}
	return ""
}

// Observations returns what was seen so far, in time order.
func (t *Traffic) Observations() []results.Observation {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]results.Observation(nil), t.obs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out
}

// Stop ends the probing, waits for in-flight batches and returns every
// observation.
func (t *Traffic) Stop() []results.Observation {
	t.cancel()
	<-t.done
	return t.Observations()
}

// Err says which clients the harness could not observe for longer than the
// gap limit, or nil. After Stop it includes a gap still open at the end.
func (t *Traffic) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return errors.Join(t.errs...)
}

func (t *Traffic) fail(err error) {
	t.mu.Lock()
	t.errs = append(t.errs, err)
	t.mu.Unlock()
}

// StartTraffic starts probing t's pairs until Stop.
func (e *Engine) StartTraffic(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, t scenario.Traffic, opts ...TrafficOption) *Traffic {
	ctx, cancel := context.WithCancel(ctx)
	tr := &Traffic{cancel: cancel, done: make(chan struct{})}
	for _, opt := range opts {
		opt(tr)
	}
	byClient := map[string][]scenario.Pair{}
	var clients []string
	for _, p := range t.Pairs {
		if _, ok := byClient[p.From]; !ok {
			clients = append(clients, p.From)
		}
		byClient[p.From] = append(byClient[p.From], p)
	}
	var wg sync.WaitGroup
	for _, from := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.probeContinuously(ctx, tr, sc, st, from, byClient[from], t.Every.Duration)
		}()
	}
	go func() {
		wg.Wait()
		close(tr.done)
	}()
	return tr
}

const (
	// probeAttempts bounds the tries of one round whose exec or API call
	// fails; the waits between them (a quarter, then half a period) keep
	// the retries within the period.
	probeAttempts = 3
	// defaultGapLimit is how long a client may go unobserved before the
	// step fails for want of evidence: long enough for a client pod to be
	// replaced (a rollout's new pod starting with its sidecar), short
	// enough that a harness that lost the cluster does not pass a step.
	defaultGapLimit = 30 * time.Second
)

// WithObservationGapLimit sets how long continuous traffic may fail to
// observe a client (no ready pod, exec or API errors) before the step
// fails; default 30s. The limit used is at least three probing periods.
func WithObservationGapLimit(d time.Duration) Option {
	return func(e *Engine) { e.gapLimit = d }
}

// observationGap follows one client's rounds: when it was last observed,
// and how many rounds the harness lost since.
type observationGap struct {
	client   string
	limit    time.Duration
	lastSeen time.Time
	lost     int
	lastErr  error
	reported bool // the gap was reported as over the limit
}

func (g *observationGap) overLimit(now time.Time) error {
	if g.lost == 0 || g.reported || now.Sub(g.lastSeen) <= g.limit {
		return nil
	}
	g.reported = true
	return fmt.Errorf("could not observe %s for %s (limit %s): last error: %v",
		g.client, roundGap(now.Sub(g.lastSeen)), g.limit, g.lastErr)
}

// roundGap rounds a gap for people: 47s, 1.234s, 312ms.
func roundGap(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

func (e *Engine) probeContinuously(ctx context.Context, tr *Traffic, sc *scenario.Scenario, st *scenario.Step, from string, pairs []scenario.Pair, every time.Duration) {
	gap := observationGap{client: from, limit: max(cmp.Or(e.gapLimit, defaultGapLimit), 3*every), lastSeen: e.now()}
	// A gap still open when the traffic stops counts up to then.
	defer func() {
		if err := gap.overLimit(e.now()); err != nil {
			tr.fail(err)
			e.event(sc, st, results.EventHarnessError, "%v", err)
		}
	}()
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		obs, attempts, errs := e.probeWithRetries(ctx, sc, st, from, pairs, every)
		if ctx.Err() != nil { // a batch cut short by Stop proves nothing
			return
		}
		now := e.now()
		if len(errs) < attempts { // observed
			tr.mu.Lock()
			for i := range obs {
				obs[i].Expected = tr.expected(obs[i])
			}
			tr.obs = append(tr.obs, obs...)
			var leak string
			for _, o := range obs {
				if l := wireLeak(o); l != "" && !tr.leaked {
					tr.leaked, leak = true, l
				}
			}
			tr.mu.Unlock()
			if leak != "" {
				// The step fails for it whatever else it sees (Err).
				tr.fail(&WireLeakError{Leak: leak})
			}
			for _, o := range obs {
				e.rec.Record(o)
			}
			if len(errs) > 0 {
				e.event(sc, st, results.EventHarnessError, "probing from %s failed and was retried (observed on attempt %d): %v", from, attempts, errs[len(errs)-1])
			}
			if gap.lost > 0 {
				e.event(sc, st, results.EventHarnessError, "%s observed again after %s without observation (%d rounds lost)", from, roundGap(now.Sub(gap.lastSeen)), gap.lost)
			}
			gap = observationGap{client: gap.client, limit: gap.limit, lastSeen: now}
		} else if last := errs[len(errs)-1]; errors.Is(last, probe.ErrHarnessLimit) {
			// The transport cannot answer these requests at all (a
			// rehearsal meeting a configuration it does not decide):
			// waiting out the gap limit would change nothing.
			err := fmt.Errorf("a limit of the harness, not a verdict on the mesh: %w", last)
			tr.fail(err)
			e.event(sc, st, results.EventHarnessError, "%v", err)
			return
		} else {
			gap.lost++
			gap.lastErr = last
			if gap.lost == 1 {
				e.event(sc, st, results.EventHarnessError, "cannot observe %s (%d attempts): %v; its requests are not counted until it is observed again (limit %s)", from, attempts, gap.lastErr, gap.limit)
			} else {
				e.log.Info("still cannot observe a client", "step", st.Name, "client", from, "roundsLost", gap.lost, "error", gap.lastErr)
			}
			if err := gap.overLimit(now); err != nil {
				tr.fail(err)
				e.event(sc, st, results.EventHarnessError, "%v", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probeWithRetries runs one round, retrying an exec or API failure with
// backoff within the period. errs are the failed attempts' errors: fewer
// than attempts means the last attempt observed.
func (e *Engine) probeWithRetries(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, pairs []scenario.Pair, every time.Duration) (obs []results.Observation, attempts int, errs []error) {
	backoff := apiwait.Backoff{Duration: max(every/4, time.Millisecond), Factor: 2, Steps: probeAttempts}
	_ = apiwait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
		attempts++
		var err error
		if obs, err = e.probePairs(ctx, sc, st, from, pairs); err != nil {
			errs = append(errs, err)
			return false, nil
		}
		return true, nil
	})
	return obs, attempts, errs
}

// probePairs sends one request per pair from a client's ready pod. An error
// is the harness's (no ready client pod, a failed exec): no request ran.
func (e *Engine) probePairs(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, pairs []scenario.Pair) ([]results.Observation, error) {
	pod, err := e.clientPod(ctx, from)
	if err != nil {
		return nil, err
	}
	var httpPairs, tcpPairs, ambientPairs []scenario.Pair
	for _, p := range pairs {
		switch {
		case e.ambientPair(from, p.To):
			ambientPairs = append(ambientPairs, p)
		case e.isTCP(p.To, p.Port):
			tcpPairs = append(tcpPairs, p)
		default:
			httpPairs = append(httpPairs, p)
		}
	}
	out := make([]results.Observation, 0, len(pairs))
	if len(httpPairs) > 0 {
		spec := echoapi.ProbeSpec{
			RequestsPerTarget: 1,
			Timeout:           echoapi.Duration(e.suite.Defaults.RequestTimeout.Duration),
			Deadline:          echoapi.Duration(time.Duration(len(httpPairs))*e.suite.Defaults.RequestTimeout.Duration + time.Second),
		}
		for _, p := range httpPairs {
			spec.Targets = append(spec.Targets, e.target(scenario.Expectation{From: from, To: p.To, Port: p.Port}))
		}
		answers, err := e.watched(ctx, st, pod, spec, func() ([]echoapi.ProbeResult, error) { return e.probe(ctx, from, pod, spec) })
		if err != nil {
			return nil, fmt.Errorf("probing from pod %s: %w", pod, err)
		}
		for _, p := range httpPairs {
			name := targetName(p.To, p.Port)
			for _, r := range answers {
				if r.Target == name {
					out = append(out, e.observe(observation(e.now(), sc.Name, st.Name, from, scenario.Expectation{To: p.To, Port: p.Port}, pod.Name, r), st))
				}
			}
		}
	}
	// Each TCP pair in a witness window of its own (tcp.go), one
	// connection as for HTTP.
	for _, p := range tcpPairs {
		obs, err := e.probeTCP(ctx, sc, st, from, pod, scenario.Expectation{To: p.To, Port: p.Port}, 1)
		if err != nil {
			return nil, err
		}
		out = append(out, obs...)
	}
	// Each pair with an ambient side in a ztunnel window of its own
	// (ambient.go).
	for _, p := range ambientPairs {
		obs, err := e.probeAmbient(ctx, sc, st, from, pod, scenario.Expectation{To: p.To, Port: p.Port}, 1)
		if err != nil {
			return nil, err
		}
		out = append(out, obs...)
	}
	return out, nil
}
