package rehearsal_test

import (
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/scenario"
)

// A gRPC port behind a sidecar in a file with proxyless workloads is
// refused at the port's line, since a proxyless client's call to it would
// have nothing to reach; without proxyless workloads, or on an
// out-of-mesh workload, it is rehearsed.
func TestRefuseSidecarGRPCWithProxylessClients(t *testing.T) {
	load := func(workloads string) *scenario.Suite {
		t.Helper()
		s, err := scenario.Load("f.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  workloads:
`+workloads+`scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	err := rehearsal.Refuse(load("  - {name: grpc-a, proxyless: true}\n  - name: service-a\n    ports: [{name: grpc, number: 7070}]\n"))
	if err == nil || !strings.Contains(err.Error(), "f.yaml:8:") || !strings.Contains(err.Error(), "service-a") || !strings.Contains(err.Error(), "grpc-a") {
		t.Errorf("sidecar gRPC port with a proxyless workload: %v, want a refusal at f.yaml:8 naming both", err)
	}
	for name, workloads := range map[string]string{
		"no proxyless workload": "  - name: service-a\n    ports: [{name: grpc, number: 7070}]\n",
		"out-of-mesh gRPC":      "  - {name: grpc-a, proxyless: true}\n  - name: legacy\n    mesh: false\n    ports: [{name: grpc, number: 7070}]\n",
	} {
		if err := rehearsal.Refuse(load(workloads)); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
}
