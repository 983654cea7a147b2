package oracle

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// ambientSuite: amb-a and amb-b in ambient mode, service-a with a sidecar,
// legacy out of the mesh, grpc-p proxyless; each with ports 8080 and 9090
// (grpc-p: grpc 7070), amb-b also tcp 9000.
func ambientSuite() *scenario.Suite {
	ports := scenario.DefaultPorts()
	wl := func(name string, dp scenario.DataPlane, ports []scenario.Port) scenario.Workload {
		w := scenario.Workload{Name: name, Namespace: "meshproof", ServiceAccount: name, DataPlane: dp, Ports: ports}
		w.Mesh = new(bool)
		*w.Mesh = dp != scenario.DataPlaneNone
		w.Proxyless = dp == scenario.DataPlaneProxyless
		return w
	}
	return &scenario.Suite{Fixtures: scenario.Fixtures{Namespace: "meshproof", Workloads: []scenario.Workload{
		wl("amb-a", scenario.DataPlaneAmbient, ports),
		wl("amb-b", scenario.DataPlaneAmbient, append(slices.Clone(ports), scenario.Port{Name: "tcp", Number: 9000, Protocol: scenario.ProtocolTCP})),
		wl("service-a", scenario.DataPlaneSidecar, ports),
		wl("legacy", scenario.DataPlaneNone, ports),
		wl("grpc-p", scenario.DataPlaneProxyless, scenario.DefaultProxylessPorts()),
	}}}
}

func runAmbientRules(t *testing.T, cases []ruleCase) {
	t.Helper()
	s := ambientSuite()
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

// The pairs across data planes, without policies and under the
// namespace's STRICT and DISABLE.
func TestAmbientPairs(t *testing.T) {
	ns := func(m scenario.MTLSMode) pas { return pas{namespace("meshproof", m)} }
	runAmbientRules(t, []ruleCase{
		{"ambient to ambient", nil, nil, "amb-a", "amb-b", 8080, mtls, ""},
		{"sidecar to ambient: HBONE", nil, nil, "service-a", "amb-b", 8080, mtls, ""},
		{"ambient to sidecar: HBONE under the ambient profile", nil, nil, "amb-a", "service-a", 8080, mtls, ""},
		{"outside to ambient", nil, nil, "legacy", "amb-b", 8080, plaintext, ""},
		{"ambient to outside", nil, nil, "amb-a", "legacy", 8080, plaintext, ""},
		{"STRICT: ambient to ambient", ns(strict), nil, "amb-a", "amb-b", 8080, mtls, ""},
		{"STRICT: sidecar to ambient", ns(strict), nil, "service-a", "amb-b", 9090, mtls, ""},
		{"STRICT: outside to ambient denied, reason open", ns(strict), nil, "legacy", "amb-b", 8080, fail, ""},
		{"STRICT: ambient to sidecar is HBONE", ns(strict), nil, "amb-a", "service-a", 8080, mtls, ""},
		{"DISABLE: ambient to sidecar is HBONE", ns(disable), nil, "amb-a", "service-a", 9090, mtls, ""},
		{"STRICT: ambient to outside", ns(strict), nil, "amb-a", "legacy", 8080, plaintext, ""},
		{"DISABLE: ambient to ambient stays HBONE", ns(disable), nil, "amb-a", "amb-b", 8080, mtls, ""},
		{"DISABLE: sidecar to ambient stays HBONE", ns(disable), nil, "service-a", "amb-b", 8080, mtls, ""},
		{"DISABLE: outside to ambient", ns(disable), nil, "legacy", "amb-b", 8080, plaintext, ""},
		{"mesh STRICT: outside to ambient", pas{mesh(strict)}, nil, "legacy", "amb-b", 9090, fail, ""},
		{"STRICT: tcp port", ns(strict), nil, "legacy", "amb-b", 9000, fail, ""},
		{"STRICT: tcp port, ambient to ambient", ns(strict), nil, "amb-a", "amb-b", 9000, mtls, ""},
		{"STRICT: proxyless gRPC to ambient", ns(strict), nil, "grpc-p", "amb-b", 8080, fail, ""},
		{"proxyless gRPC's HTTP to ambient", nil, nil, "grpc-p", "amb-b", 8080, plaintext, ""},
		{"ambient to proxyless, PERMISSIVE served plaintext", nil, nil, "amb-a", "grpc-p", 7070, plaintext, ""},
		{"STRICT: ambient to proxyless", ns(strict), nil, "amb-a", "grpc-p", 7070, fail, ""},
	})
}

// DestinationRules change nothing ztunnel does, and only SIMPLE changes
// what a sidecar sends an ambient pod.
func TestAmbientIgnoresDestinationRules(t *testing.T) {
	ns := pas{namespace("meshproof", strict)}
	runAmbientRules(t, []ruleCase{
		{"DISABLE: ambient to ambient", ns, drs{dr("amb-b", tlsDisable, 0)}, "amb-a", "amb-b", 8080, mtls, ""},
		{"DISABLE: sidecar to ambient", ns, drs{dr("amb-b", tlsDisable, 0)}, "service-a", "amb-b", 8080, mtls, ""},
		{"mesh DISABLE: sidecar to ambient", nil, drs{meshDR(tlsDisable, 0)}, "service-a", "amb-b", 8080, mtls, ""},
		{"DISABLE: ambient to sidecar stays HBONE", nil, drs{dr("service-a", tlsDisable, 0)}, "amb-a", "service-a", 8080, mtls, ""},
		{"SIMPLE: ambient to ambient", nil, drs{dr("amb-b", scenario.TLSSimple, 0)}, "amb-a", "amb-b", 8080, mtls, ""},
		{"SIMPLE: sidecar to ambient, TLS inside HBONE", nil, drs{dr("amb-b", scenario.TLSSimple, 0)}, "service-a", "amb-b", 8080, fail, "upstream-503"},
		{"SIMPLE on tcp: reason open", nil, drs{dr("amb-b", scenario.TLSSimple, 0)}, "service-a", "amb-b", 9000, fail, ""},
		{"ISTIO_MUTUAL: a proxyless client's HTTP is not gRPC, no rule applies", nil, drs{dr("amb-b", istioMutual, 0)}, "grpc-p", "amb-b", 8080, plaintext, ""},
	})
}

// Port-level modes as istiod converts them, including the two quirks of
// its conversion: a port-level DISABLE under an inherited STRICT does not
// lift the static policy, and a mesh STRICT with a namespace UNSET policy
// is lost for a workload whose UNSET policy has a PERMISSIVE port.
func TestAmbientPortLevelModes(t *testing.T) {
	ns := func(m scenario.MTLSMode) scenario.PeerAuthentication { return namespace("meshproof", m) }
	runAmbientRules(t, []ruleCase{
		{"workload STRICT, 9090 PERMISSIVE: 8080", pas{workload("amb-b", strict, 9090, permissive)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"workload STRICT, 9090 PERMISSIVE: 9090", pas{workload("amb-b", strict, 9090, permissive)}, nil, "legacy", "amb-b", 9090, plaintext, ""},
		{"workload UNSET, 8080 STRICT: 8080", pas{workload("amb-b", unset, 8080, strict)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"workload UNSET, 8080 STRICT: 9090", pas{workload("amb-b", unset, 8080, strict)}, nil, "legacy", "amb-b", 9090, plaintext, ""},
		{"workload PERMISSIVE, 8080 STRICT", pas{workload("amb-b", permissive, 8080, strict)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"workload DISABLE, 9090 STRICT: 8080", pas{workload("amb-b", disable, 9090, strict)}, nil, "legacy", "amb-b", 8080, plaintext, ""},
		{"namespace STRICT, workload UNSET 9090 PERMISSIVE: 9090", pas{ns(strict), workload("amb-b", unset, 9090, permissive)}, nil, "legacy", "amb-b", 9090, plaintext, ""},
		{"namespace STRICT, workload UNSET 9090 PERMISSIVE: 8080", pas{ns(strict), workload("amb-b", unset, 9090, permissive)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"quirk: namespace STRICT, workload UNSET 9090 DISABLE: 9090", pas{ns(strict), workload("amb-b", unset, 9090, disable)}, nil, "legacy", "amb-b", 9090, fail, ""},
		{"mesh STRICT, workload UNSET 9090 PERMISSIVE: 8080", pas{mesh(strict), workload("amb-b", unset, 9090, permissive)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"mesh STRICT, workload UNSET 9090 PERMISSIVE: 9090", pas{mesh(strict), workload("amb-b", unset, 9090, permissive)}, nil, "legacy", "amb-b", 9090, plaintext, ""},
		{"quirk: mesh STRICT, namespace UNSET, workload UNSET 9090 PERMISSIVE: 8080", pas{mesh(strict), ns(unset), workload("amb-b", unset, 9090, permissive)}, nil, "legacy", "amb-b", 8080, plaintext, ""},
		{"mesh STRICT, workload PERMISSIVE", pas{mesh(strict), workload("amb-b", permissive)}, nil, "legacy", "amb-b", 8080, plaintext, ""},
		{"namespace PERMISSIVE, workload STRICT", pas{ns(permissive), workload("amb-b", strict)}, nil, "legacy", "amb-b", 8080, fail, ""},
		{"any mode: ambient peers keep mTLS", pas{ns(strict), workload("amb-b", strict, 9090, disable)}, nil, "amb-a", "amb-b", 9090, mtls, ""},
	})
}

// The authorizations the oracle derives are those istiod's golden files
// show for the same PeerAuthentications (istio/istio pilot/pkg/
// serviceregistry/ambient/testdata, read by hand): the names and the
// groups' shape.
func TestAmbientAuthorizationsAsIstiodConvertsThem(t *testing.T) {
	s := ambientSuite()
	b := s.Workload("amb-b")
	for _, tc := range []struct {
		name string
		pa   pas
		want []string
	}{
		{"strict", pas{namespace("meshproof", strict)}, []string{StaticStrictPolicy + ": [[[no peer principal]]]"}},
		{"strict and permissive port", pas{workload("amb-b", strict, 9090, permissive)},
			[]string{"meshproof/converted_peer_authentication_amb-b: [[[no peer principal] [port not in [9090]]]]"}},
		{"permissive root, strict namespace, permissive port", pas{mesh(permissive), namespace("meshproof", strict), workload("amb-b", unset, 9090, permissive)},
			[]string{"meshproof/converted_peer_authentication_amb-b: [[[port not in [9090]] [no peer principal]]]"}},
		{"unset with strict port", pas{workload("amb-b", unset, 8080, strict)},
			[]string{"meshproof/converted_peer_authentication_amb-b: [[[no peer principal and port in [8080]]]]"}},
		{"strict and strict port", pas{workload("amb-b", strict, 8080, strict)}, []string{StaticStrictPolicy + ": [[[no peer principal]]]"}},
		{"permissive", pas{namespace("meshproof", permissive)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := indexPolicies(s, &scenario.MTLSStep{PeerAuthentications: tc.pa})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range p.ztunnelAuthorizations(b) {
				got = append(got, a.name+": "+groupsString(a.groups))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("authorizations\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func groupsString(groups [][][]ztMatch) string {
	var gs []string
	for _, g := range groups {
		var rs []string
		for _, r := range g {
			var ms []string
			for _, m := range r {
				ms = append(ms, m.String())
			}
			rs = append(rs, "["+strings.Join(ms, " ")+"]")
		}
		gs = append(gs, "["+strings.Join(rs, " ")+"]")
	}
	return "[" + strings.Join(gs, " ") + "]"
}

// Without the ambient profile's HBONE-capable sidecars (a policies value
// built so, as for a sidecar injected without ISTIO_META_ENABLE_HBONE),
// ztunnel sends a sidecar plaintext, which its STRICT closes.
func TestAmbientToSidecarWithoutHBONE(t *testing.T) {
	s := ambientSuite()
	p, err := indexPolicies(s, &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", strict)}})
	if err != nil {
		t.Fatal(err)
	}
	p.sidecarsHBONE = false
	got := p.predictAmbient(DataPlaneAmbient, DataPlaneSidecar, s.Workload("amb-a"), s.Workload("service-a"), 8080, ProxylessWorkload{})
	if got.Result != fail || got.Reason != "" {
		t.Errorf("amb-a -> service-a = %s %q, want fail with the reason open (%s)", got.Result, got.Reason, got.Why)
	}
	p.mesh, p.namespace = nil, map[string]*scenario.PeerAuthentication{}
	got = p.predictAmbient(DataPlaneAmbient, DataPlaneSidecar, s.Workload("amb-a"), s.Workload("service-a"), 8080, ProxylessWorkload{})
	if got.Result != plaintext {
		t.Errorf("amb-a -> service-a without policies = %s, want plaintext (%s)", got.Result, got.Why)
	}
}
