//go:build linux

package envoy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
)

// Policies Istio refuses, ignores or must choose between: the validation
// outcome and what istiod then serves are shown (the evaluator's answer
// with what decided it, the sidecars' NACKs), and nothing crashes.
//
//   - A PeerAuthentication with port-level modes but no selector: the API
//     server refuses it (Istio's CRD validation rule "portLevelMtls
//     requires selector"), so it never reaches istiod.
//   - One with a selector in the root namespace: stored, ignored by istiod.
//   - Two namespace-wide ones with different modes: istiod keeps the
//     older.
//   - Two DestinationRules for one host with different TLS modes: both
//     admitted; istiod keeps the older one's traffic policy
//     (pilot/pkg/model/destination_rule.go mergeDestinationRule).
func TestRefusedAndConflictingPolicies(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	m := xdstest.Start(ctx, t, "lc-envoy-refused", captureNamespace, captureWorkloads()...)
	clients := map[string]*xds.Sidecar{}
	var all []*xds.Sidecar
	for _, w := range captureWorkloads() {
		if w.InMesh {
			clients[w.Name] = m.Sidecar(ctx, t, w.Name)
			all = append(all, clients[w.Name])
		}
	}
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	istio := m.Cluster.Env().Istio
	evaluate := func(what string, from, to string, port uint16) envoy.Outcome {
		t.Helper()
		nw, err := m.Network(captureWorkloads(), clients, bundle)
		if err != nil {
			t.Fatal(err)
		}
		out, err := envoy.Evaluate(nw, nw.Request(from, to, port))
		if err != nil {
			t.Fatalf("%s: %s -> %s:%d: %v", what, from, to, port, err)
		}
		t.Logf("%s: %s -> %s:%d: %s (mTLS %v) %s; decided by %s", what, from, to, port, out.Kind, out.MTLS != nil, out.Why, out.Trace.DecidedBy())
		for w, c := range clients {
			t.Logf("%s: %s's NACKs: %v", what, w, c.NACKs())
		}
		return out
	}

	// A PeerAuthentication STRICT whose port 8080 is PERMISSIVE, without
	// the selector port levels need: refused by the API server itself
	// (the CRD's validation rule), so it never reaches istiod.
	pa := &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "ports-without-selector", Namespace: captureNamespace},
		Spec: securityapi.PeerAuthentication{
			Mtls:          &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
			PortLevelMtls: map[uint32]*securityapi.PeerAuthentication_MutualTLS{8080: {Mode: securityapi.PeerAuthentication_MutualTLS_PERMISSIVE}},
		},
	}
	_, refusal := istio.SecurityV1().PeerAuthentications(captureNamespace).Create(ctx, pa, metav1.CreateOptions{})
	if refusal == nil || !strings.Contains(refusal.Error(), "portLevelMtls requires selector") {
		t.Fatalf("a PeerAuthentication with port levels and no selector was not refused for it: %v", refusal)
	}
	t.Logf("validation refuses it: %v", refusal)

	// A PeerAuthentication STRICT with a selector in the root namespace:
	// stored, and ignored by istiod ("PeerAuthentication policies with
	// workload selectors are ignored when deployed in the root
	// namespace"): plaintext from outside the mesh still reaches
	// service-b, and the sidecars accept what istiod pushes.
	applied := time.Now()
	ignored := &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "selector-in-root", Namespace: "istio-system"},
		Spec: securityapi.PeerAuthentication{
			Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "service-b"}},
			Mtls:     &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
		},
	}
	if _, err := istio.SecurityV1().PeerAuthentications("istio-system").Create(ctx, ignored, metav1.CreateOptions{}); err != nil {
		t.Fatalf("storing a selector PeerAuthentication in the root namespace: %v", err)
	}
	if _, err := xdstest.Settle(ctx, applied, all...); err != nil {
		t.Fatal(err)
	}
	if out := evaluate("selector PeerAuthentication in the root namespace", "legacy", "service-b", 80); out.Kind != envoy.Delivered || out.MTLS != nil {
		t.Errorf("legacy -> service-b:80: %s (mTLS %v), want plaintext delivered: istiod ignores the policy", out.Kind, out.MTLS != nil)
	}

	// Two namespace-wide PeerAuthentications: STRICT, then DISABLE. Istio
	// takes the oldest (pilot/pkg/model/authentication.go
	// GetNamespaceMutualTLSMode and the applier's ordering by creation).
	pas := func(name string, mode securityapi.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
		return &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: captureNamespace},
			Spec: securityapi.PeerAuthentication{Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: mode}}}
	}
	applied = time.Now()
	if _, err := istio.SecurityV1().PeerAuthentications(captureNamespace).Create(ctx, pas("first-strict", securityapi.PeerAuthentication_MutualTLS_STRICT), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // creation times have one-second resolution
	if _, err := istio.SecurityV1().PeerAuthentications(captureNamespace).Create(ctx, pas("second-disable", securityapi.PeerAuthentication_MutualTLS_DISABLE), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := xdstest.Settle(ctx, applied, all...); err != nil {
		t.Fatal(err)
	}
	if out := evaluate("conflicting namespace PeerAuthentications", "legacy", "service-b", 80); out.Kind != envoy.Closed {
		t.Errorf("legacy -> service-b:80 under conflicting PeerAuthentications: %s, want the connection closed (the older STRICT)", out.Kind)
	}
	for w, c := range clients {
		if n := c.NACKs(); len(n) > 0 {
			t.Errorf("%s NACKed what istiod served: %v", w, n)
		}
	}

	// Two DestinationRules for service-b: ISTIO_MUTUAL, then DISABLE.
	dr := func(name string, mode networkingapi.ClientTLSSettings_TLSmode) *networkingv1.DestinationRule {
		return &networkingv1.DestinationRule{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: captureNamespace},
			Spec: networkingapi.DestinationRule{Host: "service-b." + captureNamespace + ".svc.cluster.local",
				TrafficPolicy: &networkingapi.TrafficPolicy{Tls: &networkingapi.ClientTLSSettings{Mode: mode}}},
		}
	}
	applied = time.Now()
	if _, err := istio.NetworkingV1().DestinationRules(captureNamespace).Create(ctx, dr("first-istio-mutual", networkingapi.ClientTLSSettings_ISTIO_MUTUAL), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Creation times have a resolution of a second: the second rule must
	// be younger.
	time.Sleep(1100 * time.Millisecond)
	if _, err := istio.NetworkingV1().DestinationRules(captureNamespace).Create(ctx, dr("second-disable", networkingapi.ClientTLSSettings_DISABLE), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := xdstest.Settle(ctx, applied, all...); err != nil {
		t.Fatal(err)
	}
	if out := evaluate("conflicting DestinationRules", "service-a", "service-b", 80); out.Kind != envoy.Delivered || out.MTLS == nil {
		t.Errorf("service-a -> service-b:80 under conflicting DestinationRules: %s, want mutual TLS (the older rule's ISTIO_MUTUAL)", out.Kind)
	}
}
