package oracle

import (
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// testSuite has the default fixtures (service-a, service-b in the mesh,
// legacy out of it, all in namespace meshproof) plus other-ns, a workload in
// the mesh in a second namespace.
func testSuite() *scenario.Suite {
	inMesh, outOfMesh := true, false
	ports := scenario.DefaultPorts()
	return &scenario.Suite{Fixtures: scenario.Fixtures{
		Namespace: "meshproof",
		Workloads: []scenario.Workload{
			{Name: "service-a", Namespace: "meshproof", ServiceAccount: "service-a", Mesh: &inMesh, Ports: ports},
			{Name: "service-b", Namespace: "meshproof", ServiceAccount: "service-b", Mesh: &inMesh, Ports: ports},
			{Name: "legacy", Namespace: "meshproof", ServiceAccount: "legacy", Mesh: &outOfMesh, Ports: ports},
			{Name: "other-ns", Namespace: "other", ServiceAccount: "other-ns", Mesh: &inMesh, Ports: ports},
		},
	}}
}

const (
	strict     = scenario.ModeStrict
	permissive = scenario.ModePermissive
	disable    = scenario.ModeDisable
	unset      = scenario.ModeUnset

	istioMutual = scenario.TLSIstioMutual
	tlsDisable  = scenario.TLSDisable

	mtls      = scenario.ResultMTLS
	plaintext = scenario.ResultPlaintext
	fail      = scenario.ResultFail
)

func mesh(mode scenario.MTLSMode) scenario.PeerAuthentication {
	return scenario.PeerAuthentication{Scope: scenario.ScopeMesh, Namespace: scenario.IstioRootNamespace, Mode: mode}
}

func namespace(ns string, mode scenario.MTLSMode) scenario.PeerAuthentication {
	return scenario.PeerAuthentication{Scope: scenario.ScopeNamespace, Namespace: ns, Mode: mode}
}

// workload is a workload policy; ports alternate port number and mode.
func workload(name string, mode scenario.MTLSMode, ports ...any) scenario.PeerAuthentication {
	pa := scenario.PeerAuthentication{Scope: scenario.ScopeWorkload, Namespace: "meshproof", Workload: name, Mode: mode}
	for i := 0; i+1 < len(ports); i += 2 {
		pa.Ports = append(pa.Ports, scenario.PortMode{Port: ports[i].(int), Mode: ports[i+1].(scenario.MTLSMode)})
	}
	return pa
}

func dr(name string, mode scenario.TLSMode, port int) scenario.DestinationRule {
	return scenario.DestinationRule{Workload: name, Mode: mode, Port: port}
}

type pas = []scenario.PeerAuthentication
type drs = []scenario.DestinationRule

// ruleCase is one row: under these policies, from -> to:port gives result
// (reason).
type ruleCase struct {
	name   string
	pa     pas
	dr     drs
	from   string
	to     string
	port   int
	result scenario.Result
	reason string
}

func runRules(t *testing.T, cases []ruleCase) {
	t.Helper()
	s := testSuite()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m *scenario.MTLSStep
			if c.pa != nil || c.dr != nil {
				m = &scenario.MTLSStep{PeerAuthentications: c.pa, DestinationRules: c.dr}
			}
			ps, err := PredictPolicies(s, m)
			if err != nil {
				t.Fatal(err)
			}
			p, ok := Find(ps, c.from, c.to, c.port)
			if !ok {
				t.Fatalf("no prediction for %s -> %s:%d", c.from, c.to, c.port)
			}
			if p.Result != c.result || p.Reason != c.reason {
				t.Errorf("%s -> %s:%d = %s %q, want %s %q\n  why: %s", c.from, c.to, c.port, p.Result, p.Reason, c.result, c.reason, p.Why)
			}
			if p.Why == "" {
				t.Error("the prediction does not say which rule decided")
			}
		})
	}
}

func TestIstioDefaults(t *testing.T) {
	runRules(t, []ruleCase{
		{"sidecar to sidecar: auto mTLS", nil, nil, "service-a", "service-b", 8080, mtls, ""},
		{"sidecar to sidecar other port", nil, nil, "service-b", "service-a", 9090, mtls, ""},
		{"across namespaces", nil, nil, "service-a", "other-ns", 8080, mtls, ""},
		{"no sidecar to sidecar: PERMISSIVE accepts plaintext", nil, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"sidecar to no sidecar: auto mTLS falls back", nil, nil, "service-a", "legacy", 8080, plaintext, ""},
	})
}

func TestPeerAuthenticationPrecedence(t *testing.T) {
	runRules(t, []ruleCase{
		{"mesh STRICT", pas{mesh(strict)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"namespace overrides mesh", pas{mesh(strict), namespace("meshproof", permissive)}, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"namespace UNSET inherits mesh", pas{mesh(strict), namespace("meshproof", unset)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"workload overrides namespace", pas{namespace("meshproof", strict), workload("service-b", permissive)}, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"workload UNSET inherits namespace", pas{namespace("meshproof", strict), workload("service-b", unset)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"workload policy selects only its workload", pas{workload("service-b", strict)}, nil, "legacy", "service-a", 8080, plaintext, ""},
		{"namespace policy stays in its namespace", pas{namespace("other", strict)}, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"namespace policy applies in its namespace", pas{namespace("other", strict)}, nil, "legacy", "other-ns", 8080, fail, "reset"},
		{"selector-less policy in the root namespace is mesh-wide", pas{namespace(scenario.IstioRootNamespace, strict)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"workload policy in the root namespace is ignored",
			pas{{Scope: scenario.ScopeWorkload, Namespace: scenario.IstioRootNamespace, Workload: "service-b", Mode: strict}}, nil,
			"legacy", "service-b", 8080, plaintext, ""},
	})
}

func TestPortLevelModes(t *testing.T) {
	runRules(t, []ruleCase{
		{"port overrides workload", pas{workload("service-b", strict, 9090, permissive)}, nil, "legacy", "service-b", 9090, plaintext, ""},
		{"other ports keep the workload mode", pas{workload("service-b", strict, 9090, permissive)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"port UNSET inherits the workload", pas{workload("service-b", strict, 9090, unset)}, nil, "legacy", "service-b", 9090, fail, "reset"},
		{"port UNSET inherits through workload UNSET", pas{namespace("meshproof", strict), workload("service-b", unset, 9090, unset)}, nil, "legacy", "service-b", 9090, fail, "reset"},
		{"port DISABLE under namespace STRICT", pas{namespace("meshproof", strict), workload("service-b", unset, 9090, disable)}, nil, "legacy", "service-b", 9090, plaintext, ""},
		{"port STRICT under PERMISSIVE", pas{workload("service-b", permissive, 8080, strict)}, nil, "legacy", "service-b", 8080, fail, "reset"},
	})
}

func TestPeerAuthenticationModes(t *testing.T) {
	runRules(t, []ruleCase{
		{"STRICT accepts mTLS", pas{namespace("meshproof", strict)}, nil, "service-a", "service-b", 8080, mtls, ""},
		{"STRICT resets plaintext from outside the mesh", pas{namespace("meshproof", strict)}, nil, "legacy", "service-b", 8080, fail, "reset"},
		{"PERMISSIVE accepts mTLS", pas{namespace("meshproof", permissive)}, nil, "service-a", "service-b", 8080, mtls, ""},
		{"PERMISSIVE accepts plaintext", pas{namespace("meshproof", permissive)}, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"DISABLE accepts plaintext", pas{namespace("meshproof", disable)}, nil, "legacy", "service-b", 8080, plaintext, ""},
		{"server without sidecar ignores STRICT", pas{namespace("meshproof", strict)}, nil, "service-a", "legacy", 8080, plaintext, ""},
		{"server without sidecar ignores a workload STRICT", pas{workload("legacy", strict)}, nil, "service-b", "legacy", 9090, plaintext, ""},
	})
}

func TestAutoMTLSHonoursDisable(t *testing.T) {
	runRules(t, []ruleCase{
		{"namespace DISABLE", pas{namespace("meshproof", disable)}, nil, "service-a", "service-b", 8080, plaintext, ""},
		{"mesh DISABLE", pas{mesh(disable)}, nil, "service-a", "other-ns", 8080, plaintext, ""},
		{"workload DISABLE", pas{workload("service-b", disable)}, nil, "service-a", "service-b", 8080, plaintext, ""},
		{"port DISABLE", pas{workload("service-b", strict, 9090, disable)}, nil, "service-a", "service-b", 9090, plaintext, ""},
		{"other port of a port DISABLE", pas{workload("service-b", strict, 9090, disable)}, nil, "service-a", "service-b", 8080, mtls, ""},
		{"workload DISABLE under namespace STRICT", pas{namespace("meshproof", strict), workload("service-b", disable)}, nil, "service-a", "service-b", 8080, plaintext, ""},
	})
}

// Auto mTLS reads only namespace and mesh policies when it decides whether a
// service's cluster gets TLS at all: a workload that is strict in a disable
// namespace receives plaintext from sidecar clients.
func TestAutoMTLSNamespaceHint(t *testing.T) {
	runRules(t, []ruleCase{
		{"workload STRICT in a DISABLE namespace", pas{namespace("meshproof", disable), workload("service-b", strict)}, nil, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"port STRICT in a DISABLE namespace", pas{namespace("meshproof", disable), workload("service-b", unset, 9090, strict)}, nil, "service-a", "service-b", 9090, fail, "upstream-503"},
		{"workload STRICT under mesh DISABLE", pas{mesh(disable), workload("service-b", strict)}, nil, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"namespace PERMISSIVE under mesh DISABLE", pas{mesh(disable), namespace("meshproof", permissive)}, nil, "service-a", "service-b", 8080, mtls, ""},
		{"namespace UNSET under mesh DISABLE", pas{mesh(disable), namespace("meshproof", unset), workload("service-b", strict)}, nil, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"DISABLE in the client's namespace only", pas{namespace("other", disable)}, nil, "other-ns", "service-b", 8080, mtls, ""},
		{"the server's DISABLE namespace decides", pas{namespace("other", disable)}, nil, "service-a", "other-ns", 8080, plaintext, ""},
	})
}

func TestDestinationRules(t *testing.T) {
	runRules(t, []ruleCase{
		{"ISTIO_MUTUAL to STRICT", pas{namespace("meshproof", strict)}, drs{dr("service-b", istioMutual, 0)}, "service-a", "service-b", 8080, mtls, ""},
		{"DISABLE to STRICT: client sidecar 503", pas{namespace("meshproof", strict)}, drs{dr("service-b", tlsDisable, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"DISABLE to PERMISSIVE", nil, drs{dr("service-b", tlsDisable, 0)}, "service-a", "service-b", 8080, plaintext, ""},
		{"ISTIO_MUTUAL to no sidecar: 503", pas{namespace("meshproof", permissive)}, drs{dr("legacy", istioMutual, 0)}, "service-a", "legacy", 8080, fail, "upstream-503"},
		{"ISTIO_MUTUAL to DISABLE: 503", pas{namespace("meshproof", disable)}, drs{dr("service-b", istioMutual, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"ISTIO_MUTUAL overrides the namespace hint", pas{namespace("meshproof", disable), workload("service-b", strict)}, drs{dr("service-b", istioMutual, 0)}, "service-a", "service-b", 8080, mtls, ""},
		{"port-level DR applies to its port", pas{namespace("meshproof", strict)}, drs{dr("service-b", tlsDisable, 9090)}, "service-a", "service-b", 9090, fail, "upstream-503"},
		{"port-level DR leaves other ports to auto mTLS", pas{namespace("meshproof", strict)}, drs{dr("service-b", tlsDisable, 9090)}, "service-a", "service-b", 8080, mtls, ""},
		{"DR for another workload changes nothing", pas{namespace("meshproof", strict)}, drs{dr("service-a", tlsDisable, 0)}, "service-a", "service-b", 8080, mtls, ""},
		{"client without sidecar ignores ISTIO_MUTUAL", pas{namespace("meshproof", strict)}, drs{dr("service-b", istioMutual, 0)}, "legacy", "service-b", 8080, fail, "reset"},
		{"client without sidecar ignores DISABLE", nil, drs{dr("service-b", tlsDisable, 0)}, "legacy", "service-b", 8080, plaintext, ""},
	})
}

// A rule for a workload and a port-level rule for the same workload are one
// object (policy.ForMTLS merges them); in it the port-level setting wins on
// its port and the destination-level one holds on the others.
func TestDestinationRuleWithPortLevelOverride(t *testing.T) {
	both := drs{dr("service-b", istioMutual, 0), dr("service-b", tlsDisable, 9090)}
	runRules(t, []ruleCase{
		{"destination-level ISTIO_MUTUAL on the other port", pas{namespace("meshproof", strict)}, both, "service-a", "service-b", 8080, mtls, ""},
		{"port-level DISABLE wins on its port", pas{namespace("meshproof", strict)}, both, "service-a", "service-b", 9090, fail, "upstream-503"},
		{"port-level DISABLE to PERMISSIVE", nil, both, "service-a", "service-b", 9090, plaintext, ""},
		{"port-level ISTIO_MUTUAL over destination-level DISABLE", nil, drs{dr("service-b", tlsDisable, 0), dr("service-b", istioMutual, 8080)}, "service-a", "service-b", 8080, mtls, ""},
		{"destination-level DISABLE on the other port", nil, drs{dr("service-b", tlsDisable, 0), dr("service-b", istioMutual, 8080)}, "service-a", "service-b", 9090, plaintext, ""},
	})
	preds, err := PredictPolicies(testSuite(), &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", strict)}, DestinationRules: both})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := Find(preds, "service-a", "service-b", 9090)
	if !strings.Contains(p.Why, "DestinationRule port 9090 DISABLE") {
		t.Errorf("why = %q, want it to name the port-level rule", p.Why)
	}
}

func TestPoliciesLeftToTimingAreRefused(t *testing.T) {
	s := testSuite()
	for _, c := range []struct {
		name string
		m    scenario.MTLSStep
		want string
	}{
		{"two DestinationRules for one workload and port",
			scenario.MTLSStep{DestinationRules: drs{dr("service-b", istioMutual, 9090), dr("service-b", tlsDisable, 9090)}},
			"two DestinationRules for workload service-b (ISTIO_MUTUAL on port 9090 and DISABLE on port 9090)"},
		{"two mesh-wide policies",
			scenario.MTLSStep{PeerAuthentications: pas{mesh(strict), namespace(scenario.IstioRootNamespace, disable)}},
			"two mesh-wide PeerAuthentications"},
		{"two workload policies",
			scenario.MTLSStep{PeerAuthentications: pas{workload("service-b", strict), workload("service-b", disable)}},
			"two PeerAuthentications select workload service-b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := PredictPolicies(s, &c.m)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want it to say %q", err, c.want)
			}
		})
	}
}

func TestPredictCoversEveryPairOnce(t *testing.T) {
	s := testSuite()
	ps, err := PredictPolicies(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 4 clients x 3 other servers x 2 ports.
	if len(ps) != 24 {
		t.Fatalf("%d predictions, want 24", len(ps))
	}
	seen := map[string]bool{}
	for _, p := range ps {
		if p.From == p.To {
			t.Errorf("prediction for a workload to itself: %v", p)
		}
		if seen[p.String()] {
			t.Errorf("duplicate prediction %v", p)
		}
		seen[p.String()] = true
	}
	if first := ps[0]; first.From != "service-a" || first.To != "service-b" || first.Port != 8080 {
		t.Errorf("first prediction %v, want service-a -> service-b:8080 (suite order)", first)
	}
}

func TestPolicyAt(t *testing.T) {
	strictStep := &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", strict)}}
	disableStep := &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", disable)}}
	sc := &scenario.Scenario{Name: "sc", Steps: []scenario.Step{
		{Expect: &scenario.ExpectStep{}},
		{MTLS: strictStep},
		{Expect: &scenario.ExpectStep{}},
		{Rotate: &scenario.RotateStep{Workload: "service-b"}},
		{MTLS: disableStep},
		{Expect: &scenario.ExpectStep{}},
	}}
	for i, want := range []*scenario.MTLSStep{nil, strictStep, strictStep, strictStep, disableStep, disableStep} {
		got, err := PolicyAt(sc, i)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("step %d: policies of the wrong step", i+1)
		}
	}
	if _, err := PolicyAt(sc, 6); err == nil || !strings.Contains(err.Error(), "steps 1 to 6; there is no step 7") {
		t.Errorf("out of range: %v", err)
	}
}

func TestAgrees(t *testing.T) {
	p := Prediction{Result: fail, Reason: "reset"}
	for _, c := range []struct {
		x    scenario.Expectation
		want bool
	}{
		{scenario.Expectation{Result: fail}, true},
		{scenario.Expectation{Result: fail, Reason: "reset"}, true},
		{scenario.Expectation{Result: fail, Reason: "upstream-503"}, false},
		{scenario.Expectation{Result: plaintext}, false},
	} {
		if got := p.Agrees(c.x); got != c.want {
			t.Errorf("Agrees(%+v) = %v, want %v", c.x, got, c.want)
		}
	}
}

// scenario.MTLSStep.ServerMode (validation's view of what a server
// enforces, for noPlaintextAfter) composes policies as the oracle does.
func TestScenarioServerModeAgreesWithTheOracle(t *testing.T) {
	s := testSuite()
	modes := []scenario.MTLSMode{"", unset, disable, permissive, strict}
	checked := 0
	for _, meshMode := range modes {
		for _, nsMode := range modes {
			for _, wlMode := range modes {
				for _, portMode := range modes {
					var m scenario.MTLSStep
					if meshMode != "" {
						m.PeerAuthentications = append(m.PeerAuthentications, mesh(meshMode))
					}
					if nsMode != "" {
						m.PeerAuthentications = append(m.PeerAuthentications, namespace("meshproof", nsMode))
					}
					if wlMode != "" {
						wl := workload("service-b", wlMode)
						if portMode != "" {
							wl = workload("service-b", wlMode, 9090, portMode)
						}
						m.PeerAuthentications = append(m.PeerAuthentications, wl)
					}
					pol, err := indexPolicies(s, &m)
					if err != nil {
						t.Fatal(err)
					}
					for i := range s.Fixtures.Workloads {
						w := &s.Fixtures.Workloads[i]
						for _, port := range []int{8080, 9090} {
							want, _ := pol.serverMode(w, port)
							if got := m.ServerMode(w, port); got != want {
								t.Errorf("%s under %s, %s:%d: scenario says %s, oracle %s", m.Summary(), w.Name, w.Name, port, got, want)
							}
							checked++
						}
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("nothing compared")
	}
}

// A DestinationRule SIMPLE originates one-way TLS, which no server side of
// the fixtures terminates: every sidecar client fails with its 503, and a
// client without sidecar is untouched by the rule.
func TestDestinationRuleSimple(t *testing.T) {
	simple := scenario.TLSSimple
	runRules(t, []ruleCase{
		{"SIMPLE to STRICT", pas{namespace("meshproof", strict)}, drs{dr("service-b", simple, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"SIMPLE to PERMISSIVE", nil, drs{dr("service-b", simple, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"SIMPLE to DISABLE", pas{namespace("meshproof", disable)}, drs{dr("service-b", simple, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"SIMPLE to no sidecar", nil, drs{dr("legacy", simple, 0)}, "service-a", "legacy", 8080, fail, "upstream-503"},
		{"SIMPLE on one port only", nil, drs{dr("service-b", simple, 9090)}, "service-a", "service-b", 8080, mtls, ""},
		{"client without sidecar ignores SIMPLE", nil, drs{dr("service-b", simple, 0)}, "legacy", "service-b", 8080, plaintext, ""},
	})
}

// echoSuite is Istio's echo shape: service-b's Service port 80 forwards to
// container port 18080, and 9000 (tcp) to 19000.
func echoSuite() *scenario.Suite {
	s := testSuite()
	for _, name := range []string{"service-b", "legacy"} {
		s.Workload(name).Ports = []scenario.Port{
			{Name: "http", Number: 80, TargetPort: 18080, Protocol: scenario.ProtocolHTTP},
			{Name: "tcp", Number: 9000, TargetPort: 19000, Protocol: scenario.ProtocolTCP},
		}
	}
	return s
}

// [PA]/[PORTPA]: a port-level mode names the container port; a probe of
// the Service port meets the mode of the container port behind it. A
// port-level key equal to the Service port number names nothing.
func TestPortLevelModeIsKeyedByContainerPort(t *testing.T) {
	s := echoSuite()
	for _, c := range []struct {
		name   string
		pa     scenario.PeerAuthentication
		port   int
		result scenario.Result
		reason string
	}{
		{"STRICT, container port 18080 DISABLE: plaintext to Service port 80", workload("service-b", strict, 18080, disable), 80, plaintext, ""},
		{"STRICT, key 80 is no container port: STRICT holds on 80", workload("service-b", strict, 80, disable), 80, mtls, ""},
		{"DISABLE, container port 19000 STRICT: mTLS to Service port 9000", workload("service-b", disable, 19000, strict), 9000, mtls, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ps, err := PredictPolicies(s, &scenario.MTLSStep{PeerAuthentications: pas{c.pa}})
			if err != nil {
				t.Fatal(err)
			}
			p, _ := Find(ps, "service-a", "service-b", c.port)
			if p.Result != c.result || p.Reason != c.reason {
				t.Errorf("got %s %q, want %s %q; why: %s", p.Result, p.Reason, c.result, c.reason, p.Why)
			}
		})
	}
	// A client without sidecar against the STRICT container port: reset on
	// http; on tcp the result stands and the reason is left open.
	ps, err := PredictPolicies(s, &scenario.MTLSStep{PeerAuthentications: pas{workload("service-b", disable, 18080, strict, 19000, strict)}})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := Find(ps, "legacy", "service-b", 80); p.Result != fail || p.Reason != "reset" {
		t.Errorf("legacy -> service-b:80 = %s %q, want fail reset", p.Result, p.Reason)
	}
	if p, _ := Find(ps, "legacy", "service-b", 9000); p.Result != fail || p.Reason != "" || !strings.Contains(p.Why, "tcp") {
		t.Errorf("legacy -> service-b:9000 = %s %q (%s), want fail with no determinate reason", p.Result, p.Reason, p.Why)
	}
}

// [TCPPROXY]: over tcp the outcomes are those of http, without the 503 a
// client sidecar answers HTTP with.
func TestTCPPortOutcomes(t *testing.T) {
	s := echoSuite()
	for _, c := range []struct {
		name   string
		m      *scenario.MTLSStep
		from   string
		to     string
		result scenario.Result
	}{
		{"auto mTLS", nil, "service-a", "service-b", mtls},
		{"STRICT against a plaintext DestinationRule", &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", strict)}, DestinationRules: drs{dr("service-b", tlsDisable, 0)}}, "service-a", "service-b", fail},
		{"ISTIO_MUTUAL to a workload without sidecar", &scenario.MTLSStep{DestinationRules: drs{dr("legacy", istioMutual, 0)}}, "service-a", "legacy", fail},
		{"plaintext to a workload without sidecar", nil, "service-a", "legacy", plaintext},
	} {
		t.Run(c.name, func(t *testing.T) {
			ps, err := PredictPolicies(s, c.m)
			if err != nil {
				t.Fatal(err)
			}
			http, _ := Find(ps, c.from, c.to, 80)
			tcp, _ := Find(ps, c.from, c.to, 9000)
			if tcp.Result != c.result || http.Result != c.result {
				t.Errorf("http %s, tcp %s, want %s for both", http.Result, tcp.Result, c.result)
			}
			if tcp.Reason != "" {
				t.Errorf("tcp reason %q, want none (%s)", tcp.Reason, tcp.Why)
			}
			if c.result == fail && http.Reason != "upstream-503" {
				t.Errorf("http reason %q, want upstream-503", http.Reason)
			}
		})
	}
}

func meshDR(mode scenario.TLSMode, port int) scenario.DestinationRule {
	return scenario.DestinationRule{Scope: scenario.DRScopeMesh, Mode: mode, Port: port}
}

// [DRLOOKUP], [HOSTMATCH], [GLOBALDR]: the mesh-wide rule applies to every
// service without a rule of its own, as Istio's global-dr; a workload's rule
// shadows it on every port, even those the workload's rule leaves unset.
func TestMeshWideDestinationRule(t *testing.T) {
	runRules(t, []ruleCase{
		// Istio's "global mtls strict": PA STRICT + DR "*" ISTIO_MUTUAL.
		{"global mtls strict", pas{mesh(strict)}, drs{meshDR(istioMutual, 0)}, "service-a", "service-b", 8080, mtls, ""},
		{"global mtls strict, other namespace", pas{mesh(strict)}, drs{meshDR(istioMutual, 0)}, "service-a", "other-ns", 9090, mtls, ""},
		// Istio's "global mtls permissive" expects no success towards the
		// naked workload: ISTIO_MUTUAL is sent whatever the server runs.
		{"global ISTIO_MUTUAL towards no sidecar", pas{mesh(permissive)}, drs{meshDR(istioMutual, 0)}, "service-a", "legacy", 8080, fail, "upstream-503"},
		// Istio's "global plaintext to mtls permissive".
		{"global plaintext to permissive", pas{mesh(permissive)}, drs{meshDR(tlsDisable, 0)}, "service-a", "service-b", 8080, plaintext, ""},
		{"global plaintext to strict", pas{mesh(strict)}, drs{meshDR(tlsDisable, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
		{"client without sidecar ignores it", nil, drs{meshDR(istioMutual, 0)}, "legacy", "service-b", 8080, plaintext, ""},
		{"mesh-wide port-level setting", nil, drs{meshDR(istioMutual, 0), meshDR(tlsDisable, 9090)}, "service-a", "service-b", 9090, plaintext, ""},
		{"mesh-wide rule, other port", nil, drs{meshDR(tlsDisable, 9090)}, "service-a", "service-b", 8080, mtls, ""},
		{"workload rule wins", nil, drs{meshDR(tlsDisable, 0), dr("service-b", istioMutual, 0)}, "service-a", "service-b", 8080, mtls, ""},
		{"mesh rule still applies to the others", nil, drs{meshDR(tlsDisable, 0), dr("service-b", istioMutual, 0)}, "service-b", "service-a", 8080, plaintext, ""},
		// The workload's port-only rule is the rule for its host: port 8080
		// has no tls there, so auto mTLS, not the mesh-wide DISABLE.
		{"workload rule shadows it on ports it leaves unset", nil, drs{meshDR(tlsDisable, 0), dr("service-b", istioMutual, 9090)}, "service-a", "service-b", 8080, mtls, ""},
		{"SIMPLE mesh-wide", nil, drs{meshDR(scenario.TLSSimple, 0)}, "service-a", "service-b", 8080, fail, "upstream-503"},
	})
	// The reason names the mesh-wide rule.
	ps, err := PredictPolicies(testSuite(), &scenario.MTLSStep{DestinationRules: drs{meshDR(tlsDisable, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := Find(ps, "service-a", "service-b", 8080); !strings.Contains(p.Why, "mesh-wide DestinationRule DISABLE") {
		t.Errorf("why = %q, want the mesh-wide rule named", p.Why)
	}
	if _, err := PredictPolicies(testSuite(), &scenario.MTLSStep{DestinationRules: drs{meshDR(tlsDisable, 0), meshDR(istioMutual, 0)}}); err == nil || !strings.Contains(err.Error(), "the whole mesh") {
		t.Errorf("two mesh-wide rules: err = %v", err)
	}
}
