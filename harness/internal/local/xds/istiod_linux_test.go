//go:build linux

package xds_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The client against the real istiod of a local cluster: each fixture's
// sidecar gets its configuration, ACKs every push, and sees a
// PeerAuthentication STRICT arrive as istiod renders it.
func TestSidecarsAgainstIstiod(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	ns := "xds"
	m := xdstest.Start(ctx, t, "lc-xds", ns)
	a := m.Sidecar(ctx, t, "service-a")
	b := m.Sidecar(ctx, t, "service-b")

	for name, sc := range map[string]*xds.Sidecar{"service-a": a, "service-b": b} {
		snap := sc.Snapshot()
		t.Logf("%s (%s): snapshot %d: %d listeners, %d clusters, %d endpoints, %d routes; unknown types %v; stream %+v",
			name, sc.Node().GetId(), snap.Seq, len(snap.Listeners), len(snap.Clusters), len(snap.Endpoints), len(snap.Routes), snap.Unknown, sc.Status())
		if n := sc.NACKs(); len(n) > 0 {
			t.Errorf("%s NACKed istiod's configuration: %v", name, n)
		}
		for _, l := range []string{"virtualInbound", "virtualOutbound"} {
			if snap.Listeners[l] == nil {
				t.Errorf("%s: no listener %s", name, l)
			}
		}
		if !strings.HasPrefix(sc.Node().GetId(), "sidecar~"+m.Pods[name].Status.PodIP+"~"+m.Pods[name].Name+"."+ns+"~"+ns+".svc.cluster.local") {
			t.Errorf("%s: node ID %s", name, sc.Node().GetId())
		}
	}

	// Endpoints: EDS lists each Service's pod, with tlsMode istio for the
	// sidecar pods only (istiod reads the pod label injection sets). A
	// sidecar pod is an endpoint once Ready, which is once its own Envoy's
	// configuration is complete: the push that adds service-b's pod may
	// reach service-a after service-a's first complete snapshot, as it
	// reaches a real Envoy.
	ectx, ecancel := context.WithTimeout(ctx, time.Minute)
	defer ecancel()
	snap, err := a.Wait(ectx, func(s *xds.Snapshot) bool {
		for _, w := range []string{"service-b", "legacy"} {
			if len(s.Endpoints["outbound|8080||"+w+"."+ns+".svc.cluster.local"].GetEndpoints()) == 0 {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatalf("service-a's Envoy got no endpoints of service-b and legacy within a minute: %v", err)
	}
	for w, wantMode := range map[string]string{"service-b": "istio", "legacy": ""} {
		cluster := "outbound|8080||" + w + "." + ns + ".svc.cluster.local"
		cla := snap.Endpoints[cluster]
		if snap.Clusters[cluster] == nil || cla == nil {
			t.Errorf("service-a has no cluster or endpoints %s", cluster)
			continue
		}
		var got []string
		for _, loc := range cla.GetEndpoints() {
			for _, ep := range loc.GetLbEndpoints() {
				mode := ep.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"].GetFields()["tlsMode"].GetStringValue()
				got = append(got, ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()+" tlsMode="+mode)
			}
		}
		if want := []string{m.Pods[w].Status.PodIP + " tlsMode=" + wantMode}; !slices.Equal(got, want) {
			t.Errorf("endpoints of %s: %v, want %v", cluster, got, want)
		}
	}

	// A namespace STRICT PeerAuthentication reaches service-b's inbound
	// listener: its port 8080 chains all require a client certificate.
	applied := m.Apply(ctx, t, &scenario.MTLSStep{PeerAuthentications: []scenario.PeerAuthentication{{Scope: scenario.ScopeNamespace, Namespace: ns, Mode: scenario.ModeStrict}}}, 1)
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	strict, err := b.Wait(wctx, func(s *xds.Snapshot) bool { return strictOn(s.Listeners["virtualInbound"], 8080) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("STRICT reached service-b in snapshot %d, pushed %s after the apply (%s version %s)",
		strict.Seq, strict.Accepted[xds.ListenerType].Received.Sub(applied).Round(time.Millisecond), "LDS", strict.Accepted[xds.ListenerType].Version)
	if n := b.NACKs(); len(n) > 0 {
		t.Errorf("service-b NACKed: %v", n)
	}
	if _, err := xds.MarshalSnapshot(strict); err != nil {
		t.Errorf("the snapshot does not marshal: %v", err)
	}
}

// strictOn reports whether every chain of l for port requires a client
// certificate (and there is at least one).
func strictOn(l *listenerv3.Listener, port uint32) bool {
	n := 0
	for _, fc := range l.GetFilterChains() {
		if fc.GetFilterChainMatch().GetDestinationPort().GetValue() != port {
			continue
		}
		n++
		d := &tlsv3.DownstreamTlsContext{}
		if fc.GetTransportSocket() == nil || fc.GetTransportSocket().GetTypedConfig().UnmarshalTo(d) != nil || !d.GetRequireClientCertificate().GetValue() {
			return false
		}
	}
	return n > 0
}
