// Package results is the data a run produces and every other package
// reads: the observation of each probe request, the timeline events steps
// record, and each step's verdict. The engine produces them, the run and
// the suites record them into the run folder, and report, diagnose and the
// CLI read them back; none of those needs the engine to do so.
//
// It is a leaf: it imports only the standard library and the scenario
// language's result words.
package results

import (
	"fmt"
	"time"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Pod names a pod.
type Pod struct {
	Namespace, Name string
	IP              string
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Observation is one probe request as the engine saw it: who asked whom,
// what came back, which identities the server's sidecar reported and what
// the step expected of that pair.
type Observation struct {
	Time     time.Time       `json:"time"`
	Scenario string          `json:"scenario"`
	Step     string          `json:"step"`
	From     string          `json:"from"`
	To       string          `json:"to"`
	Port     int             `json:"port"`
	Pod      string          `json:"pod,omitempty"` // the client pod
	Result   scenario.Result `json:"result"`
	// Expected is what the step expected of this pair ("mtls",
	// "fail (reset)", "fail (any reason)"), empty where the step only
	// observes (continuous traffic without an expectation).
	Expected string        `json:"expected,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	Status   int           `json:"status,omitempty"`
	Latency  time.Duration `json:"latencyNs"`
	// ClientID and ServerID are the SPIFFE identities of the X-Forwarded-
	// Client-Cert element the server's sidecar added (URI and By); on a
	// tcp port, the source_principal and destination_principal under which
	// the server's sidecar counted the connection; from a proxyless gRPC
	// server, which terminates mTLS in grpc-go itself, ClientID is the
	// client certificate's identity it saw and ServerID is empty.
	ClientID string `json:"clientId,omitempty"`
	ServerID string `json:"serverId,omitempty"`
	Error    string `json:"error,omitempty"`
	// DataPlane says what answered the request when it was not the
	// cluster's own sidecars, e.g. "rehearsal: data plane simulated;
	// istiod <version>"; empty for a run on a real data plane.
	DataPlane string `json:"dataPlane,omitempty"`
	// Canary is the random token the request carried, which a wire
	// witness looks for in cleartext; empty from echo programs older than
	// the witness.
	Canary string `json:"canary,omitempty"`
	// Wire is what the wire witness saw of the request on the network;
	// nil when no witness watched the step (wireWitness off).
	Wire *Wire `json:"wire,omitempty"`
	// Ztunnel is ztunnel's evidence of how the request's connection went,
	// for a pair with an ambient side (no sidecar adds X-Forwarded-Client-
	// Cert there): what a node's ztunnel counted during the request's
	// window. Nil for other pairs.
	Ztunnel *ZtunnelEvidence `json:"ztunnel,omitempty"`
	// DecidedBy names the configuration that decided the request when a
	// transport decided it from the proxies' configuration (a rehearsal's
	// Envoy evaluator): the client sidecar's listener, filter chain,
	// cluster and transport socket, the server sidecar's listener and
	// filter chain.
	DecidedBy string `json:"decidedBy,omitempty"`
	// DecidedAt is when the configuration push arrived after which the
	// decision has been what it is (set with DecidedBy).
	DecidedAt *time.Time `json:"decidedAt,omitempty"`
}

// ZtunnelEvidence is what one ztunnel counted of a request's connections
// in istio_tcp_connections_opened_total (and, for connections a client's
// sidecar pools, istio_tcp_received_bytes_total) between a read before the
// request and a read after it.
type ZtunnelEvidence struct {
	// Pod is the ztunnel pod ("<namespace>/<name>") and Node its node.
	Pod  string `json:"pod"`
	Node string `json:"node,omitempty"`
	// Reporter is "destination" (the server's ztunnel) or "source" (the
	// client's, when the server is not ambient).
	Reporter string `json:"reporter"`
	// SecurityPolicy is the connection_security_policy counted: mutual_tls,
	// or unknown for plaintext.
	SecurityPolicy string `json:"securityPolicy"`
	// SourcePrincipal and DestinationPrincipal are the principals counted.
	SourcePrincipal      string `json:"sourcePrincipal,omitempty"`
	DestinationPrincipal string `json:"destinationPrincipal,omitempty"`
	// Opened is the growth of the connection count, Bytes of the bytes
	// received (a pooled connection is counted once, its bytes each time).
	Opened uint64 `json:"opened"`
	Bytes  uint64 `json:"bytes,omitempty"`
}

// String is the evidence in a line, e.g. "ztunnel istio-system/ztunnel-x
// (reporter destination): +3 mutual_tls from spiffe://... to spiffe://...".
func (z ZtunnelEvidence) String() string {
	s := fmt.Sprintf("ztunnel %s (reporter %s): +%d %s", z.Pod, z.Reporter, z.Opened, z.SecurityPolicy)
	if z.Bytes > 0 {
		s += fmt.Sprintf(", +%d bytes", z.Bytes)
	}
	if z.SecurityPolicy == "mutual_tls" {
		s += " from " + z.SourcePrincipal + " to " + z.DestinationPrincipal
	}
	return s
}

// Outcome renders the observed outcome the way expectations are written:
// "mtls", "plaintext", "fail (reset)".
func (o Observation) Outcome() string {
	if o.Result == scenario.ResultFail {
		return "fail (" + o.Reason + ")"
	}
	return string(o.Result)
}

// ExpectedOutcome renders an expectation the way Observation.Expected holds
// it.
func ExpectedOutcome(x scenario.Expectation) string {
	if x.Result == scenario.ResultFail {
		if x.Reason == "" {
			return "fail (any reason)"
		}
		return "fail (" + x.Reason + ")"
	}
	return string(x.Result)
}

// EventKind says what an event records.
type EventKind string

// The kinds of events steps record.
const (
	EventPolicyChange         EventKind = "policy-change"
	EventConverged            EventKind = "converged"
	EventSerial               EventKind = "serial"
	EventRootRotation         EventKind = "root-rotation"
	EventUpgrade              EventKind = "upgrade"
	EventCanaryInstalled      EventKind = "canary-installed"
	EventControlPlaneReady    EventKind = "control-plane-ready"
	EventControlPlaneUpgraded EventKind = "control-plane-upgraded"
	EventNamespacesRelabelled EventKind = "namespaces-relabelled"
	EventWorkloadsRestarted   EventKind = "workloads-restarted"
	EventRevisionRemoved      EventKind = "revision-removed"
	EventHarnessError         EventKind = "harness-error"
	EventDeadline             EventKind = "deadline"
	EventSetupPhase           EventKind = "setup-phase"
	// EventDataPlaneMove and EventDataPlaneMoved bracket a moveDataPlane
	// step's move: the pod templates patched, then every pod rolled out on
	// its new data plane.
	EventDataPlaneMove  EventKind = "data-plane-move"
	EventDataPlaneMoved EventKind = "data-plane-moved"
	// EventScenarioStarted and EventScenarioEnded bracket a scenario: with
	// whom it ran (in namespaces of its own beside others, or alone, and
	// why), so that the timeline shows which scenarios overlapped.
	EventScenarioStarted EventKind = "scenario-started"
	EventScenarioEnded   EventKind = "scenario-ended"
)

// Event is something a step did at a point in time, recorded next to the
// observations so that reports can draw timelines: a policy change, an
// upgrade phase, a certificate serial seen.
//
// An EventDeadline event carries the bound it records in Deadline. This is
// how deadlines reach the timeline, for passing and failing steps alike:
// the engine records one such event per bound when it judges the step
// (Time is then, Deadline.At the bound itself), and the report draws
// every deadline from these events. A failed step's Verdict.Deadlines
// repeats them as evidence of the failure; it is not a second source for
// the timeline.
type Event struct {
	Time     time.Time `json:"time"`
	Scenario string    `json:"scenario"`
	Step     string    `json:"step"`
	Kind     EventKind `json:"kind"`
	Detail   string    `json:"detail"`
	// Deadline is set on EventDeadline events only.
	Deadline *Deadline `json:"deadline,omitempty"`
}

// Status is a step's (or the setup's) outcome.
type Status string

// The statuses of a verdict.
const (
	Passed  Status = "passed"
	Failed  Status = "failed"
	Skipped Status = "skipped"
)

// SetupStep is the step name of the verdict of a run's setup (clusters,
// Istio, image, fixtures); its Scenario is empty.
const SetupStep = "setup"

// Verdict is what a step (or the setup) came to: passed, failed or
// skipped, why, how long it took, and the evidence a person needs to see
// why without reading logs.
type Verdict struct {
	Scenario string `json:"scenario,omitempty"` // empty for the setup
	Step     string `json:"step"`
	// Kind is the step's kind ("expect", "rotate", ...), or "setup".
	Kind     string        `json:"kind"`
	Status   Status        `json:"status"`
	Reason   string        `json:"reason,omitempty"` // the failure or skip text, whole
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"durationNs"`
	// Source is where the step is written, file:line:col.
	Source string `json:"source,omitempty"`
	// Table is an expect step's expected-vs-observed table (every row when
	// it failed; empty when it passed).
	Table []Row `json:"table,omitempty"`
	// Deadlines are the bounds a failed transition or rotation was held
	// to, met or not (a transition's "no plaintext after" and convergence,
	// a rotation's new serial). The timeline draws deadlines from
	// EventDeadline events, recorded for passing steps too; see Event.
	Deadlines []Deadline `json:"deadlines,omitempty"`
	// Diagnostics is the run-folder-relative path of the diagnostics
	// collected for a failed step, when any were.
	Diagnostics string `json:"diagnostics,omitempty"`
	// DataPlane is Observation.DataPlane for the step: empty on a real
	// data plane, else what stood in for it.
	DataPlane string `json:"dataPlane,omitempty"`
	// Failure names a failure of its own kind, which reports show before
	// every other: FailureWirePlaintext.
	Failure string `json:"failure,omitempty"`
	// EnforcedAfter is, on the first expect step after an mtls step, how
	// long after that step applied its policies each row's pair was at the
	// outcome the expect step confirmed.
	EnforcedAfter []Enforcement `json:"enforcedAfter,omitempty"`
}

// Enforcement is how long after an mtls step's apply one pair was at its
// new outcome.
type Enforcement struct {
	// Policies is the mtls step whose apply it measures.
	Policies string `json:"policies"`
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	// After is the time from the apply to the change: in a rehearsal, to
	// the configuration push after which the evaluated decision was the
	// new one (By EnforcedByPush); on a real data plane, to the first probe
	// round at the new outcome (By EnforcedByProbe, an upper bound at the
	// probing interval's resolution).
	After time.Duration `json:"afterNs"`
	By    string        `json:"by"`
	// Unchanged says the pair was at that outcome already before the
	// apply (After is then 0).
	Unchanged bool `json:"unchanged,omitempty"`
}

// The sources of an Enforcement's figure.
const (
	EnforcedByPush  = "istiod push"
	EnforcedByProbe = "first probe round"
)

func (e Enforcement) String() string {
	pair := fmt.Sprintf("%s -> %s:%d", e.From, e.To, e.Port)
	if e.Unchanged {
		return pair + " unchanged by " + e.Policies
	}
	return fmt.Sprintf("%s %s after %s (%s)", pair, e.After.Round(time.Millisecond), e.Policies, e.By)
}

// Wire verdicts (Wire.Verdict), as the witness gives them.
const (
	WireEncrypted   = "encrypted"
	WirePlaintext   = "plaintext"
	WireNotCaptured = "not-captured"
)

// Wire is what the wire witness saw of one request.
type Wire struct {
	// Verdict is encrypted (TLS records, the canary nowhere in
	// cleartext), plaintext (the canary seen in cleartext) or
	// not-captured (never counted as encrypted).
	Verdict string `json:"verdict"`
	// Detail says what the verdict rests on, or why nothing was captured.
	Detail string `json:"detail,omitempty"`
	// Packet is, for plaintext, the packet that carried the canary:
	// its addresses, ports and TCP header, tcpdump style.
	Packet string `json:"packet,omitempty"`
	// Node is the node whose witness answered, on a cluster.
	Node string `json:"node,omitempty"`
	// Unavailable: no witness could watch the request (a simulated data
	// plane, a refused witness pod, no CAP_NET_RAW): Verdict is
	// not-captured and no expectation is held against it.
	Unavailable bool `json:"unavailable,omitempty"`
}

// Witnessed reports whether a witness watched the request and saw it
// encrypted or in plaintext.
func (w *Wire) Witnessed() bool {
	return w != nil && (w.Verdict == WireEncrypted || w.Verdict == WirePlaintext)
}

// FailureWirePlaintext is the failure of its own kind (Verdict.Failure):
// a request the mesh reported as mTLS whose canary the wire witness saw in
// cleartext.
const FailureWirePlaintext = "mTLS claimed, plaintext on the wire"

// Row is one row of an expect step's table: the pair, what was expected,
// what the last round saw, the counts over the whole wait and why it did
// not match ("" when it did).
type Row struct {
	From         string `json:"from"`
	To           string `json:"to"`
	Port         int    `json:"port"`
	Expected     string `json:"expected"`
	LastObserved string `json:"lastObserved"`
	OverTheWait  string `json:"overTheWait"`
	Why          string `json:"why,omitempty"`
	// Wire counts the wire witness's verdicts over the whole wait, e.g.
	// "encrypted x9"; empty when no witness watched.
	Wire string `json:"wire,omitempty"`
}

// Deadline is a point in time a step held the mesh to, e.g. "no plaintext
// after" in a transition, and whether it was met.
type Deadline struct {
	// Name says which bound, e.g. "no plaintext after 2s".
	Name string    `json:"name"`
	At   time.Time `json:"at"`
	Met  bool      `json:"met"`
	// Detail says what was seen against it, e.g. the last plaintext
	// observation after the deadline.
	Detail string `json:"detail,omitempty"`
}

func (v Verdict) String() string {
	name := v.Step
	if v.Scenario != "" {
		name = v.Scenario + " / " + v.Step
	}
	s := fmt.Sprintf("%s: %s (%s)", name, v.Status, v.Duration.Round(time.Millisecond))
	if v.Reason != "" {
		s += ": " + v.Reason
	}
	return s
}

// Recorder receives what a run produces, as it happens. Its methods must
// be safe for concurrent use: continuous traffic records from several
// goroutines.
type Recorder interface {
	Record(Observation)
	RecordEvent(Event)
	RecordVerdict(Verdict)
}

// Discard is a Recorder that keeps nothing.
type Discard struct{}

func (Discard) Record(Observation)    {}
func (Discard) RecordEvent(Event)     {}
func (Discard) RecordVerdict(Verdict) {}
