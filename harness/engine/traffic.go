package engine

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// event records an event if the recorder keeps them, and logs it.
func (e *Engine) event(sc *scenario.Scenario, st *scenario.Step, kind results.EventKind, format string, args ...any) time.Time {
	ev := results.Event{Time: e.now(), Scenario: sc.Name, Step: st.Name, Kind: kind, Detail: fmt.Sprintf(format, args...)}
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
func (e *Engine) StartTraffic(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, t scenario.Traffic) *Traffic {
	ctx, cancel := context.WithCancel(ctx)
	tr := &Traffic{cancel: cancel, done: make(chan struct{})}
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
