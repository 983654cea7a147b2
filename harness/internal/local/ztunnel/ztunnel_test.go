package ztunnel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
)

// enc builds protobuf messages field by field, as istiod's encoder would.
type enc []byte

func (e enc) str(num protowire.Number, s string) enc {
	e = protowire.AppendTag(e, num, protowire.BytesType)
	return protowire.AppendString(e, s)
}

func (e enc) msg(num protowire.Number, m enc) enc {
	e = protowire.AppendTag(e, num, protowire.BytesType)
	return protowire.AppendBytes(e, m)
}

func (e enc) varint(num protowire.Number, v uint64) enc {
	e = protowire.AppendTag(e, num, protowire.VarintType)
	return protowire.AppendVarint(e, v)
}

// workloadMsg is an istio.workload.Workload for pod name, as istiod sends
// an ambient pod (HBONE) or a sidecar pod (tunnel NONE).
func workloadMsg(name, ip string, hbone bool, policies ...string) enc {
	a := netip.MustParseAddr(ip).As4()
	w := enc(nil).str(20, "Kubernetes//Pod/meshproof/"+name).str(1, name).str(2, "meshproof")
	w = protowire.AppendTag(w, 3, protowire.BytesType)
	w = protowire.AppendBytes(w, a[:])
	if hbone {
		w = w.varint(5, 1)
	}
	w = w.str(7, name).str(9, "node-0").str(10, name).str(11, "v1").str(13, name)
	for _, p := range policies {
		w = w.str(16, p)
	}
	w = w.str(18, "Kubernetes")
	entry := enc(nil).str(1, "meshproof/"+name+".meshproof.svc.cluster.local").msg(2, enc(nil).msg(1, enc(nil).varint(1, 8080).varint(2, 18080)))
	return w.msg(22, entry)
}

func serviceMsg(name, vip string) enc {
	a := netip.MustParseAddr(vip).As4()
	na := enc(nil)
	na = protowire.AppendTag(na, 2, protowire.BytesType)
	na = protowire.AppendBytes(na, a[:])
	return enc(nil).str(1, name).str(2, "meshproof").str(3, name+".meshproof.svc.cluster.local").msg(4, na).msg(5, enc(nil).varint(1, 8080).varint(2, 18080))
}

// staticStrictMsg is istiod's istio_converted_static_strict.
func staticStrictMsg() enc {
	match := enc(nil).msg(4, enc(nil).msg(4, nil))
	return enc(nil).str(1, "istio_converted_static_strict").str(2, "istio-system").varint(3, 2).varint(4, 1).
		msg(5, enc(nil).msg(1, enc(nil).msg(2, match)))
}

func TestDecodeAddressAndAuthorization(t *testing.T) {
	w, s, err := DecodeAddress(enc(nil).msg(1, workloadMsg("amb-a", "10.244.0.7", true, "istio-system/istio_converted_static_strict")))
	if err != nil || s != nil || w == nil {
		t.Fatalf("DecodeAddress(workload) = %v %v %v", w, s, err)
	}
	if w.Name != "amb-a" || w.Namespace != "meshproof" || w.Tunnel != TunnelHBONE || w.Identity() != "spiffe://cluster.local/ns/meshproof/sa/amb-a" ||
		!slices.Equal(w.Addresses, []netip.Addr{netip.MustParseAddr("10.244.0.7")}) || w.Node != "node-0" || w.WorkloadName != "amb-a" ||
		!slices.Equal(w.AuthorizationPolicies, []string{"istio-system/istio_converted_static_strict"}) {
		t.Errorf("workload = %+v", w)
	}
	if ports := w.Services["meshproof/amb-a.meshproof.svc.cluster.local"]; !slices.Equal(ports, []Port{{8080, 18080}}) {
		t.Errorf("services = %v", w.Services)
	}
	w, s, err = DecodeAddress(enc(nil).msg(2, serviceMsg("amb-a", "10.96.0.10")))
	if err != nil || w != nil || s == nil || s.Key() != "meshproof/amb-a.meshproof.svc.cluster.local" || !slices.Equal(s.Ports, []Port{{8080, 18080}}) {
		t.Errorf("DecodeAddress(service) = %+v %+v %v", w, s, err)
	}
	if _, _, err := DecodeAddress(enc(nil).str(7, "x")); err == nil {
		t.Error("an address with neither a workload nor a service decodes")
	}
	if _, _, err := DecodeAddress([]byte{0x0a, 0xff}); err == nil {
		t.Error("a truncated address decodes")
	}
	a, err := DecodeAuthorization(staticStrictMsg())
	if err != nil {
		t.Fatal(err)
	}
	if a.Key() != "istio-system/istio_converted_static_strict" || a.Action != ActionDeny || a.Scope != ScopeWorkloadSelector ||
		len(a.Groups) != 1 || len(a.Groups[0]) != 1 || len(a.Groups[0][0]) != 1 || len(a.Groups[0][0][0].NotPrincipals) != 1 || !a.Groups[0][0][0].NotPrincipals[0].Presence {
		t.Errorf("authorization = %+v", a)
	}
}

// The ztunnel's authorization as ztunnel evaluates it: the static STRICT
// policy denies a peer without a principal and allows one with; a
// converted port exception and ALLOW policies follow src/rbac.rs.
func TestAuthorize(t *testing.T) {
	strict, err := DecodeAuthorization(staticStrictMsg())
	if err != nil {
		t.Fatal(err)
	}
	// converted_peer_authentication_b: DENY no principal, unless port 9090.
	conv := &Authorization{Name: "converted_peer_authentication_b", Namespace: "meshproof", Scope: ScopeWorkloadSelector, Action: ActionDeny,
		Groups: [][][]Match{{{{NotPrincipals: []StringMatch{{Presence: true, kind: 4}}}}, {{NotDestination: []uint32{9090}}}}}}
	allowA := &Authorization{Name: "allow-a", Namespace: "meshproof", Scope: ScopeNamespace, Action: ActionAllow,
		Groups: [][][]Match{{{{Principals: []StringMatch{{Exact: "cluster.local/ns/meshproof/sa/a", kind: 1}}}}}}}
	policies := map[string]*Authorization{strict.Key(): strict, conv.Key(): conv}
	dst := &Workload{Name: "b", Namespace: "meshproof", AuthorizationPolicies: []string{strict.Key()}}
	conn := func(id string, port uint16) Connection {
		return Connection{SrcIdentity: id, Src: netip.MustParseAddr("10.244.0.5"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.244.0.6"), port)}
	}
	for _, tc := range []struct {
		name     string
		policies []string
		extra    *Authorization
		c        Connection
		denied   string // "" allowed, else the rejection's text
	}{
		{"plaintext under static strict", []string{strict.Key()}, nil, conn("", 8080), "explicitly denied by: istio-system/istio_converted_static_strict"},
		{"HBONE under static strict", []string{strict.Key()}, nil, conn("spiffe://cluster.local/ns/meshproof/sa/a", 8080), ""},
		{"no policy", nil, nil, conn("", 8080), ""},
		{"unknown policy skipped", []string{"meshproof/gone"}, nil, conn("", 8080), ""},
		{"port exception: other port", []string{conv.Key()}, nil, conn("", 8080), "explicitly denied by: meshproof/converted_peer_authentication_b"},
		{"port exception: its port", []string{conv.Key()}, nil, conn("", 9090), ""},
		{"allow matches", nil, allowA, conn("spiffe://cluster.local/ns/meshproof/sa/a", 8080), ""},
		{"allow does not match", nil, allowA, conn("spiffe://cluster.local/ns/meshproof/sa/c", 8080), "allow policies exist, but none allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := map[string]*Authorization{}
			for k, v := range policies {
				ps[k] = v
			}
			if tc.extra != nil {
				ps[tc.extra.Key()] = tc.extra
			}
			d := *dst
			d.AuthorizationPolicies = tc.policies
			rej, err := authorize(ps, &d, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.denied == "" && rej != nil:
				t.Errorf("denied: %v", rej)
			case tc.denied != "" && (rej == nil || !strings.Contains(rej.Error(), tc.denied)):
				t.Errorf("rejection %v, want %q", rej, tc.denied)
			}
		})
	}
	ext := &Authorization{Name: "x", Namespace: "meshproof", Scope: ScopeNamespace, Action: ActionDeny, Extensions: 1}
	if _, err := authorize(map[string]*Authorization{ext.Key(): ext}, dst, conn("", 8080)); err == nil || !strings.Contains(err.Error(), "cannot decide") {
		t.Errorf("a policy with extensions: %v, want undecidable", err)
	}
}

// The state follows istiod's incremental pushes: added, replaced and
// removed resources, and a response that does not decode is rejected
// with the state left as it was.
func TestStateFollowsPushes(t *testing.T) {
	s := newState()
	any := func(typ string, b []byte) *anypb.Any { return &anypb.Any{TypeUrl: typ, Value: b} }
	push := func(r xds.Response) error { r.Received = time.Now(); return s.Handle(r) }
	if err := push(xds.Response{Protocol: xds.Incremental, TypeURL: AddressType, Resources: []xds.Resource{
		{Name: "Kubernetes//Pod/meshproof/amb-a", Body: any(AddressType, enc(nil).msg(1, workloadMsg("amb-a", "10.244.0.7", true)))},
		{Name: "meshproof/amb-a.meshproof.svc.cluster.local", Body: any(AddressType, enc(nil).msg(2, serviceMsg("amb-a", "10.96.0.10")))},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := push(xds.Response{Protocol: xds.Incremental, TypeURL: AuthorizationType, Resources: []xds.Resource{
		{Name: "istio-system/istio_converted_static_strict", Body: any(AuthorizationType, staticStrictMsg())},
	}}); err != nil {
		t.Fatal(err)
	}
	snap := s.snapshot()
	if len(snap.Workloads) != 1 || len(snap.Services) != 1 || len(snap.Policies) != 1 || snap.ServiceByVIP(netip.MustParseAddr("10.96.0.10")) == nil {
		t.Fatalf("snapshot = %+v", snap)
	}
	bad := xds.Response{Protocol: xds.Incremental, TypeURL: AddressType, Resources: []xds.Resource{
		{Name: "x", Body: any(AddressType, []byte{0x0a, 0xff})},
	}, Removed: []string{"Kubernetes//Pod/meshproof/amb-a"}}
	if err := push(bad); err == nil {
		t.Error("an undecodable push is accepted")
	}
	if len(s.snapshot().Workloads) != 1 {
		t.Error("a rejected push changed the state")
	}
	if err := push(xds.Response{Protocol: xds.Incremental, TypeURL: AddressType, Removed: []string{"Kubernetes//Pod/meshproof/amb-a"}}); err != nil {
		t.Fatal(err)
	}
	if err := push(xds.Response{Protocol: xds.Incremental, TypeURL: AuthorizationType, Removed: []string{"istio-system/istio_converted_static_strict"}}); err != nil {
		t.Fatal(err)
	}
	if snap := s.snapshot(); len(snap.Workloads) != 0 || len(snap.Policies) != 0 {
		t.Errorf("after removals: %+v", snap)
	}
}

// The metrics are ztunnel's wire format: the sidecar witness's parser
// reads them, with reporter, security policy and principals, and a denied
// plaintext connection counted as opened, then closed and failed with
// DENY.
func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	a := &Workload{Name: "a", Namespace: "meshproof", ServiceAccount: "a", WorkloadName: "a", CanonicalName: "a", CanonicalRevision: "v1", ClusterID: "Kubernetes"}
	b := &Workload{Name: "b", Namespace: "meshproof", ServiceAccount: "b", WorkloadName: "b", CanonicalName: "b", CanonicalRevision: "v1", ClusterID: "Kubernetes"}
	z := &Ztunnel{metrics: m}
	z.RecordInbound(Conn{Source: a, Destination: b, HBONE: true, SourceIdentity: a.Identity(), Received: 10, Sent: 20})
	z.RecordInbound(Conn{Source: a, Destination: b, HBONE: true, SourceIdentity: a.Identity()})
	z.RecordInbound(Conn{Destination: b, Denied: true})
	text := string(z.Metrics())
	if !strings.HasPrefix(text, "# HELP istio_tcp_connections_opened The total number of TCP connections opened.\n# TYPE istio_tcp_connections_opened counter\n") || !strings.HasSuffix(text, "# EOF\n") {
		t.Errorf("exposition framing:\n%s", text)
	}
	samples, err := istiostats.Parse([]byte(text), istiostats.TCPConnectionsOpened)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, s := range samples {
		counts[s.Labels[istiostats.LabelReporter]+" "+s.Labels[istiostats.LabelSecurityPolicy]+" "+s.Labels[istiostats.LabelSourcePrincipal]+" "+s.Labels[istiostats.LabelDestinationPrincipal]] += s.Value
	}
	want := map[string]float64{
		"destination mutual_tls spiffe://cluster.local/ns/meshproof/sa/a spiffe://cluster.local/ns/meshproof/sa/b": 2,
		"destination unknown unknown spiffe://cluster.local/ns/meshproof/sa/b":                                     1,
	}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("opened %q = %v, want %v; all: %v", k, counts[k], v, counts)
		}
	}
	failed, err := istiostats.Parse([]byte(text), "istio_tcp_connections_failed_total")
	if err != nil || len(failed) != 1 || failed[0].Labels["response_flags"] != FlagPolicyDenied {
		t.Errorf("failed samples %+v %v, want the denied one with response_flags DENY", failed, err)
	}
}

func TestNode(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "ztunnel-abcde"}, Spec: corev1.PodSpec{NodeName: "node-0"},
		Status: corev1.PodStatus{PodIP: "10.244.0.3"}}
	n, err := Node(pod, map[string]string{"ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_ENABLE_HBONE": "true", "RUST_LOG": "info"})
	if err != nil {
		t.Fatal(err)
	}
	if n.GetId() != "ztunnel~10.244.0.3~ztunnel-abcde.istio-system~istio-system.svc.cluster.local" {
		t.Errorf("node ID %q", n.GetId())
	}
	meta := n.GetMetadata().AsMap()
	for k, v := range map[string]any{"NAME": "ztunnel-abcde", "NAMESPACE": "istio-system", "NODE_NAME": "node-0", "INSTANCE_IPS": "10.244.0.3", "CLUSTER_ID": "Kubernetes", "ENABLE_HBONE": "true"} {
		if meta[k] != v {
			t.Errorf("metadata %s = %v, want %v", k, meta[k], v)
		}
	}
	if _, ok := meta["RUST_LOG"]; ok {
		t.Error("a variable without ISTIO_META_ is metadata")
	}
}
