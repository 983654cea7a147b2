package engine

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// pair is a client, server and port: one row of an expect table.
type pair struct {
	from, to string
	port     int
}

func pairOf(e scenario.Expectation) pair { return pair{e.From, e.To, e.Port} }

// targetName is how a pair's target is named in a probe batch; the echo
// program hands it back in every result.
func targetName(to string, port int) string { return fmt.Sprintf("%s:%d", to, port) }

// observation turns a probe result into an Observation of the row e. The
// row's expectation goes into Expected; a row without one (e.Result empty:
// traffic the step only observes) leaves it empty.
func observation(now time.Time, scenarioName, step, from string, e scenario.Expectation, pod string, r echoapi.ProbeResult) results.Observation {
	o := results.Observation{
		Time: now, Scenario: scenarioName, Step: step, From: from, To: e.To, Port: e.Port, Pod: pod,
		Result: scenario.Result(r.Result), Reason: r.Reason, Status: r.StatusCode,
		Latency: time.Duration(r.LatencyNS), Error: r.Error,
	}
	if e.Result != "" {
		o.Expected = results.ExpectedOutcome(e)
	}
	// The sidecar appends its element last; the last one is the hop that
	// terminated mTLS in front of the echo server. Without XFCC, a gRPC
	// result's PeerURI is the client certificate grpc-go itself saw (a
	// proxyless server), with no proxy (ProxyURI empty).
	switch n := len(r.XFCC); {
	case n > 0:
		o.ClientID, o.ServerID = r.XFCC[n-1].URI, r.XFCC[n-1].By
	default:
		o.ClientID, o.ServerID = r.PeerURI, r.ProxyURI
	}
	// What answered, when a transport says it was not the cluster's own
	// data plane (a rehearsal's real proxyless processes); the run fills
	// its own label where this is empty.
	o.DataPlane = r.DataPlane
	o.Canary = r.Canary
	if w := r.Witness; w != nil {
		o.Wire = &results.Wire{Verdict: string(w.Verdict), Detail: w.Detail, Node: w.Node, Unavailable: w.Unavailable}
		if w.Packet != nil {
			o.Wire.Packet = w.Packet.String()
		}
	}
	o.DecidedBy, o.DecidedAt = r.DecidedBy, r.DecidedAt
	return o
}

// wireLeak says, for a request the mesh reported as mTLS whose canary the
// wire witness saw in cleartext, what was seen; "" otherwise.
func wireLeak(o results.Observation) string {
	if o.Result != scenario.ResultMTLS || o.Wire == nil || o.Wire.Verdict != results.WirePlaintext {
		return ""
	}
	return fmt.Sprintf("%s: %s -> %s:%d was reported as mtls, but its canary crossed in cleartext: %s", results.FailureWirePlaintext, o.From, o.To, o.Port, o.Wire.Packet)
}

// wireMismatch says why the wire contradicts or fails to confirm an
// observation that otherwise matches row e, or "": with a witness that
// watched, mtls needs the request encrypted on the wire and plaintext its
// canary seen in cleartext. A request no witness could watch
// (Wire.Unavailable) is not held against the row.
func wireMismatch(e scenario.Expectation, o results.Observation) string {
	if o.Wire == nil || o.Wire.Unavailable {
		return ""
	}
	switch {
	case e.Result == scenario.ResultMTLS && o.Wire.Verdict != results.WireEncrypted:
		return fmt.Sprintf("mtls, but the wire witness did not see it encrypted: %s (%s)", o.Wire.Verdict, o.Wire.Detail)
	case e.Result == scenario.ResultPlaintext && o.Wire.Verdict != results.WirePlaintext:
		return fmt.Sprintf("plaintext, but the wire witness did not see its canary in cleartext: %s (%s)", o.Wire.Verdict, o.Wire.Detail)
	}
	return ""
}

// expectedIDs are the identities an mtls row must show. A proxyless server
// terminates mTLS in grpc-go itself and reports the client certificate it
// saw: no proxy adds an identity of its own (XFCC By), so only the
// client's is checked, and a proxy's identity is a mismatch.
type expectedIDs struct {
	client, server    string
	serverIsProxyless bool
}

// expectedIDs are the identities row x must show in trust domain td.
func (e *Engine) expectedIDs(x scenario.Expectation, td string) expectedIDs {
	server := e.suite.Workload(x.To)
	return expectedIDs{client: e.suite.Workload(x.From).SPIFFEID(td), server: server.SPIFFEID(td), serverIsProxyless: server.Proxyless}
}

// mismatch says why an observation does not match a row, or "" if it does.
func mismatch(e scenario.Expectation, ids expectedIDs, o results.Observation) string {
	if leak := wireLeak(o); leak != "" {
		return leak
	}
	if o.Result == scenario.ResultFail && o.Reason == ReasonNoWitness {
		// The connection worked; that it was mtls or plaintext is
		// unproven, so no expectation holds, a fail least of all.
		return "the connection echoed, but its server's sidecar did not prove how it arrived: " + o.Error
	}
	if o.Result != e.Result {
		return fmt.Sprintf("got %s", describe(o))
	}
	switch e.Result {
	case scenario.ResultFail:
		if e.Reason != "" && o.Reason != e.Reason {
			return fmt.Sprintf("failed with %s, want %s", o.Reason, e.Reason)
		}
	case scenario.ResultMTLS:
		if o.ClientID != ids.client {
			return fmt.Sprintf("mtls with client identity %q, want %q", o.ClientID, ids.client)
		}
		switch {
		case ids.serverIsProxyless && o.ServerID != "":
			return fmt.Sprintf("mtls terminated by a proxy with identity %q, want grpc-go of the proxyless server (%s) to terminate it", o.ServerID, ids.server)
		case !ids.serverIsProxyless && o.ServerID != ids.server:
			return fmt.Sprintf("mtls with server identity %q, want %q", o.ServerID, ids.server)
		}
	}
	return wireMismatch(e, o)
}

// describe renders an observation's outcome for a person.
func describe(o results.Observation) string {
	if o.Result == scenario.ResultFail {
		return "fail (" + o.Reason + ")"
	}
	return string(o.Result)
}

// describeWithError is describe with the observation's error after it,
// when it has one: what a failure message names.
func describeWithError(o results.Observation) string {
	if o.Error != "" {
		return describe(o) + ": " + o.Error
	}
	return describe(o)
}

// describeExpectation renders a row's expectation the way
// Observation.Expected holds it, so the report can compare the two.
func describeExpectation(e scenario.Expectation) string { return results.ExpectedOutcome(e) }

// rowHistory is what the engine saw of one row over a whole wait.
type rowHistory struct {
	expectation scenario.Expectation
	last        []results.Observation // the latest round's observations
	counts      map[string]int        // outcome → count over the whole wait
	lastWhy     string
	wire        map[string]int // wire verdict → count over the whole wait
	leak        string         // the first wire leak seen (wireLeak)
	// first is the first observation at the expected outcome, which
	// enforcement (enforce.go) measures from.
	first *results.Observation
}

// ExpectationError is an expect step that did not hold within its timeout:
// the table of expected against last observed, with the counts of every
// outcome over the whole wait.
type ExpectationError struct {
	Step    string
	Timeout time.Duration
	Rounds  int
	rows    []*rowHistory
	Cause   error // set when probing itself failed, e.g. no ready client pod
	// WireLeak is set when the step failed at once because a request the
	// mesh reported as mTLS crossed in cleartext (wireLeak says how).
	WireLeak string
}

func (e *ExpectationError) Error() string {
	var b strings.Builder
	if e.WireLeak != "" {
		fmt.Fprintf(&b, "step %q: %s (round %d)", e.Step, e.WireLeak, e.Rounds)
	} else {
		fmt.Fprintf(&b, "step %q: expectations did not hold within %s (%d probe rounds)", e.Step, e.Timeout, e.Rounds)
	}
	if e.Cause != nil {
		fmt.Fprintf(&b, "; last probe error: %v", e.Cause)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FROM\tTO\tPORT\tEXPECTED\tLAST OBSERVED\tOVER THE WAIT\tWHY")
	for _, r := range e.Table() {
		why := r.Why
		if why == "" {
			why = "ok"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.From, r.To, r.Port, r.Expected, r.LastObserved, r.OverTheWait, why)
	}
	tw.Flush()
	return strings.TrimRight(b.String(), "\n")
}

func (e *ExpectationError) Unwrap() error { return e.Cause }

// summarize renders a round's observations of one row, e.g. "mtls x3" or
// "plaintext x2, fail (reset) x1".
func summarize(obs []results.Observation) string {
	counts := map[string]int{}
	for _, o := range obs {
		counts[describe(o)]++
	}
	return formatCounts(counts)
}

func formatCounts(counts map[string]int) string {
	if len(counts) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s x%d", k, counts[k])
	}
	return strings.Join(parts, ", ")
}
