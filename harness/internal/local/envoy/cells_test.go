package envoy_test

import (
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The namespace and fixtures the captures were taken with: two sidecar
// workloads and one without, each serving HTTP on Service port 80
// (container port 8080), TCP on 9000 (19000) and gRPC on 7070.
const captureNamespace = "envoy"

func captureWorkloads() []manifests.Workload {
	ports := []manifests.Port{
		{Name: "http", Number: 80, TargetPort: 8080, Protocol: manifests.ProtocolHTTP},
		{Name: "tcp-echo", Number: 9000, TargetPort: 19000, Protocol: manifests.ProtocolTCP},
		{Name: "grpc", Number: 7070, Protocol: manifests.ProtocolGRPC},
	}
	var out []manifests.Workload
	for _, w := range manifests.StandardWorkloads(captureNamespace) {
		w.Ports = ports
		out = append(out, w)
	}
	return out
}

// captureCell is one policy set the captures hold.
type captureCell struct {
	name     string
	policies *scenario.MTLSStep
}

func pa(scope scenario.PolicyScope, mode scenario.MTLSMode, ports ...scenario.PortMode) scenario.PeerAuthentication {
	p := scenario.PeerAuthentication{Scope: scope, Mode: mode, Ports: ports}
	switch scope {
	case scenario.ScopeMesh:
		p.Namespace = scenario.IstioRootNamespace
	case scenario.ScopeNamespace:
		p.Namespace = captureNamespace
	case scenario.ScopeWorkload:
		p.Namespace, p.Workload = captureNamespace, "service-b"
	}
	return p
}

func dr(scope scenario.DestinationRuleScope, mode scenario.TLSMode) scenario.DestinationRule {
	d := scenario.DestinationRule{Scope: scope, Mode: mode}
	if scope == scenario.DRScopeWorkload {
		d.Workload = "service-b"
	}
	return d
}

// captureCells are the policy sets whose configurations the unit tests
// evaluate.
var captureCells = []captureCell{
	{"default", &scenario.MTLSStep{}},
	{"namespace STRICT", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeStrict)}}},
	{"namespace STRICT, DR DISABLE", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeStrict)},
		DestinationRules: []scenario.DestinationRule{dr(scenario.DRScopeWorkload, scenario.TLSDisable)}}},
	{"namespace STRICT, DR SIMPLE", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeStrict)},
		DestinationRules: []scenario.DestinationRule{dr(scenario.DRScopeWorkload, scenario.TLSSimple)}}},
	{"namespace DISABLE", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeDisable)}}},
	{"namespace PERMISSIVE, workload DISABLE, port 19000 STRICT", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{
		pa(scenario.ScopeNamespace, scenario.ModePermissive), pa(scenario.ScopeWorkload, scenario.ModeDisable, scenario.PortMode{Port: 19000, Mode: scenario.ModeStrict})}}},
	{"mesh PERMISSIVE, namespace DISABLE, workload STRICT", &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{
		pa(scenario.ScopeMesh, scenario.ModePermissive), pa(scenario.ScopeNamespace, scenario.ModeDisable), pa(scenario.ScopeWorkload, scenario.ModeStrict)}}},
	{"mesh DR ISTIO_MUTUAL", &scenario.MTLSStep{DestinationRules: []scenario.DestinationRule{dr(scenario.DRScopeMesh, scenario.TLSIstioMutual)}}},
}
