package ztunnel_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/internal/local/ztunnel"
	"github.com/meshproof/meshproof/harness/scenario"
)

// TestAgainstIstiod holds the simulated ztunnel to what the real istiod
// serves a ztunnel: a local cluster with Istio 1.30.3's charts in the
// ambient profile (istiod with PILOT_ENABLE_AMBIENT, the cni and ztunnel
// DaemonSets on the kwok node), two ambient workloads, a sidecar and an
// out-of-mesh one. The ztunnel pod's simulated ztunnel connects with the
// node the real ztunnel builds; the test checks what its decoder made of
// istiod's answers (workloads with their tunnel protocol, services, the
// STRICT authorization), that istio-cni's enrolment made the ambient pods
// HBONE in istiod's eyes, and the decisions taken from that state.
func TestAgainstIstiod(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	const ns = "ztunnel-test"
	workloads := []manifests.Workload{
		{Name: "service-a", Namespace: ns, InMesh: true},
		{Name: "amb-a", Namespace: ns, InMesh: true, Ambient: true},
		{Name: "amb-b", Namespace: ns, InMesh: true, Ambient: true},
		{Name: "legacy", Namespace: ns, InMesh: false},
	}
	m := xdstest.StartAmbient(ctx, t, "lc-ztunnel", ns, workloads...)
	amb := m.Pods["amb-a"]
	var z *ztunnel.Ztunnel
	wait1 := func(what string, cond func() (bool, error)) {
		t.Helper()
		var last error
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
			ok, err := cond()
			last = err
			return ok, nil
		}); err != nil {
			t.Fatalf("waiting for %s: %v (last: %v)", what, err, last)
		}
	}
	wait1("the node's ztunnel", func() (bool, error) {
		var err error
		z, err = m.Cluster.Ambient().Ztunnel(amb.Spec.NodeName)
		return err == nil && z.Synced(), err
	})
	if st := z.Status(); st.NACKs > 0 {
		t.Fatalf("the ztunnel NACKed istiod: %+v", st)
	}
	// istio-cni's enrolment: the ambient pods are annotated, the others
	// not, and istiod marks the enrolled ones HBONE.
	wait1("istio-cni's annotation on the ambient pods", func() (bool, error) {
		for name, w := range map[string]bool{"amb-a": true, "amb-b": true, "service-a": false, "legacy": false} {
			p := m.Pod(ctx, t, name)
			if got := p.Annotations[ztunnel.RedirectionAnnotation] == ztunnel.RedirectionEnabled; got != w {
				return false, nil
			}
		}
		return true, nil
	})
	ip := func(name string) netip.Addr { return netip.MustParseAddr(m.Pods[name].Status.PodIP) }
	wait1("istiod's workloads as the ztunnel holds them", func() (bool, error) {
		snap := z.Snapshot()
		want := map[string]ztunnel.TunnelProtocol{"amb-a": ztunnel.TunnelHBONE, "amb-b": ztunnel.TunnelHBONE,
			// The ambient profile's ISTIO_META_ENABLE_HBONE makes injected
			// sidecars HBONE-capable.
			"service-a": ztunnel.TunnelHBONE, "legacy": ztunnel.TunnelNone}
		for name, proto := range want {
			w := snap.WorkloadByIP(ip(name))
			if w == nil || w.Tunnel != proto || w.Name != m.Pods[name].Name || w.Namespace != ns || w.ServiceAccount != name {
				return false, nil
			}
		}
		return true, nil
	})
	for name := range m.Pods {
		w := z.Snapshot().WorkloadByIP(ip(name))
		t.Logf("istiod's workload %s: %s/%s sa %s tunnel %s node %s workloadName %s services %v policies %v", name, w.Namespace, w.Name, w.ServiceAccount, w.Tunnel, w.Node, w.WorkloadName, w.Services, w.AuthorizationPolicies)
		if w.WorkloadName != name || w.Node != amb.Spec.NodeName {
			t.Errorf("workload %s: workloadName %q node %q, want %q %q", name, w.WorkloadName, w.Node, name, amb.Spec.NodeName)
		}
	}
	vip := netip.MustParseAddr(m.Services["amb-b"].Spec.ClusterIP)
	if svc := z.Snapshot().ServiceByVIP(vip); svc == nil || svc.Hostname != "amb-b."+ns+".svc.cluster.local" {
		t.Fatalf("service of amb-b (%s): %+v", vip, svc)
	}

	// Decisions from that state, without a policy: HBONE to ambient and
	// sidecar pods, TCP to the out-of-mesh one; plaintext allowed in.
	for dst, want := range map[string]ztunnel.TunnelProtocol{"amb-b": ztunnel.TunnelHBONE, "service-a": ztunnel.TunnelHBONE, "legacy": ztunnel.TunnelNone} {
		up, err := z.Outbound(ip("amb-a"), netip.MustParseAddr(m.Services[dst].Spec.ClusterIP), 8080, ip(dst))
		if err != nil || up.Protocol != want || up.Port != 8080 {
			t.Errorf("amb-a -> %s: %+v %v, want %s to port 8080", dst, up, err, want)
		}
	}
	plain := ztunnel.Connection{Src: ip("legacy"), Dst: netip.AddrPortFrom(ip("amb-b"), 8080)}
	if _, rej, err := z.Inbound(ip("amb-b"), plain); err != nil || rej != nil {
		t.Errorf("plaintext to amb-b without policies: %v %v", rej, err)
	}

	// Namespace STRICT: istiod's static STRICT authorization is attached to
	// the ambient workloads, and plaintext is denied by it.
	applied := m.Apply(ctx, t, &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{{Scope: scenario.ScopeNamespace, Namespace: ns, Mode: scenario.ModeStrict}}}, 1)
	wait1("the STRICT authorization", func() (bool, error) {
		w := z.Snapshot().WorkloadByIP(ip("amb-b"))
		return w != nil && slices.Contains(w.AuthorizationPolicies, "istio-system/istio_converted_static_strict") &&
			z.Snapshot().Policies["istio-system/istio_converted_static_strict"] != nil, nil
	})
	t.Logf("STRICT reached the ztunnel %s after the apply", time.Since(applied).Round(time.Millisecond))
	_, rej, err := z.Inbound(ip("amb-b"), plain)
	if err != nil || rej == nil || rej.Policy != "istio-system/istio_converted_static_strict" {
		t.Errorf("plaintext to amb-b under STRICT: %v %v, want denied by the static STRICT policy", rej, err)
	}
	hbone := ztunnel.Connection{SrcIdentity: "spiffe://cluster.local/ns/" + ns + "/sa/amb-a", Src: ip("amb-a"), Dst: netip.AddrPortFrom(ip("amb-b"), 8080)}
	if _, rej, err := z.Inbound(ip("amb-b"), hbone); err != nil || rej != nil {
		t.Errorf("HBONE to amb-b under STRICT: %v %v", rej, err)
	}

	// A workload policy with a PERMISSIVE port becomes a converted
	// authorization of its own.
	m.Apply(ctx, t, &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{
		{Scope: scenario.ScopeWorkload, Namespace: ns, Workload: "amb-b", Mode: scenario.ModeStrict, Ports: []scenario.PortMode{{Port: 9090, Mode: scenario.ModePermissive}}},
	}}, 2)
	wait1("the converted workload policy", func() (bool, error) {
		w := z.Snapshot().WorkloadByIP(ip("amb-b"))
		return w != nil && slices.ContainsFunc(w.AuthorizationPolicies, func(p string) bool { return p != "istio-system/istio_converted_static_strict" }) &&
			!slices.Contains(w.AuthorizationPolicies, "istio-system/istio_converted_static_strict"), nil
	})
	for port, denied := range map[uint16]bool{8080: true, 9090: false} {
		c := plain
		c.Dst = netip.AddrPortFrom(ip("amb-b"), port)
		_, rej, err := z.Inbound(ip("amb-b"), c)
		if err != nil || (rej != nil) != denied {
			t.Errorf("plaintext to amb-b:%d under STRICT with 9090 PERMISSIVE: %v %v, want denied %t", port, rej, err, denied)
		}
	}
	if st := z.Status(); st.NACKs > 0 {
		t.Errorf("the ztunnel NACKed istiod: %+v", st)
	}
}
