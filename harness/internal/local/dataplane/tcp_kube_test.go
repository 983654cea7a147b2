package dataplane_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// tcpSuite is suite with a TCP port, 7070, on every workload.
func tcpSuite(t *testing.T, ns, steps string) *scenario.Suite {
	t.Helper()
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 5s}
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: %s
  workloads:
  - {name: service-a, ports: [{name: http, number: 8080}, {name: echo-tcp, number: 7070, protocol: tcp}]}
  - {name: service-b, ports: [{name: http, number: 8080}, {name: echo-tcp, number: 7070, protocol: tcp}]}
  - {name: legacy, mesh: false, ports: [{name: http, number: 8080}, {name: echo-tcp, number: 7070, protocol: tcp}]}
scenarios:
- name: s
  steps:
%s`, ns, steps)
	s, err := scenario.Load("dataplane-tcp.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Over TCP the engine proves mtls with the server sidecar's statistics: a
// STRICT namespace gives mtls with both identities from
// istio_tcp_connections_opened_total, and every observation carries the
// row it was judged against.
func TestTCPStrictNamespaceWitnessedMTLS(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(11)...)
	s := tcpSuite(t, ns, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: mtls}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
    - {from: legacy, to: service-b, port: 7070, result: fail}
    - {from: service-b, to: legacy, port: 7070, result: plaintext}
`)
	errs, rec := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	o := rec.last(t, "service-a", "service-b", 7070)
	if o.Result != scenario.ResultMTLS || o.Expected != "mtls" {
		t.Fatalf("service-a -> service-b:7070 observed %s, expected %q", o.Outcome(), o.Expected)
	}
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-a"; o.ClientID != want {
		t.Errorf("client identity %q, want %q", o.ClientID, want)
	}
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"; o.ServerID != want {
		t.Errorf("server identity %q, want %q", o.ServerID, want)
	}
	if o := rec.last(t, "legacy", "service-b", 7070); o.Result != scenario.ResultFail || o.Reason != "reset" || o.Expected != "fail (any reason)" {
		t.Errorf("legacy -> service-b:7070: %s expected %q, want fail (reset) against fail (any reason)", o.Outcome(), o.Expected)
	}
	if o := rec.last(t, "service-b", "legacy", 7070); o.Result != scenario.ResultPlaintext || o.ClientID != "" || o.Expected != "plaintext" {
		t.Errorf("service-b -> legacy:7070: %s with client %q, want plaintext without identity", o.Outcome(), o.ClientID)
	}
}

// Under Istio's default PERMISSIVE, a client without sidecar reaches the
// TCP port in plaintext, and so does a client whose DestinationRule
// disables TLS; the server's sidecar counts both as such. Tables claiming
// otherwise fail with what was observed; the true table passes.
func TestTCPContradictingTableFails(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(12)...)
	s := tcpSuite(t, ns, `  - expect:
    - {from: legacy, to: service-b, port: 7070, result: fail}
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: plaintext}
  - mtls:
      destinationRules: [{workload: service-b, mode: DISABLE, port: 7070}]
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: mtls}
  - expect:
    - {from: legacy, to: service-b, port: 7070, result: plaintext}
    - {from: service-a, to: service-b, port: 7070, result: plaintext}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	errs, rec := run(t, s, newTestCA(t))
	for i, want := range map[int]string{0: "plaintext", 1: "mtls", 3: "plaintext"} {
		var xerr *engine.ExpectationError
		if !errors.As(errs[i], &xerr) {
			t.Fatalf("step %d: %v, want an expectation error", i+1, errs[i])
		}
		if table := xerr.Table(); len(table) != 1 || table[0].LastObserved != want+" x2" || !strings.HasPrefix(table[0].OverTheWait, want+" x") {
			t.Errorf("step %d: table %+v, want %s observed, and only that", i+1, table, want)
		}
	}
	if errs[2] != nil || errs[4] != nil {
		t.Fatalf("the mtls step and the true table: %v, %v", errs[2], errs[4])
	}
	o := rec.last(t, "service-a", "service-b", 7070)
	if o.Result != scenario.ResultPlaintext || o.Expected != "plaintext" || o.ClientID != "" {
		t.Errorf("service-a -> service-b:7070 under DISABLE: %s (expected %q, client %q)", o.Outcome(), o.Expected, o.ClientID)
	}
}

// connectionSneaker is the simulated data plane with someone else's
// connection slipped into the witness window: after each TCP probe from
// service-a, a plaintext connection from legacy reaches the same server
// before the harness reads the counts again.
type connectionSneaker struct {
	*dataplane.Execer
	ns string
}

func (c *connectionSneaker) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	stdout, stderr, err := c.Execer.Exec(ctx, cmd)
	if err == nil && cmd.Pod.Name == "service-a-0" && strings.Contains(string(cmd.Stdin), "tcp://") {
		sneak := probe.Command{Pod: results.Pod{Namespace: c.ns, Name: "legacy-0"}, Container: manifests.ContainerName,
			Argv: []string{image.BinaryPath, "probe"}, Stdin: fmt.Appendf(nil, `{"targets":[{"name":"x","url":"tcp://service-b.%s.svc.cluster.local:7070"}]}`, c.ns)}
		if _, _, err := c.Execer.Exec(ctx, sneak); err != nil {
			return nil, nil, err
		}
	}
	return stdout, stderr, err
}

// A connection the harness did not make, counted in the window, makes the
// counts ambiguous: the observation is fail (no-witness), which not even
// a fail row accepts.
func TestTCPWitnessRefusesToGuess(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(13)...)
	s := tcpSuite(t, ns, `  - expect:
    - {from: service-a, to: service-b, port: 7070, result: mtls}
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: fail}
`)
	errs, rec := runWith(t, s, &connectionSneaker{Execer: dataplane.New(env.Client, newTestCA(t)), ns: ns})
	for i := range errs {
		if errs[i] == nil || !strings.Contains(errs[i].Error(), "fail (no-witness)") {
			t.Fatalf("step %d: %v, want the unwitnessed connections counted", i+1, errs[i])
		}
	}
	o := rec.last(t, "service-a", "service-b", 7070)
	if o.Result != scenario.ResultFail || o.Reason != engine.ReasonNoWitness || o.Expected != "fail (any reason)" ||
		!strings.Contains(o.Error, "more than one kind") || !strings.Contains(o.Error, "mutual_tls") {
		t.Errorf("observed %s (expected %q, error %q), want fail (no-witness) naming the counts", o.Outcome(), o.Expected, o.Error)
	}
}

// The statistics the simulated sidecar serves are Envoy's Prometheus text
// as the harness's reader reads it.
func TestStatsAnswerParses(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(14)...)
	dp := dataplane.New(env.Client, newTestCA(t))
	server := results.Pod{Namespace: ns, Name: "service-b-0"}
	r := probe.NewStatsReader(dp)
	before, err := r.InboundTCP(context.Background(), server)
	if err != nil || before.Total() != 0 {
		t.Fatalf("a fresh sidecar: %v, %v", before, err)
	}
	spec := fmt.Sprintf(`{"targets":[{"name":"b","url":"tcp://service-b.%s.svc.cluster.local:7070"}],"requestsPerTarget":3}`, ns)
	for _, from := range []string{"service-a-0", "legacy-0"} {
		if _, _, err := dp.Exec(context.Background(), probe.Command{Pod: results.Pod{Namespace: ns, Name: from}, Container: manifests.ContainerName,
			Argv: []string{image.BinaryPath, "probe"}, Stdin: []byte(spec)}); err != nil {
			t.Fatal(err)
		}
	}
	stdout, _, err := dp.Exec(context.Background(), probe.Command{Pod: server, Container: "istio-proxy", Argv: []string{"pilot-agent", "request", "GET", probe.StatsPath}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(stdout), "# TYPE istio_tcp_connections_opened_total counter\nistio_tcp_connections_opened_total{reporter=\"destination\",source_workload=") {
		t.Errorf("statistics do not look like Envoy's:\n%s", stdout)
	}
	after, err := r.InboundTCP(context.Background(), server)
	if err != nil {
		t.Fatal(err)
	}
	if after.Total() != 6 || len(after) != 2 {
		t.Fatalf("counts %v, want 3 mutual_tls and 3 none", after)
	}
}

// Continuous traffic over TCP: two clients probe the same server port at
// once through a transition to STRICT. The witness windows of one server
// are taken in turn, so neither client's connections spoil the other's
// counts: service-a is mtls throughout, legacy plaintext until the change
// and refused after it, and nothing is left unwitnessed.
func TestTCPTransitionUnderConcurrentTraffic(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(15)...)
	s := tcpSuite(t, ns, `  - transition:
      to:
        peerAuthentications: [{scope: namespace, mode: STRICT}]
      observe: 2s
      noPlaintextAfter: 1500ms
      traffic:
        every: 100ms
        maxFailures: 1000
        pairs:
        - {from: service-a, to: service-b, port: 7070}
        - {from: legacy, to: service-b, port: 7070}
    timeout: 30s
`)
	errs, rec := run(t, s, newTestCA(t))
	if errs[0] != nil {
		t.Fatalf("transition: %v", errs[0])
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	seen := map[string]int{}
	for _, o := range rec.obs {
		if o.Reason == engine.ReasonNoWitness {
			t.Fatalf("%s -> %s:%d unwitnessed: %s", o.From, o.To, o.Port, o.Error)
		}
		if o.Expected == "" {
			t.Errorf("%s -> %s:%d at %s carries no expectation", o.From, o.To, o.Port, o.Time)
		}
		seen[o.From+" "+o.Outcome()]++
	}
	if seen["service-a mtls"] == 0 || seen["legacy plaintext"] == 0 || seen["legacy fail (reset)"] == 0 {
		t.Fatalf("observed %v, want service-a mtls, legacy plaintext before the change and reset after", seen)
	}
	for k := range seen {
		if strings.HasPrefix(k, "service-a ") && k != "service-a mtls" {
			t.Errorf("service-a observed %s (%v)", k, seen)
		}
	}
}
