package engine

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/scenario"
)

// grpcSuite has sidecar workloads with a grpc port, a proxyless one and
// one outside the mesh, in namespace meshproof (the identities of the
// echo's samples).
func grpcSuite(t *testing.T) *scenario.Suite {
	t.Helper()
	s, err := scenario.Load("grpc.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: meshproof
  workloads:
  - {name: service-a, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: service-b, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: grpc-a, proxyless: true}
  - {name: grpc-b, proxyless: true}
  - {name: legacy, mesh: false, ports: [{name: grpc, number: 7070}]}
scenarios:
- {name: s, steps: [{wait: {duration: 1s}}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A grpc port is called with gRPC: through xDS from a proxyless client,
// plainly from any other; HTTP keeps its URL, from a proxyless client too.
func TestGRPCTargets(t *testing.T) {
	e := &Engine{suite: grpcSuite(t)}
	for _, c := range []struct {
		from, to string
		port     int
		want     string
	}{
		{"grpc-a", "grpc-b", 7070, "xds:///grpc-b.meshproof.svc.cluster.local:7070"},
		{"grpc-a", "service-b", 7070, "xds:///service-b.meshproof.svc.cluster.local:7070"},
		{"service-a", "grpc-b", 7070, "grpc://grpc-b.meshproof.svc.cluster.local:7070"},
		{"legacy", "service-b", 7070, "grpc://service-b.meshproof.svc.cluster.local:7070"},
		{"grpc-a", "service-b", 8080, "http://service-b.meshproof.svc.cluster.local:8080/"},
		{"service-a", "service-b", 8080, "http://service-b.meshproof.svc.cluster.local:8080/"},
	} {
		got := e.target(scenario.Expectation{From: c.from, To: c.to, Port: c.port})
		if got.URL != c.want || got.Name != targetName(c.to, c.port) || got.Port != c.port {
			t.Errorf("%s -> %s:%d: %+v, want URL %s", c.from, c.to, c.port, got, c.want)
		}
	}
}

// The echo probe's own output for two mTLS calls (fixtures/echo's
// TestGRPCResultSamples keeps the file what the probe prints): one whose
// server, like a proxyless one, terminated mTLS itself and reports the
// client certificate, one through a server sidecar's XFCC. An mtls row to
// a proxyless server holds with the client's identity and no proxy's; one
// to a sidecar server needs its sidecar's identity too; neither result
// passes for the other kind of server or another client.
func TestGRPCMTLSIdentities(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "..", "fixtures", "echo", "echoapi", "testdata", "grpc-results.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	samples, err := echoapi.DecodeResults(f)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]echoapi.ProbeResult{}
	for _, r := range samples {
		byName[r.Target] = r
	}
	proxylessResult, sidecarResult := byName["proxyless-mtls"], byName["sidecar-mtls"]
	if proxylessResult.Target == "" || sidecarResult.Target == "" {
		t.Fatalf("samples %+v lack a proxyless or a sidecar result", samples)
	}
	e := &Engine{suite: grpcSuite(t)}
	const td = "cluster.local"
	for _, c := range []struct {
		name     string
		res      echoapi.ProbeResult
		from, to string
		want     string
	}{
		{"proxyless server, its client", proxylessResult, "service-a", "grpc-b", ""},
		{"proxyless server, another client", proxylessResult, "legacy", "grpc-b", `mtls with client identity "spiffe://cluster.local/ns/meshproof/sa/service-a", want "spiffe://cluster.local/ns/meshproof/sa/legacy"`},
		{"sidecar server without its sidecar's identity", proxylessResult, "service-a", "service-b", `mtls with server identity "", want "spiffe://cluster.local/ns/meshproof/sa/service-b"`},
		{"sidecar server, its client", sidecarResult, "service-a", "service-b", ""},
		{"proxyless server behind a proxy", sidecarResult, "service-a", "grpc-b", `mtls terminated by a proxy with identity "spiffe://cluster.local/ns/meshproof/sa/service-b", want grpc-go of the proxyless server (spiffe://cluster.local/ns/meshproof/sa/grpc-b) to terminate it`},
	} {
		x := scenario.Expectation{From: c.from, To: c.to, Port: 7070, Result: scenario.ResultMTLS}
		o := observation(time.Now(), "s", "look", c.from, x, c.from+"-0", c.res)
		if got := mismatch(x, e.expectedIDs(x, td), o); got != c.want {
			t.Errorf("%s: mismatch %q, want %q", c.name, got, c.want)
		}
	}
	o := observation(time.Now(), "s", "look", "service-a", scenario.Expectation{To: "grpc-b", Port: 7070}, "service-a-0", proxylessResult)
	if o.ClientID != "spiffe://cluster.local/ns/meshproof/sa/service-a" || o.ServerID != "" || o.Result != scenario.ResultMTLS {
		t.Errorf("proxyless observation: %s client %q server %q, want mtls with the certificate's identity and no server's", o.Outcome(), o.ClientID, o.ServerID)
	}
}

// Proxyless workloads and grpc ports run; only the steps that read a
// proxyless pod's certificate from Envoy are refused, at their line.
func TestUnsupportedIsOnlyCertificateStepsWithProxyless(t *testing.T) {
	if err := Unsupported(grpcSuite(t)); err != nil {
		t.Errorf("a suite of gRPC ports and proxyless workloads: %v", err)
	}
	s := grpcSuite(t)
	s.Scenarios[0].Steps = append(s.Scenarios[0].Steps,
		scenario.Step{Name: "rotate b", Rotate: &scenario.RotateStep{Workload: "service-b"}},
		scenario.Step{Name: "rotate grpc-b", Rotate: &scenario.RotateStep{Workload: "grpc-b"}})
	err := Unsupported(s)
	if err == nil || !strings.Contains(err.Error(), `steps[`+strconv.Itoa(len(s.Scenarios[0].Steps)-1)+`].rotate.workload: workload "grpc-b" is proxyless gRPC, and a rotate step needs to read the certificate it serves`) ||
		strings.Count(err.Error(), "rotate.workload") != 1 {
		t.Errorf("rotating a sidecar and a proxyless workload: %v, want the proxyless one refused only", err)
	}
}
