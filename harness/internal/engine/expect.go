package engine

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// expect probes every row of the table in rounds until `consecutive` rounds
// in a row match all of them. A round is one exec per client workload,
// batching all its targets. At the step's timeout the error is the table of
// expected against last observed.
func (e *Engine) expect(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	table, err := oracle.Table(e.suite, sc, index)
	if err != nil {
		return err
	}
	rows := make([]*rowHistory, len(table))
	for i, x := range table {
		rows[i] = &rowHistory{expectation: x, counts: map[string]int{}, wire: map[string]int{}}
	}
	need := e.suite.Defaults.Consecutive
	streak, rounds := 0, 0
	var lastErr error
	start := e.now()
	err = wait.For(func(ctx context.Context) (bool, error) {
		// A round that cannot finish before the deadline would only replace
		// the last real observations with "cut short".
		if d, ok := ctx.Deadline(); ok && time.Until(d) < e.suite.Defaults.Interval.Duration {
			return false, nil
		}
		rounds++
		ok, err := e.round(ctx, sc, st, rows)
		if leak := firstLeak(rows); leak != "" {
			// No later round undoes a canary seen in cleartext.
			return false, errWireLeak
		}
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return false, nil // a round cut short by the timeout tells nothing
		}
		lastErr = err
		switch {
		case errors.Is(err, probe.ErrHarnessLimit):
			// The transport cannot answer these requests at all (a
			// rehearsal meeting a configuration its Envoy evaluator does
			// not decide): probing on until the timeout would change
			// nothing.
			return false, err
		case err != nil:
			streak = 0
			e.log.Info("probe round failed", "step", st.Name, "round", rounds, "error", err)
		case ok:
			streak++
		default:
			streak = 0
		}
		return streak >= need, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(timeLeft(ctx)))
	if err == nil {
		e.log.Info("expectations held", "step", st.Name, "consecutive", need, "rounds", rounds, "took", e.now().Sub(start).Round(time.Millisecond))
		e.enforced(sc, st, rows)
		return nil
	}
	if leak := firstLeak(rows); leak != "" {
		return &ExpectationError{Step: st.Name, Timeout: st.Timeout.Duration, Rounds: rounds, rows: rows, WireLeak: leak}
	}
	if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err() // interrupted, not timed out
	}
	if errors.Is(err, probe.ErrHarnessLimit) {
		return fmt.Errorf("step %s: a limit of the harness, not a verdict on the mesh: %w", st.Name, err)
	}
	return &ExpectationError{Step: st.Name, Timeout: st.Timeout.Duration, Rounds: rounds, rows: rows, Cause: lastErr}
}

// errWireLeak ends an expect step's wait at the first request the mesh
// reported as mTLS whose canary crossed in cleartext.
var errWireLeak = errors.New(results.FailureWirePlaintext)

// firstLeak is the first row's wire leak (wireLeak), or "".
func firstLeak(rows []*rowHistory) string {
	for _, r := range rows {
		if r.leak != "" {
			return r.leak
		}
	}
	return ""
}

// round runs one probe round and reports whether every row matched. The
// clients probe at once, each its own rows one batch or window after the
// other, as continuous traffic does: a witness window (TCP, ztunnel) is
// still held by one probe at a time (tcpLocks), so concurrent clients
// never share a count, and a round takes its slowest client's time rather
// than the sum of all.
func (e *Engine) round(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, rows []*rowHistory) (bool, error) {
	// One batch per client workload, in the order the table names them.
	var clients []string
	byClient := map[string][]*rowHistory{}
	for _, r := range rows {
		if _, ok := byClient[r.expectation.From]; !ok {
			clients = append(clients, r.expectation.From)
		}
		byClient[r.expectation.From] = append(byClient[r.expectation.From], r)
	}
	td := e.cluster.Istio.TrustDomain
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, from := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pod, err := e.clientPod(ctx, from)
			if err == nil {
				err = e.probeClient(ctx, sc, st, from, pod, byClient[from], td)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	all := true
	for i, from := range clients {
		if err := errs[i]; err != nil && cutByDeadline(ctx, err) {
			// Cut short by the step's timeout: the rows keep what the last
			// full round saw (a TCP row's witness window can outlast the
			// margin expect leaves before the deadline).
			return false, context.DeadlineExceeded
		} else if err != nil {
			for _, r := range byClient[from] {
				r.last, r.lastWhy = nil, "not observed: "+err.Error()
			}
		}
		for _, r := range byClient[from] {
			if r.lastWhy != "" {
				all = false
			}
		}
	}
	return all, errors.Join(errs...)
}

// probeClient runs one client's batch and scores its rows.
func (e *Engine) probeClient(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, from string, pod results.Pod, rows []*rowHistory, td string) error {
	// HTTP rows go in one batch; each TCP row is probed in a witness
	// window of its own (tcp.go).
	// A row with an ambient side is probed in a ztunnel window of its own
	// (ambient.go).
	var httpRows, tcpRows, ambientRows []*rowHistory
	for _, r := range rows {
		switch {
		case e.ambientPair(from, r.expectation.To):
			ambientRows = append(ambientRows, r)
		case e.isTCP(r.expectation.To, r.expectation.Port):
			tcpRows = append(tcpRows, r)
		default:
			httpRows = append(httpRows, r)
		}
	}
	var obs []results.Observation
	if len(httpRows) > 0 {
		spec := echoapi.ProbeSpec{
			RequestsPerTarget: e.suite.Defaults.Requests,
			Timeout:           echoapi.Duration(e.suite.Defaults.RequestTimeout.Duration),
			Deadline:          echoapi.Duration(e.batchDeadline(len(httpRows))),
		}
		for _, r := range httpRows {
			spec.Targets = append(spec.Targets, e.target(r.expectation))
		}
		answers, err := e.watched(ctx, st, pod, spec, func() ([]echoapi.ProbeResult, error) { return e.probe(ctx, from, pod, spec) })
		if err != nil {
			return fmt.Errorf("probing from %s (%s): %w", from, pod, err)
		}
		now := e.now()
		for _, r := range httpRows {
			for _, res := range answers {
				if res.Target == targetName(r.expectation.To, r.expectation.Port) {
					obs = append(obs, e.observe(observation(now, sc.Name, st.Name, from, r.expectation, pod.Name, res), st))
				}
			}
		}
	}
	for _, r := range tcpRows {
		o, err := e.probeTCP(ctx, sc, st, from, pod, r.expectation, e.suite.Defaults.Requests)
		if err != nil {
			return err
		}
		obs = append(obs, o...)
	}
	for _, r := range ambientRows {
		o, err := e.probeAmbient(ctx, sc, st, from, pod, r.expectation, e.suite.Defaults.Requests)
		if err != nil {
			return err
		}
		obs = append(obs, o...)
	}
	for _, r := range rows {
		x := r.expectation
		ids := e.expectedIDs(x, td)
		r.last, r.lastWhy = r.last[:0], ""
		for _, o := range obs {
			if pairOf(x) != (pair{o.From, o.To, o.Port}) {
				continue
			}
			e.rec.Record(o)
			r.last = append(r.last, o)
			r.counts[describe(o)]++
			if o.Wire != nil {
				r.wire[o.Wire.Verdict]++
			}
			if leak := wireLeak(o); leak != "" && r.leak == "" {
				r.leak = leak
			}
			why := mismatch(x, ids, o)
			if why != "" && r.lastWhy == "" {
				r.lastWhy = why
			}
			if why == "" && r.first == nil {
				first := o
				r.first = &first
			}
		}
		if len(r.last) == 0 {
			r.lastWhy = "the probe returned no result for this target"
		}
	}
	return nil
}

// target is the URL a row probes: the server's Service, so that the client's
// sidecar routes it and any DestinationRule for that host applies. A grpc
// port gets a gRPC call: through grpc-go's xDS resolver and credentials
// (xds:///, GRPC_XDS_BOOTSTRAP, which Istio's grpc-agent template sets on
// the app container) when the client is proxyless, so that istiod's
// configuration decides its TLS; plain gRPC (grpc://) otherwise, which a
// client's sidecar carries as it carries HTTP. A proxyless client's HTTP
// and TCP leave as the application writes them (the oracle's mixed rules):
// http:// and tcp:// as from any client.
func (e *Engine) target(x scenario.Expectation) echoapi.Target {
	w := e.suite.Workload(x.To)
	host := fmt.Sprintf("%s.%s.svc.cluster.local:%d", w.Name, w.Namespace, x.Port)
	u := url.URL{Scheme: "http", Host: host, Path: "/"}
	if p := w.Port(x.Port); p != nil && p.Protocol == scenario.ProtocolGRPC {
		u = url.URL{Scheme: echoapi.SchemeGRPC, Host: host}
		if c := e.suite.Workload(x.From); c != nil && c.Proxyless {
			u = url.URL{Scheme: echoapi.SchemeXDS, Path: "/" + host}
		}
	}
	return echoapi.Target{Name: targetName(x.To, x.Port), URL: u.String(), Port: x.Port}
}

// batchDeadline bounds one probe batch: every request may take the whole
// request timeout, plus a second of slack for the exec itself.
func (e *Engine) batchDeadline(targets int) time.Duration {
	return time.Duration(targets*e.suite.Defaults.Requests)*e.suite.Defaults.RequestTimeout.Duration + time.Second
}

// cutByDeadline tells whether err ended a probe because the step's time
// ran out: the context ended, or a client's rate limiter refused to wait
// past the deadline (golang.org/x/time/rate says so before the deadline
// passes, without wrapping context.DeadlineExceeded).
func cutByDeadline(ctx context.Context, err error) bool {
	return ctx.Err() != nil || strings.Contains(err.Error(), "would exceed context deadline")
}
