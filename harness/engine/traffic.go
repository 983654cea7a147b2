package engine

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
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
	e.logf("%s: %s: %s", st.Name, kind, ev.Detail)
	return ev.Time
}

// Traffic is continuous probing that runs while a step changes the mesh:
// every client probes its pairs once per period, resolving its ready pod
// anew each time (pods are replaced during upgrades).
type Traffic struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	obs    []results.Observation
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

// Failures are the observations that failed.
func Failures(obs []results.Observation) []results.Observation {
	var out []results.Observation
	for _, o := range obs {
		if o.Result == scenario.ResultFail {
			out = append(out, o)
		}
	}
	return out
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

func (e *Engine) probeContinuously(ctx context.Context, tr *Traffic, sc *scenario.Scenario, st *scenario.Step, from string, pairs []scenario.Pair, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		obs := e.probePairs(ctx, sc, st, from, pairs)
		if ctx.Err() == nil { // a batch cut short by Stop proves nothing
			tr.mu.Lock()
			for i := range obs {
				obs[i].Expected = tr.expected(obs[i])
			}
			tr.obs = append(tr.obs, obs...)
			tr.mu.Unlock()
			for _, o := range obs {
				e.rec.Record(o)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// probePairs sends one request per pair from a client's ready pod. A client
// without a ready pod, or an exec that fails, counts as a failure of every
// pair: during an upgrade that is exactly the outage to report.
func (e *Engine) probePairs(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, pairs []scenario.Pair) []results.Observation {
	now := e.now()
	failAll := func(reason string, err error) []results.Observation {
		out := make([]results.Observation, len(pairs))
		for i, p := range pairs {
			out[i] = results.Observation{Time: now, Scenario: sc.Name, Step: st.Name, From: from, To: p.To, Port: p.Port,
				Result: scenario.ResultFail, Reason: reason, Error: err.Error()}
		}
		return out
	}
	pod, err := e.readyPod(ctx, from)
	if err != nil {
		return failAll("no-client-pod", err)
	}
	spec := echoapi.ProbeSpec{
		RequestsPerTarget: 1,
		Timeout:           echoapi.Duration(e.suite.Defaults.RequestTimeout.Duration),
		Deadline:          echoapi.Duration(time.Duration(len(pairs))*e.suite.Defaults.RequestTimeout.Duration + time.Second),
	}
	for _, p := range pairs {
		spec.Targets = append(spec.Targets, e.target(scenario.Expectation{To: p.To, Port: p.Port}))
	}
	answers, err := e.prober.Probe(ctx, pod, spec)
	if err != nil {
		return failAll("probe-error", err)
	}
	out := make([]results.Observation, 0, len(pairs))
	for _, p := range pairs {
		name := targetName(p.To, p.Port)
		for _, r := range answers {
			if r.Target == name {
				out = append(out, observation(e.now(), sc.Name, st.Name, from, scenario.Expectation{To: p.To, Port: p.Port}, pod.Name, r))
			}
		}
	}
	return out
}
