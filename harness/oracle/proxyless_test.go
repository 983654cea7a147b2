package oracle

import (
	"reflect"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// grpcPort is the gRPC port of the proxyless fixtures.
const grpcPort = 7070

// proxylessSuite is testSuite, whose workloads also serve gRPC on
// grpcPort, plus three proxyless gRPC workloads in namespace meshproof:
// grpc-a and grpc-b as Istio's grpc-agent template makes them (no tlsMode
// label), grpc-l labelled security.istio.io/tlsMode=istio.
func proxylessSuite() (*scenario.Suite, map[string]ProxylessWorkload) {
	s := testSuite()
	ports := []scenario.Port{{Name: "grpc", Number: grpcPort, Protocol: scenario.ProtocolGRPC}}
	for i := range s.Fixtures.Workloads {
		w := &s.Fixtures.Workloads[i]
		w.Ports = append(append([]scenario.Port(nil), w.Ports...), ports...)
	}
	for _, name := range []string{"grpc-a", "grpc-b", "grpc-l"} {
		s.Fixtures.Workloads = append(s.Fixtures.Workloads,
			scenario.Workload{Name: name, Namespace: "meshproof", ServiceAccount: name, Ports: ports})
	}
	return s, map[string]ProxylessWorkload{"grpc-a": {}, "grpc-b": {}, "grpc-l": {TLSModeLabel: true}}
}

func runProxylessRules(t *testing.T, cases []ruleCase) {
	t.Helper()
	s, proxyless := proxylessSuite()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m *scenario.MTLSStep
			if c.pa != nil || c.dr != nil {
				m = &scenario.MTLSStep{PeerAuthentications: c.pa, DestinationRules: c.dr}
			}
			ps, err := PredictProxyless(s, m, proxyless)
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

// The cells measured against istiod, pilot-agent and grpc-go in issue 12
// (proxyless client and plaintext client towards a proxyless server), plus
// what grpcgen's source says about the rest.
func TestProxylessServerAndClient(t *testing.T) {
	ns := func(m scenario.MTLSMode) pas { return pas{namespace("meshproof", m)} }
	im := drs{dr("grpc-b", istioMutual, 0)}
	runProxylessRules(t, []ruleCase{
		// Measured.
		{"no policy: proxyless client in plaintext", nil, nil, "grpc-a", "grpc-b", grpcPort, plaintext, ""},
		{"no policy: plain client in plaintext", nil, nil, "legacy", "grpc-b", grpcPort, plaintext, ""},
		{"STRICT without DR: proxyless client refused (no auto mTLS)", ns(strict), nil, "grpc-a", "grpc-b", grpcPort, fail, ""},
		{"STRICT without DR: plain client refused", ns(strict), nil, "legacy", "grpc-b", grpcPort, fail, ""},
		{"STRICT + ISTIO_MUTUAL: proxyless client over mTLS", ns(strict), im, "grpc-a", "grpc-b", grpcPort, mtls, ""},
		{"STRICT + ISTIO_MUTUAL: plain client refused", ns(strict), im, "legacy", "grpc-b", grpcPort, fail, ""},
		{"PERMISSIVE + ISTIO_MUTUAL: proxyless client refused (plaintext-only server)", ns(permissive), im, "grpc-a", "grpc-b", grpcPort, fail, "tls"},
		{"PERMISSIVE + ISTIO_MUTUAL: plain client in plaintext", ns(permissive), im, "legacy", "grpc-b", grpcPort, plaintext, ""},
		{"PERMISSIVE without DR", ns(permissive), nil, "grpc-a", "grpc-b", grpcPort, plaintext, ""},
		{"DISABLE without DR", ns(disable), nil, "grpc-a", "grpc-b", grpcPort, plaintext, ""},
		{"workload STRICT by selector", pas{workload("grpc-b", strict)}, nil, "legacy", "grpc-b", grpcPort, fail, ""},
		// From grpcgen's source.
		{"DISABLE + ISTIO_MUTUAL: no TLS chain", ns(disable), im, "grpc-a", "grpc-b", grpcPort, fail, "tls"},
		{"mesh STRICT, namespace UNSET inherits", pas{mesh(strict), namespace("meshproof", unset)}, nil, "grpc-a", "grpc-b", grpcPort, fail, ""},
		{"namespace PERMISSIVE over mesh STRICT", pas{mesh(strict), namespace("meshproof", permissive)}, nil, "grpc-a", "grpc-b", grpcPort, plaintext, ""},
		{"port-level PERMISSIVE under workload STRICT", pas{workload("grpc-b", strict, grpcPort, permissive)}, nil, "legacy", "grpc-b", grpcPort, plaintext, ""},
		{"port-level STRICT under workload PERMISSIVE", pas{workload("grpc-b", permissive, grpcPort, strict)}, im, "grpc-a", "grpc-b", grpcPort, mtls, ""},
		{"DR SIMPLE builds no TLS: plaintext to STRICT fails", ns(strict), drs{dr("grpc-b", scenario.TLSSimple, 0)}, "grpc-a", "grpc-b", grpcPort, fail, ""},
		{"DR SIMPLE builds no TLS: plaintext to PERMISSIVE", nil, drs{dr("grpc-b", scenario.TLSSimple, 0)}, "grpc-a", "grpc-b", grpcPort, plaintext, ""},
		{"DR DISABLE to STRICT", ns(strict), drs{dr("grpc-b", tlsDisable, 0)}, "grpc-a", "grpc-b", grpcPort, fail, ""},
		{"port-level ISTIO_MUTUAL over destination DISABLE", ns(strict), drs{dr("grpc-b", tlsDisable, 0), dr("grpc-b", istioMutual, grpcPort)}, "grpc-a", "grpc-b", grpcPort, mtls, ""},
		{"port-level DISABLE over destination ISTIO_MUTUAL", ns(strict), drs{dr("grpc-b", istioMutual, 0), dr("grpc-b", tlsDisable, grpcPort)}, "grpc-a", "grpc-b", grpcPort, fail, ""},
		{"DR for another workload changes nothing", ns(strict), drs{dr("grpc-a", istioMutual, 0)}, "grpc-a", "grpc-b", grpcPort, fail, ""},
	})
}

// A port-level PeerAuthentication names the container port ([GLDS] looks the
// mode up by the service instance's TargetPort), not the Service port
// clients call.
func TestProxylessPortLevelModeByContainerPort(t *testing.T) {
	s, proxyless := proxylessSuite()
	w := s.Workload("grpc-b")
	w.Ports = []scenario.Port{{Name: "grpc", Number: grpcPort, TargetPort: 17070}}
	for _, c := range []struct {
		pa   scenario.PeerAuthentication
		want scenario.Result
	}{
		{workload("grpc-b", strict, 17070, permissive), plaintext},
		{workload("grpc-b", strict, grpcPort, permissive), fail},
	} {
		ps, err := PredictProxyless(s, &scenario.MTLSStep{PeerAuthentications: pas{c.pa}}, proxyless)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := Find(ps, "legacy", "grpc-b", grpcPort)
		if !ok || p.Result != c.want {
			t.Errorf("port-level mode on %d: %v (%s), want %s", c.pa.Ports[0].Port, p, p.Why, c.want)
		}
	}
}

// The tlsMode=istio label, which the grpc-agent template leaves to the
// user, turns a proxyless server's PERMISSIVE into STRICT.
func TestProxylessTLSModeLabel(t *testing.T) {
	im := drs{dr("grpc-l", istioMutual, 0)}
	runProxylessRules(t, []ruleCase{
		{"no policy: plaintext refused", nil, nil, "grpc-a", "grpc-l", grpcPort, fail, ""},
		{"no policy: plain client refused", nil, nil, "legacy", "grpc-l", grpcPort, fail, ""},
		{"no policy + ISTIO_MUTUAL: mTLS", nil, im, "grpc-a", "grpc-l", grpcPort, mtls, ""},
		{"PERMISSIVE + ISTIO_MUTUAL: mTLS", pas{namespace("meshproof", permissive)}, im, "grpc-a", "grpc-l", grpcPort, mtls, ""},
		{"DISABLE stays plaintext", pas{namespace("meshproof", disable)}, nil, "grpc-a", "grpc-l", grpcPort, plaintext, ""},
		{"DISABLE + ISTIO_MUTUAL fails", pas{namespace("meshproof", disable)}, im, "grpc-a", "grpc-l", grpcPort, fail, "tls"},
	})
}

// Mixed pairs: a sidecar client towards a proxyless server, a proxyless
// client towards a sidecar server or one outside the mesh.
func TestProxylessMixedPairs(t *testing.T) {
	ns := func(m scenario.MTLSMode) pas { return pas{namespace("meshproof", m)} }
	runProxylessRules(t, []ruleCase{
		{"sidecar to unlabelled proxyless: auto mTLS sends plaintext", nil, nil, "service-a", "grpc-b", grpcPort, plaintext, ""},
		{"sidecar to unlabelled proxyless under STRICT: 503", ns(strict), nil, "service-a", "grpc-b", grpcPort, fail, "upstream-503"},
		{"sidecar to unlabelled proxyless under STRICT + ISTIO_MUTUAL", ns(strict), drs{dr("grpc-b", istioMutual, 0)}, "service-a", "grpc-b", grpcPort, mtls, ""},
		{"sidecar ISTIO_MUTUAL to plaintext-only proxyless: 503", nil, drs{dr("grpc-b", istioMutual, 0)}, "service-a", "grpc-b", grpcPort, fail, "upstream-503"},
		{"sidecar to labelled proxyless: auto mTLS", nil, nil, "service-a", "grpc-l", grpcPort, mtls, ""},
		{"sidecar to labelled proxyless with workload DISABLE", pas{workload("grpc-l", disable)}, nil, "service-a", "grpc-l", grpcPort, plaintext, ""},
		{"sidecar to labelled proxyless in a DISABLE namespace", ns(disable), nil, "service-a", "grpc-l", grpcPort, plaintext, ""},
		{"sidecar to labelled proxyless: workload STRICT in a DISABLE namespace", pas{namespace("meshproof", disable), workload("grpc-l", strict)}, nil, "service-a", "grpc-l", grpcPort, fail, "upstream-503"},
		{"sidecar DR SIMPLE to proxyless: 503", nil, drs{dr("grpc-l", scenario.TLSSimple, 0)}, "service-a", "grpc-l", grpcPort, fail, "upstream-503"},
		{"other namespace's sidecar to labelled proxyless", nil, nil, "other-ns", "grpc-l", grpcPort, mtls, ""},
		{"proxyless to sidecar: plaintext into PERMISSIVE", nil, nil, "grpc-a", "service-b", grpcPort, plaintext, ""},
		{"proxyless to sidecar STRICT without DR: reset", ns(strict), nil, "grpc-a", "service-b", grpcPort, fail, ""},
		{"proxyless to sidecar STRICT + ISTIO_MUTUAL: mTLS", ns(strict), drs{dr("service-b", istioMutual, 0)}, "grpc-a", "service-b", grpcPort, mtls, ""},
		{"proxyless to sidecar PERMISSIVE + ISTIO_MUTUAL: no Istio ALPN", ns(permissive), drs{dr("service-b", istioMutual, 0)}, "grpc-a", "service-b", grpcPort, fail, ""},
		{"proxyless to sidecar DISABLE + ISTIO_MUTUAL", ns(disable), drs{dr("service-b", istioMutual, 0)}, "grpc-a", "service-b", grpcPort, fail, ""},
		{"proxyless to sidecar DISABLE", ns(disable), nil, "grpc-a", "service-b", grpcPort, plaintext, ""},
		{"proxyless to no sidecar", ns(strict), nil, "grpc-a", "legacy", grpcPort, plaintext, ""},
		{"proxyless ISTIO_MUTUAL to no sidecar", nil, drs{dr("legacy", istioMutual, 0)}, "grpc-a", "legacy", grpcPort, fail, ""},
		// pilot-agent intercepts nothing: the proxyless workload's HTTP
		// leaves as plaintext, as from a workload outside the mesh.
		{"proxyless HTTP to sidecar PERMISSIVE: plaintext", nil, nil, "grpc-a", "service-b", 8080, plaintext, ""},
		{"proxyless HTTP to sidecar STRICT: reset, even with ISTIO_MUTUAL", ns(strict), drs{dr("service-b", istioMutual, 0)}, "grpc-a", "service-b", 8080, fail, "reset"},
	})
}

// Without proxyless workloads, and for pairs without a proxyless side,
// PredictProxyless is PredictPolicies: the sidecar rules are untouched.
func TestProxylessLeavesSidecarPairsAlone(t *testing.T) {
	s, proxyless := proxylessSuite()
	for i, m := range []*scenario.MTLSStep{
		nil,
		{PeerAuthentications: pas{namespace("meshproof", strict)}},
		{PeerAuthentications: pas{mesh(disable), workload("service-b", strict)}, DestinationRules: drs{dr("service-b", istioMutual, 9090)}},
	} {
		want, err := PredictPolicies(s, m)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := PredictProxyless(s, m, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(plain, want) {
			t.Errorf("policy set %d: PredictProxyless without proxyless workloads differs from PredictPolicies", i)
		}
		mixed, err := PredictProxyless(s, m, proxyless)
		if err != nil {
			t.Fatal(err)
		}
		if len(mixed) != len(want) {
			t.Fatalf("%d predictions, want %d", len(mixed), len(want))
		}
		compared := 0
		for i, p := range mixed {
			if _, ok := proxyless[p.From]; ok {
				continue
			}
			if _, ok := proxyless[p.To]; ok {
				continue
			}
			compared++
			if p != want[i] {
				t.Errorf("sidecar pair changed: %v (%s), want %v (%s)", p, p.Why, want[i], want[i].Why)
			}
		}
		if compared == 0 {
			t.Fatal("no sidecar pair compared")
		}
	}
}

func TestProxylessNamesMustBeFixtures(t *testing.T) {
	s, _ := proxylessSuite()
	_, err := PredictProxyless(s, nil, map[string]ProxylessWorkload{"nope": {}})
	if err == nil || !strings.Contains(err.Error(), `proxyless workload "nope" is not a fixture`) {
		t.Fatalf("error = %v", err)
	}
}

// Each proxyless prediction names the grpcgen rule that decided it.
func TestProxylessWhyNamesTheRule(t *testing.T) {
	s, proxyless := proxylessSuite()
	ps, err := PredictProxyless(s, &scenario.MTLSStep{PeerAuthentications: pas{namespace("meshproof", permissive)}}, proxyless)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to, want string }{
		{"grpc-a", "grpc-b", "served as plaintext only"},
		{"grpc-a", "grpc-l", "with the tlsMode=istio label, served as STRICT"},
		{"grpc-a", "grpc-b", "no auto mTLS"},
	} {
		p, ok := Find(ps, c.from, c.to, grpcPort)
		if !ok || !strings.Contains(p.Why, c.want) {
			t.Errorf("%s -> %s why = %q, want it to say %q", c.from, c.to, p.Why, c.want)
		}
	}
}

// A suite whose scenario file marks workloads proxyless is predicted by the
// proxyless rules wherever the oracle predicts (predict, expect: auto,
// transitions), with the tlsMode label the file gives.
func TestPredictPoliciesFollowsProxylessFixtures(t *testing.T) {
	s, err := scenario.Load("proxyless.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: c1
  istio: {version: 1.30.3}
fixtures:
  workloads:
  - {name: client, ports: [{name: grpc, number: 7070}, {name: http, number: 8080}]}
  - {name: grpc-a, proxyless: true}
  - {name: grpc-l, proxyless: true, tlsModeLabel: true}
scenarios:
- {name: s, steps: [{wait: {duration: 1s}}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := PredictPolicies(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := PredictProxyless(s, nil, map[string]ProxylessWorkload{"grpc-a": {}, "grpc-l": {TLSModeLabel: true}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PredictPolicies = %v, want PredictProxyless's %v", got, want)
	}
	// Auto mTLS tells the two proxyless servers apart by the label alone.
	for to, result := range map[string]scenario.Result{"grpc-a": plaintext, "grpc-l": mtls} {
		if p, ok := Find(got, "client", to, 7070); !ok || p.Result != result {
			t.Errorf("client -> %s:7070 = %v, want %s", to, p, result)
		}
	}
}
