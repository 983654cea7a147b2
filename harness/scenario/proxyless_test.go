package scenario

import (
	"strings"
	"testing"
)

const waitScenario = "scenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n"

// A proxyless workload without ports gets one gRPC port; a port named grpc
// or grpc-* is a gRPC port unless protocol says otherwise.
func TestProxylessDefaults(t *testing.T) {
	s := mustLoad(t, header+"fixtures:\n  workloads:\n  - {name: px, proxyless: true, tlsModeLabel: true}\n  - {name: sc, ports: [{name: grpc-api, number: 80}, {name: http, number: 81}]}\n"+waitScenario)
	px := s.Workload("px")
	if !px.Proxyless || !px.TLSModeLabel || !px.InMesh() {
		t.Errorf("px = %+v, want proxyless, tlsModeLabel, in the mesh", px)
	}
	if len(px.Ports) != 1 || px.Ports[0].Number != 7070 || px.Ports[0].Protocol != ProtocolGRPC {
		t.Errorf("px ports = %+v, want grpc 7070", px.Ports)
	}
	sc := s.Workload("sc")
	if sc.Proxyless || sc.Ports[0].Protocol != ProtocolGRPC || sc.Ports[1].Protocol != ProtocolHTTP {
		t.Errorf("sc = %+v, want a sidecar workload with ports grpc and http", sc)
	}
}

func TestProxylessValidation(t *testing.T) {
	for _, tc := range []struct {
		name, fixtures, path, want, at string
	}{
		{"mesh false", "  - {name: px, proxyless: true, mesh: false}\n",
			"fixtures.workloads[0].mesh", "a proxyless workload is in the mesh", "test.yaml:8:39"},
		{"label without proxyless", "  - {name: sc, tlsModeLabel: true}\n",
			"fixtures.workloads[0].tlsModeLabel", "tlsModeLabel is for proxyless workloads", "test.yaml:8:30"},
		{"http port by name", "  - name: px\n    proxyless: true\n    ports: [{name: http, number: 80}]\n",
			"fixtures.workloads[0].ports[0].name", "port http (80) has protocol http, but a proxyless workload serves gRPC only", "test.yaml:10:20"},
		{"tcp port by protocol", "  - name: px\n    proxyless: true\n    ports: [{name: grpc, number: 80, protocol: tcp}]\n",
			"fixtures.workloads[0].ports[0].protocol", "set protocol: grpc", "test.yaml:10:48"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, header+"fixtures:\n  workloads:\n"+tc.fixtures+waitScenario)
			var found *Error
			for _, e := range errs {
				if strings.Contains(e.Message, tc.want) {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("errors:\n%s\nwant one containing %q", errs, tc.want)
			}
			if found.Path != tc.path || found.Pos.String() != tc.at {
				t.Errorf("at %s %s, want %s %s", found.Pos, found.Path, tc.at, tc.path)
			}
		})
	}
}
