package scenario

import (
	"strings"
	"testing"
)

// echoLike is Istio's echo shape: Service port 80 forwarded to container
// port 18080, and a tcp port named by its prefix.
const echoLike = header + `fixtures:
  workloads:
  - name: client
  - name: server
    ports:
    - {name: http, number: 80, targetPort: 18080}
    - {name: tcp-echo, number: 9000, targetPort: 19000}
    - {name: raw, number: 7070, protocol: tcp}
  - name: legacy
    mesh: false
`

func TestPortShapesLoad(t *testing.T) {
	s := mustLoad(t, echoLike+`scenarios:
- name: s
  steps:
  - mtls:
      peerAuthentications:
      - {scope: workload, workload: server, mode: STRICT, ports: [{port: 18080, mode: DISABLE}, {port: 7070, mode: PERMISSIVE}]}
      destinationRules:
      - {workload: server, mode: ISTIO_MUTUAL, port: 80}
  - expect:
    - {from: client, to: server, port: 80, result: plaintext}
    - {from: client, to: server, port: 9000, result: mtls}
    - {from: legacy, to: server, port: 9000, result: fail, reason: reset}
`)
	server := s.Workload("server")
	want := []Port{
		{Name: "http", Number: 80, TargetPort: 18080, Protocol: ProtocolHTTP},
		{Name: "tcp-echo", Number: 9000, TargetPort: 19000, Protocol: ProtocolTCP},
		{Name: "raw", Number: 7070, Protocol: ProtocolTCP},
	}
	for i, w := range want {
		got := server.Ports[i]
		if got.Name != w.Name || got.Number != w.Number || got.TargetPort != w.TargetPort || got.Protocol != w.Protocol {
			t.Errorf("port %d = %+v, want %+v", i, got, w)
		}
	}
	if got := server.Ports[2].Target(); got != 7070 {
		t.Errorf("target of a port without targetPort = %d, want its number 7070", got)
	}
	if p := s.Workload("client").Ports[0]; p.Protocol != ProtocolHTTP {
		t.Errorf("default port protocol = %q, want http", p.Protocol)
	}
	if first := s.Scenarios[0].Steps[1].Expect.Table[0]; first.Port != 80 {
		t.Errorf("row port = %d", first.Port)
	}
}

func TestPortShapeRefusals(t *testing.T) {
	scenario := func(steps string) string { return echoLike + "scenarios:\n- name: s\n  steps:\n  - " + steps + "\n" }
	for _, tc := range []struct {
		name, src, path, want string
	}{
		{"PA port is a Service port", scenario("{mtls: {peerAuthentications: [{scope: workload, workload: server, mode: STRICT, ports: [{port: 80, mode: DISABLE}]}]}}"),
			"scenarios[0].steps[0].mtls.peerAuthentications[0].ports[0].port",
			`workload "server" has no container port 80; its container ports are 18080, 19000, 7070; 80 is the Service port of http, whose container port is 18080, and Istio matches PeerAuthentication port-level modes against the container port: use 18080`},
		{"DR port is a container port", scenario("{mtls: {destinationRules: [{workload: server, mode: DISABLE, port: 18080}]}}"),
			"scenarios[0].steps[0].mtls.destinationRules[0].port",
			`workload "server" has no Service port 18080; its ports are 80, 9000, 7070; 18080 is the container port behind Service port 80 (http), and a DestinationRule's port names the Service port: use 80`},
		{"expect port is a container port", scenario("{expect: [{from: client, to: server, port: 19000, result: mtls}]}"),
			"scenarios[0].steps[0].expect[0].port", "a probe names the Service port: use 9000"},
		{"traffic pair port is a container port", scenario("{transition: {to: {}, traffic: {pairs: [{from: client, to: server, port: 18080}]}}}"),
			"scenarios[0].steps[0].transition.traffic.pairs[0].port", "use 80"},
		{"HTTP reason on a tcp port", scenario("{expect: [{from: client, to: server, port: 9000, result: fail, reason: upstream-503}]}"),
			"scenarios[0].steps[0].expect[0].reason", "port 9000 of workload \"server\" is tcp: no HTTP status answers a TCP connection"},
		{"HTTP status on a tcp port", scenario("{expect: [{from: client, to: server, port: 7070, result: fail, reason: http-503}]}"),
			"scenarios[0].steps[0].expect[0].reason", "reason http-503 cannot be observed"},
		{"unknown protocol", header + "fixtures: {workloads: [{name: w, ports: [{name: web, number: 80, protocol: udp}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[0].protocol", `unknown value "udp"; want one of http, tcp, grpc`},
		{"name selects a protocol echo does not serve", header + "fixtures: {workloads: [{name: w, ports: [{name: mongo-db, number: 80}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[0].name", `Istio reads protocol mongo from the port name "mongo-db", which the echo server does not serve`},
		{"grpc-web prefix", header + "fixtures: {workloads: [{name: w, ports: [{name: grpc-webui, number: 80}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[0].name", "Istio reads protocol grpc-web"},
		{"two ports on one container port", header + "fixtures: {workloads: [{name: w, ports: [{name: http, number: 80, targetPort: 8080}, {name: http-b, number: 8080}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[1].targetPort", "container port 8080 is the target of another port too"},
		{"target port in Istio's range", header + "fixtures: {workloads: [{name: w, ports: [{name: http, number: 80, targetPort: 15006}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[0].targetPort", "port 15006 is in the range 15000-15090"},
		{"target port out of range", header + "fixtures: {workloads: [{name: w, ports: [{name: http, number: 80, targetPort: 70000}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].ports[0].targetPort", "port 70000 is out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			var found *Error
			for _, e := range errs {
				if strings.Contains(e.Message, tc.want) {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
			if found.Path != tc.path {
				t.Errorf("path = %q, want %q", found.Path, tc.path)
			}
			if !found.Pos.IsValid() {
				t.Errorf("error without a position: %v", found)
			}
		})
	}
}

// A port named for a protocol the echo server does not serve is fine once
// protocol says what it serves: appProtocol takes precedence in Istio.
func TestExplicitProtocolOverridesName(t *testing.T) {
	s := mustLoad(t, header+"fixtures: {workloads: [{name: w, ports: [{name: grpc-api, number: 80, protocol: tcp}, {name: tcp-x, number: 81, protocol: http}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n")
	if got := s.Workload("w").Ports[0].Protocol; got != ProtocolTCP {
		t.Errorf("protocol = %q, want tcp", got)
	}
	if got := s.Workload("w").Ports[1].Protocol; got != ProtocolHTTP {
		t.Errorf("protocol = %q, want http (written, over the name's tcp)", got)
	}
}

func TestNameProtocol(t *testing.T) {
	for name, want := range map[string]string{
		"http": "http", "http-alt": "http", "HTTP-x": "http", "httpx": "", "tcp": "tcp", "tcp-echo": "tcp",
		"grpc": "grpc", "grpc-web": "grpc-web", "grpc-webx": "grpc-web", "grpc-x": "grpc", "http2-a": "http2",
		"tls-x": "tls", "raw": "", "": "",
	} {
		if got := NameProtocol(name); got != want {
			t.Errorf("NameProtocol(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestMeshWideDestinationRule(t *testing.T) {
	s := mustLoad(t, echoLike+`scenarios:
- name: s
  steps:
  - mtls:
      destinationRules:
      - {scope: mesh, mode: ISTIO_MUTUAL}
      - {scope: mesh, mode: DISABLE, port: 9000}
      - {workload: server, mode: DISABLE}
`)
	drs := s.Scenarios[0].Steps[0].MTLS.DestinationRules
	if drs[0].Scope != DRScopeMesh || drs[2].Scope != DRScopeWorkload {
		t.Errorf("scopes = %q, %q; want mesh, and workload by default", drs[0].Scope, drs[2].Scope)
	}
	if got := s.Scenarios[0].Steps[0].MTLS.Summary(); got != "DR mesh ISTIO_MUTUAL, DR mesh DISABLE, DR server DISABLE" {
		t.Errorf("summary = %q", got)
	}
	scenario := func(rules string) string {
		return echoLike + "scenarios:\n- name: s\n  steps:\n  - {mtls: {destinationRules: " + rules + "}}\n"
	}
	for _, tc := range []struct {
		name, src, path, want string
	}{
		{"mesh rule with a workload", scenario("[{scope: mesh, workload: server, mode: DISABLE}]"),
			"scenarios[0].steps[0].mtls.destinationRules[0].workload", `a mesh-wide DestinationRule (host "*" in istio-system) names every service, not a workload`},
		{"two mesh rules", scenario("[{scope: mesh, mode: DISABLE}, {scope: mesh, mode: ISTIO_MUTUAL}]"),
			"scenarios[0].steps[0].mtls.destinationRules[1]", "a second destination rule for the same mesh and port"},
		{"mesh rule on a port nobody serves", scenario("[{scope: mesh, mode: DISABLE, port: 19000}]"),
			"scenarios[0].steps[0].mtls.destinationRules[0].port", "no workload has Service port 19000, so the rule's port-level setting would apply to nothing; the Service ports are 8080, 9090, 80, 9000, 7070; 19000 is the container port behind server's Service port 9000"},
		{"workload rule without workload", scenario("[{mode: DISABLE}]"),
			"scenarios[0].steps[0].mtls.destinationRules[0]", "a workload DestinationRule needs workload (or scope: mesh for every service)"},
		{"unknown scope", scenario("[{scope: namespace, mode: DISABLE}]"),
			"scenarios[0].steps[0].mtls.destinationRules[0].scope", `unknown value "namespace"; want one of workload, mesh`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			var found *Error
			for _, e := range errs {
				if strings.Contains(e.Message, tc.want) {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
			if found.Path != tc.path {
				t.Errorf("path = %q, want %q", found.Path, tc.path)
			}
			if !found.Pos.IsValid() {
				t.Errorf("error without a position: %v", found)
			}
		})
	}
}
