package dataplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// grpcSuite has a grpc port, 7070, on sidecar workloads service-a and
// service-b and on legacy outside the mesh, and the proxyless workload
// grpc-b (its default port, grpc 7070); its fixtures are stored as
// meshproof renders them (deployRendered), so the Services say appProtocol
// grpc and grpc-b's pod is what Istio's grpc-agent template injects.
func grpcSuite(t *testing.T, net int, steps string) (*scenario.Suite, string) {
	t.Helper()
	ns := namespaceFor(t)
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 5s}
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: %s
  workloads:
  - {name: service-a, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: service-b, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: legacy, mesh: false, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: grpc-b, proxyless: true}
scenarios:
- name: s
  steps:
%s`, ns, steps)
	s, err := scenario.Load("dataplane-grpc.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	deployRendered(t, s, fmt.Sprintf("10.%d.0.1", net), fmt.Sprintf("10.%d.0.2", net), fmt.Sprintf("10.%d.0.3", net), fmt.Sprintf("10.%d.0.4", net))
	return s, ns
}

func spiffe(ns, sa string) string { return "spiffe://cluster.local/ns/" + ns + "/sa/" + sa }

// A grpc port behind a sidecar decides as HTTP does, and the engine judges
// the gRPC results the probe would print: under STRICT, mtls with both
// identities from the XFCC header the server's sidecar added, a client
// without sidecar reset; a DestinationRule DISABLE towards it the client
// sidecar's 503.
func TestGRPCBehindSidecarThroughTheEngine(t *testing.T) {
	s, ns := grpcSuite(t, 51, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: mtls}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
    - {from: legacy, to: service-b, port: 7070, result: fail, reason: reset}
    - {from: service-b, to: legacy, port: 7070, result: plaintext}
  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
      destinationRules: [{workload: service-b, mode: DISABLE}]
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: fail, reason: upstream-503}
`)
	errs, rec := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	// The observations of step 2, the rows under STRICT.
	var strict []results.Observation
	for _, o := range rec.obs {
		if o.Step == s.Scenarios[0].Steps[1].Name {
			strict = append(strict, o)
		}
	}
	find := func(from, to string, port int) results.Observation {
		for _, o := range strict {
			if o.From == from && o.To == to && o.Port == port {
				return o
			}
		}
		t.Fatalf("no observation of %s -> %s:%d under STRICT", from, to, port)
		return results.Observation{}
	}
	if o := find("service-a", "service-b", 7070); o.Result != scenario.ResultMTLS || o.ClientID != spiffe(ns, "service-a") || o.ServerID != spiffe(ns, "service-b") {
		t.Errorf("service-a -> service-b:7070: %s client %q server %q, want mtls from service-a via service-b's sidecar", o.Outcome(), o.ClientID, o.ServerID)
	}
	if o := find("legacy", "service-b", 7070); o.Result != scenario.ResultFail || o.Reason != echoapi.ReasonReset || !strings.Contains(o.Error, "rpc error: code = Unavailable") {
		t.Errorf("legacy -> service-b:7070: %s (%q), want a gRPC call reset", o.Outcome(), o.Error)
	}
	if o := find("service-b", "legacy", 7070); o.Result != scenario.ResultPlaintext || o.ClientID != "" || o.ServerID != "" {
		t.Errorf("service-b -> legacy:7070: %s client %q server %q, want plaintext without identities", o.Outcome(), o.ClientID, o.ServerID)
	}
	if o := rec.last(t, "service-a", "service-b", 7070); o.Result != scenario.ResultFail || o.Reason != echoapi.ReasonUpstream503 || o.Expected != "fail (upstream-503)" {
		t.Errorf("service-a -> service-b:7070 under DISABLE: %s expected %q, want fail (upstream-503)", o.Outcome(), o.Expected)
	}
}

// A table the stored policies contradict on a grpc row fails the step with
// what was observed and why.
func TestGRPCContradictedRowFails(t *testing.T) {
	s, _ := grpcSuite(t, 52, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: service-b, port: 7070, result: plaintext}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	errs, _ := run(t, s, newTestCA(t))
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	var xerr *engine.ExpectationError
	if !errors.As(errs[1], &xerr) {
		t.Fatalf("step 2: %v, want an expectation error", errs[1])
	}
	table := xerr.Table()
	if len(table) != 2 {
		t.Fatalf("table %+v, want both rows", table)
	}
	if r := table[0]; r.Port != 7070 || r.Expected != "plaintext" || r.LastObserved != "mtls x2" || r.Why != "got mtls" {
		t.Errorf("grpc row %+v, want plaintext expected, mtls x2 observed, why \"got mtls\"", r)
	}
	if r := table[1]; r.Why != "" {
		t.Errorf("http row %+v, want it to hold", r)
	}
	if !strings.Contains(errs[1].Error(), "service-a  service-b  7070  plaintext  mtls x2") {
		t.Errorf("the error does not show the grpc row as a table line:\n%v", errs[1])
	}
}

// Towards a proxyless server the oracle's proxyless rules decide: under
// PERMISSIVE without the tlsMode label grpc-go serves plaintext and a
// client sidecar's auto mTLS sends plaintext; under STRICT a sidecar
// client needs ISTIO_MUTUAL, and then the mtls row shows the client's
// identity grpc-go saw in its certificate and no proxy's; a client without
// sidecar finds the connection closed. The proxyless workload's own HTTP
// leaves as from outside the mesh: plaintext, then reset under STRICT.
func TestGRPCProxylessServerThroughTheEngine(t *testing.T) {
	s, ns := grpcSuite(t, 53, `  - expect:
    - {from: service-a, to: grpc-b, port: 7070, result: plaintext}
    - {from: legacy, to: grpc-b, port: 7070, result: plaintext}
    - {from: grpc-b, to: service-b, port: 8080, result: plaintext}
  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: grpc-b, port: 7070, result: fail, reason: upstream-503}
    - {from: legacy, to: grpc-b, port: 7070, result: fail}
    - {from: grpc-b, to: service-b, port: 8080, result: fail, reason: reset}
  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
      destinationRules: [{workload: grpc-b, mode: ISTIO_MUTUAL}]
  - expect:
    - {from: service-a, to: grpc-b, port: 7070, result: mtls}
`)
	errs, rec := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	o := rec.last(t, "service-a", "grpc-b", 7070)
	if o.Result != scenario.ResultMTLS || o.ClientID != spiffe(ns, "service-a") || o.ServerID != "" {
		t.Errorf("service-a -> grpc-b:7070: %s client %q server %q, want mtls with service-a's identity and no proxy's", o.Outcome(), o.ClientID, o.ServerID)
	}
}

// The simulation never stands in for grpc-go: a gRPC call from a
// proxyless pod, an xds:/// or grpcs:// target from any pod, Envoy's admin
// or a handshake in a proxyless pod, and a call in a protocol the port
// does not serve are refused, not answered.
func TestGRPCUnsimulatedCommandsAreRefused(t *testing.T) {
	s, ns := grpcSuite(t, 54, "  - wait: {duration: 1ms}\n")
	_ = s
	dp := dataplane.New(env.Client, newTestCA(t))
	probeIn := func(pod string, targets ...echoapi.Target) probe.Command {
		spec, err := json.Marshal(echoapi.ProbeSpec{Targets: targets})
		if err != nil {
			t.Fatal(err)
		}
		return probe.Command{Pod: results.Pod{Namespace: ns, Name: pod}, Container: manifests.ContainerName, Argv: []string{image.BinaryPath, "probe"}, Stdin: spec}
	}
	host := func(svc string) string { return svc + "." + ns + ".svc.cluster.local:7070" }
	cases := map[string]struct {
		cmd  probe.Command
		says string
	}{
		"grpc from a proxyless pod": {probeIn("grpc-b-0", echoapi.Target{Name: "b", URL: "grpc://" + host("service-b")}), "proxyless gRPC pod"},
		"xds from a proxyless pod":  {probeIn("grpc-b-0", echoapi.Target{Name: "b", URL: "xds:///" + host("service-b")}), "xDS target"},
		"xds target":                {probeIn("service-a-0", echoapi.Target{Name: "b", URL: "xds:///" + host("grpc-b")}), "xDS target"},
		"grpcs target":              {probeIn("service-a-0", echoapi.Target{Name: "b", URL: "grpcs://" + host("service-b")}), "certificate files"},
		"http to a grpc port":       {probeIn("service-a-0", echoapi.Target{Name: "b", URL: "http://" + host("service-b") + "/"}), "which serves grpc"},
		"grpc to an http port":      {probeIn("service-a-0", echoapi.Target{Name: "b", URL: "grpc://service-b." + ns + ".svc.cluster.local:8080"}), "which serves http"},
		"pilot-agent in a proxyless pod": {probe.Command{Pod: results.Pod{Namespace: ns, Name: "grpc-b-0"}, Container: "istio-proxy",
			Argv: []string{"pilot-agent", "request", "GET", "config_dump"}}, "proxyless gRPC pod"},
		"handshake with a proxyless pod": {probe.Command{Pod: results.Pod{Namespace: ns, Name: "legacy-0"}, Container: manifests.ContainerName,
			Argv: []string{image.BinaryPath, "peercert", "--addr", "10.54.0.4:7070"}}, "proxyless gRPC pod"},
	}
	for name, c := range cases {
		stdout, stderr, err := dp.Exec(context.Background(), c.cmd)
		var execErr *probe.ExecError
		if !errors.As(err, &execErr) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "does not answer") {
			t.Errorf("%s: %v, want an ExecError that says it does not answer (%s)", name, err, c.says)
		}
		if len(stdout) != 0 || !strings.Contains(string(stderr), dataplane.Label) {
			t.Errorf("%s: stdout %q stderr %q, want nothing answered and the label", name, stdout, stderr)
		}
	}
}

// labelling says on every probe result what answered it, as a rehearsal's
// transport does for the results its real proxyless processes produce.
type labelling struct {
	probe.Execer
	label string
}

func (l labelling) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	stdout, stderr, err := l.Execer.Exec(ctx, cmd)
	if err != nil || len(cmd.Argv) != 2 || cmd.Argv[1] != "probe" {
		return stdout, stderr, err
	}
	res, err := echoapi.DecodeResults(bytes.NewReader(stdout))
	if err != nil {
		return nil, stderr, err
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	for _, r := range res {
		r.DataPlane = l.label
		if err := enc.Encode(r); err != nil {
			return nil, stderr, err
		}
	}
	return out.Bytes(), stderr, nil
}

// What a transport says answered a result reaches its observation, gRPC,
// HTTP and TCP alike.
func TestResultDataPlaneReachesTheObservation(t *testing.T) {
	const label = "rehearsal: data plane real (proxyless gRPC): test"
	s, _ := grpcSuite(t, 55, `  - expect:
    - {from: service-a, to: service-b, port: 7070, result: mtls}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	errs, rec := runWith(t, s, labelling{Execer: dataplane.New(env.Client, newTestCA(t)), label: label})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if len(rec.obs) == 0 {
		t.Fatal("nothing observed")
	}
	for _, o := range rec.obs {
		if o.DataPlane != label {
			t.Errorf("%s -> %s:%d: data plane %q, want the transport's %q", o.From, o.To, o.Port, o.DataPlane, label)
		}
	}
}
