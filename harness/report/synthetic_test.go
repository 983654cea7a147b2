package report

import (
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// runStart is when the synthetic run begins.
var runStart = time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)

const (
	idA = "spiffe://cluster.local/ns/mp-a/sa/service-a"
	idB = "spiffe://cluster.local/ns/mp-b/sa/service-b"
)

// probe is one synthetic observation at offset after runStart.
func probe(sc, step string, offset time.Duration, from, to string, port int, result scenario.Result, reason, expected string) results.Observation {
	o := results.Observation{
		Time: runStart.Add(offset), Scenario: sc, Step: step, From: from, To: to, Port: port,
		Pod: from + "-7d9f8c-x2x4z", Result: result, Reason: reason, Expected: expected,
		Latency: 3 * time.Millisecond,
	}
	switch result {
	case scenario.ResultMTLS:
		o.Status, o.ClientID, o.ServerID = 200, idA, idB
	case scenario.ResultPlaintext:
		o.Status = 200
	case scenario.ResultFail:
		o.Error = "read: connection reset by peer"
	}
	return o
}

func event(sc, step string, offset time.Duration, kind results.EventKind, detail string) results.Event {
	return results.Event{Time: runStart.Add(offset), Scenario: sc, Step: step, Kind: kind, Detail: detail}
}

const (
	mtls      = scenario.ResultMTLS
	plaintext = scenario.ResultPlaintext
	fail      = scenario.ResultFail
)

// verdict is a synthetic step verdict from offset after runStart.
func verdict(sc, step, kind string, offset, took time.Duration, status results.Status, reason string) results.Verdict {
	return results.Verdict{Scenario: sc, Step: step, Kind: kind, Status: status, Reason: reason,
		Started: runStart.Add(offset), Duration: took, Source: "scenarios.yaml:12:7"}
}

// syntheticRun is a run with a passing step, a failing step, a transition
// with its events and deadlines, a root rotation with serials, an mtls
// step without observations and the setup's verdict. The report's proof
// on data the engine produced is TestReportOfARealRun; this one pins the
// page's layout in a golden file.
func syntheticRun() Contents {
	var obs []results.Observation
	var events []results.Event
	s := time.Second
	verdicts := []results.Verdict{
		{Step: results.SetupStep, Kind: "setup", Status: results.Passed, Started: runStart.Add(-time.Minute), Duration: 55 * s},
		verdict("strict-mesh", "strict-policies", "mtls", -s, 500*time.Millisecond, results.Passed, ""),
		verdict("strict-mesh", "strict-on", "expect", 0, 3*s, results.Passed, ""),
		verdict("strict-mesh", "port-exception", "expect", 10*s, 4*s, results.Failed, "step \"port-exception\": expectations did not hold within 4s (3 probe rounds)\nFROM  TO  ..."),
		verdict("permissive-to-strict", "migrate", "transition", 30*s, 20*s, results.Passed, ""),
		verdict("root-rotation", "rotate-root", "rotateRoot", 60*s, 30*s, results.Passed, ""),
		verdict("root-rotation", "check-after", "expect", 95*s, 0, results.Skipped, "skipped: an earlier step of the scenario failed"),
	}
	verdicts[3].Table = []results.Row{
		{From: "service-a", To: "service-b", Port: 8080, Expected: "mtls", LastObserved: "mtls x1", OverTheWait: "mtls x3"},
		{From: "legacy", To: "service-b", Port: 9090, Expected: "fail (reset)", LastObserved: "fail (timeout) x1", OverTheWait: "fail (timeout) x1, plaintext x3", Why: "failed with timeout, want reset"},
	}
	verdicts[3].Diagnostics = "diagnostics/strict-mesh/port-exception"

	// strict-mesh / strict-on: every cell as expected.
	for i := range 3 {
		at := time.Duration(i) * s
		obs = append(obs,
			probe("strict-mesh", "strict-on", at, "service-a", "service-b", 8080, mtls, "", "mtls"),
			probe("strict-mesh", "strict-on", at, "service-a", "service-b", 9090, mtls, "", "mtls"),
			probe("strict-mesh", "strict-on", at, "legacy", "service-b", 8080, fail, "reset", "fail (reset)"),
			probe("strict-mesh", "strict-on", at, "legacy", "service-b", 9090, fail, "reset", "fail (any reason)"),
		)
	}
	// strict-mesh / port-exception: legacy reaches 9090 in plaintext, the
	// step expected a reset; service-a never probes 9090.
	for i := range 3 {
		at := 10*s + time.Duration(i)*s
		obs = append(obs,
			probe("strict-mesh", "port-exception", at, "service-a", "service-b", 8080, mtls, "", "mtls"),
			probe("strict-mesh", "port-exception", at, "legacy", "service-b", 8080, fail, "reset", "fail (reset)"),
			probe("strict-mesh", "port-exception", at, "legacy", "service-b", 9090, plaintext, "", "fail (reset)"),
		)
	}
	obs = append(obs, probe("strict-mesh", "port-exception", 13*s, "legacy", "service-b", 9090, fail, "timeout", "fail (reset)"))

	// permissive-to-strict / migrate: a transition; legacy's plaintext is
	// closed two seconds after the change.
	const sc, step = "permissive-to-strict", "migrate"
	for i := range 20 {
		at := 30*s + time.Duration(i)*s
		obs = append(obs, probe(sc, step, at, "service-a", "service-b", 8080, mtls, "", "mtls"))
		switch {
		case i < 8:
			obs = append(obs, probe(sc, step, at, "legacy", "service-b", 8080, plaintext, "", "plaintext"))
		case i < 10:
			obs = append(obs, probe(sc, step, at, "legacy", "service-b", 8080, plaintext, "", "fail (reset)"))
		default:
			obs = append(obs, probe(sc, step, at, "legacy", "service-b", 8080, fail, "reset", "fail (reset)"))
		}
	}
	events = append(events,
		event(sc, step, 37500*time.Millisecond, "policy-change", "applying PeerAuthentication mp-b/default STRICT"),
		event(sc, step, 40*s, "converged", "every pair matched the new policies 2.5s after the change"),
		deadline(sc, step, 49*s, results.Deadline{Name: "no plaintext after 3s", At: runStart.Add(40500 * time.Millisecond), Met: true, Detail: "no plaintext request after it"}),
		deadline(sc, step, 49*s, results.Deadline{Name: "converged by the end of the window", At: runStart.Add(49 * s), Met: true, Detail: "every pair matched the new policies 2.5s after the change"}),
	)

	// root-rotation / rotate-root: mTLS throughout, serials change.
	const rsc, rstep = "root-rotation", "rotate-root"
	for i := range 16 {
		at := 60*s + time.Duration(i)*2*s
		obs = append(obs, probe(rsc, rstep, at, "service-a", "service-b", 8080, mtls, "", "mtls"))
	}
	events = append(events,
		event(rsc, rstep, 60*s, SerialEvent, "service-b serves serial 1a2b3c4d (root \"Root A\")"),
		event(rsc, rstep, 61*s, "root-rotation", "replacing root \"Root A\" with \"Root B\""),
		event(rsc, rstep, 64*s, "root-rotation", "phase trust-both: istiod signs with Root A, trusts Root A, Root B"),
		event(rsc, rstep, 72*s, "root-rotation", "phase sign-new: istiod signs with Root B, trusts Root A, Root B"),
		event(rsc, rstep, 76*s, SerialEvent, "service-b serves serial 5e6f7a8b (root \"Root B\")"),
		event(rsc, rstep, 82*s, "root-rotation", "phase drop-old: istiod signs with Root B, trusts Root B"),
		event(rsc, rstep, 88*s, SerialEvent, "service-b serves serial 9c0d1e2f (root \"Root B\")"),
	)
	return Contents{Observations: obs, Events: events, Verdicts: verdicts}
}

func deadline(sc, step string, offset time.Duration, d results.Deadline) results.Event {
	met := "met"
	if !d.Met {
		met = "missed"
	}
	e := event(sc, step, offset, results.EventDeadline, d.Name+" ("+met+"): "+d.Detail)
	e.Deadline = &d
	return e
}
