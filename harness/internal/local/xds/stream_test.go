package xds

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// scriptedServer is an ADS server a test drives by hand: it hands every
// request it receives to the test and sends what the test gives it. It
// stands in for istiod only in these unit tests of the protocol; the
// client's proof against the real istiod is in sidecar_istiod_test.go.
type scriptedServer struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	requests chan *discoveryv3.DiscoveryRequest
	deltas   chan *discoveryv3.DeltaDiscoveryRequest
	send     chan proto.Message
	// hangUp ends the current stream.
	hangUp chan struct{}
}

func (s *scriptedServer) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	errs := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errs <- err
				return
			}
			s.requests <- req
		}
	}()
	for {
		select {
		case m := <-s.send:
			if err := stream.Send(m.(*discoveryv3.DiscoveryResponse)); err != nil {
				return err
			}
		case err := <-errs:
			return err
		case <-s.hangUp:
			return nil
		}
	}
}

func (s *scriptedServer) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	errs := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errs <- err
				return
			}
			s.deltas <- req
		}
	}()
	for {
		select {
		case m := <-s.send:
			if err := stream.Send(m.(*discoveryv3.DeltaDiscoveryResponse)); err != nil {
				return err
			}
		case err := <-errs:
			return err
		case <-s.hangUp:
			return nil
		}
	}
}

func startServer(t *testing.T) (*scriptedServer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &scriptedServer{requests: make(chan *discoveryv3.DiscoveryRequest, 100), deltas: make(chan *discoveryv3.DeltaDiscoveryRequest, 100),
		send: make(chan proto.Message), hangUp: make(chan struct{})}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return srv, lis.Addr().String()
}

func (s *scriptedServer) next(t *testing.T) *discoveryv3.DiscoveryRequest {
	t.Helper()
	select {
	case r := <-s.requests:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no request from the client within 10s")
		return nil
	}
}

func (s *scriptedServer) respond(t *testing.T, typeURL, version, nonce string, resources ...proto.Message) {
	t.Helper()
	resp := &discoveryv3.DiscoveryResponse{TypeUrl: typeURL, VersionInfo: version, Nonce: nonce}
	for _, r := range resources {
		a, err := anypb.New(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Resources = append(resp.Resources, a)
	}
	select {
	case s.send <- resp:
	case <-time.After(10 * time.Second):
		t.Fatal("the server could not send within 10s")
	}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		ConnectTimeout:   nil}
}

func rdsListener(t *testing.T, name, route string, port uint32) *listenerv3.Listener {
	t.Helper()
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: name, RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
		RouteConfigName: route, ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{Name: name, Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "0.0.0.0", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
}

// TestSidecarFollowsEnvoysOrder drives one stream through Envoy's order of
// subscriptions, an ACK per response (version and nonce), a NACK of an
// invalid listener that keeps the previous configuration, and a
// reconnection that sends the versions held.
func TestSidecarFollowsEnvoysOrder(t *testing.T) {
	srv, addr := startServer(t)
	node := &corev3.Node{Id: "sidecar~10.244.0.4~a-1.ns~ns.svc.cluster.local"}
	sc := NewSidecar(addr, node, WithStreamOptions(WithReconnectBackoff(10*time.Millisecond)))
	if err := sc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer sc.Stop()

	req := srv.next(t)
	if req.GetTypeUrl() != ClusterType || len(req.GetResourceNames()) != 0 || req.GetNode().GetId() != node.Id {
		t.Fatalf("first request: %v, want a wildcard CDS request with the node", req)
	}
	srv.respond(t, ClusterType, "v1", "n1", edsCluster("outbound|8080||b.ns.svc.cluster.local"))
	ack := srv.next(t)
	if ack.GetTypeUrl() != ClusterType || ack.GetVersionInfo() != "v1" || ack.GetResponseNonce() != "n1" || ack.GetErrorDetail() != nil || ack.GetNode() != nil {
		t.Fatalf("CDS ACK: %v", ack)
	}
	eds := srv.next(t)
	if eds.GetTypeUrl() != EndpointType || !slices.Equal(eds.GetResourceNames(), []string{"outbound|8080||b.ns.svc.cluster.local"}) {
		t.Fatalf("after CDS: %v, want an EDS request for the cluster", eds)
	}
	srv.respond(t, EndpointType, "v1", "n2", &endpointv3.ClusterLoadAssignment{ClusterName: "outbound|8080||b.ns.svc.cluster.local"})
	if ack := srv.next(t); ack.GetTypeUrl() != EndpointType || ack.GetResponseNonce() != "n2" {
		t.Fatalf("EDS ACK: %v", ack)
	}
	if lds := srv.next(t); lds.GetTypeUrl() != ListenerType || len(lds.GetResourceNames()) != 0 {
		t.Fatalf("after EDS: %v, want a wildcard LDS request", lds)
	}
	srv.respond(t, ListenerType, "v1", "n3", rdsListener(t, "0.0.0.0_8080", "8080", 8080))
	if ack := srv.next(t); ack.GetTypeUrl() != ListenerType || ack.GetVersionInfo() != "v1" {
		t.Fatalf("LDS ACK: %v", ack)
	}
	if rds := srv.next(t); rds.GetTypeUrl() != RouteType || !slices.Equal(rds.GetResourceNames(), []string{"8080"}) {
		t.Fatalf("after LDS: %v, want an RDS request for route 8080", rds)
	}
	srv.respond(t, RouteType, "v1", "n4", &routev3.RouteConfiguration{Name: "8080"})
	if ack := srv.next(t); ack.GetTypeUrl() != RouteType || ack.GetResponseNonce() != "n4" {
		t.Fatalf("RDS ACK: %v", ack)
	}
	snap, err := sc.Wait(context.Background(), (*Snapshot).Warm)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Seq != 4 || len(snap.Listeners) != 1 || len(snap.Clusters) != 1 || len(snap.Endpoints) != 1 || len(snap.Routes) != 1 {
		t.Fatalf("snapshot %d: %d listeners, %d clusters, %d endpoints, %d routes", snap.Seq, len(snap.Listeners), len(snap.Clusters), len(snap.Endpoints), len(snap.Routes))
	}
	if snap.Accepted[ListenerType].Version != "v1" || snap.Push.TypeURL != RouteType || snap.Push.Received.IsZero() {
		t.Fatalf("snapshot pushes: %+v, last %+v", snap.Accepted, snap.Push)
	}

	// Two filter chains matching the same connections: Envoy rejects the
	// listener, so the client NACKs, keeping version v1.
	dup := rdsListener(t, "0.0.0.0_8080", "8080", 8080)
	dup.FilterChains = append(dup.FilterChains, proto.Clone(dup.FilterChains[0]).(*listenerv3.FilterChain))
	srv.respond(t, ListenerType, "v2", "n5", dup)
	nack := srv.next(t)
	if nack.GetTypeUrl() != ListenerType || nack.GetVersionInfo() != "v1" || nack.GetResponseNonce() != "n5" ||
		!strings.Contains(nack.GetErrorDetail().GetMessage(), "multiple filter chains with overlapping matching rules are defined") {
		t.Fatalf("NACK: %v", nack)
	}
	if got := sc.NACKs(); len(got) != 1 || got[0].Push.Version != "v2" {
		t.Fatalf("NACKs: %v", got)
	}
	if sc.Snapshot().Seq != 4 {
		t.Fatalf("a NACKed push made snapshot %d", sc.Snapshot().Seq)
	}
	// A filter without a name fails its proto constraints.
	unnamed := rdsListener(t, "0.0.0.0_8080", "8080", 8080)
	unnamed.FilterChains[0].Filters[0].Name = ""
	srv.respond(t, ListenerType, "v3", "n6", unnamed)
	if nack := srv.next(t); nack.GetErrorDetail() == nil || !strings.Contains(nack.GetErrorDetail().GetMessage(), "validation") {
		t.Fatalf("NACK of an invalid listener: %v", nack)
	}

	// istiod restarts: the client opens a new stream and says what it holds.
	srv.hangUp <- struct{}{}
	again := srv.next(t)
	if again.GetTypeUrl() != ClusterType || again.GetVersionInfo() != "v1" || again.GetNode().GetId() != node.Id {
		t.Fatalf("first request after reconnecting: %v, want CDS at v1 with the node", again)
	}
	if st := sc.Status(); st.Opened != 2 || st.NACKs != 2 || st.ACKs != 4 {
		t.Fatalf("status %+v", st)
	}
}

// TestDeltaStream is the incremental protocol as ztunnel speaks it: a
// wildcard subscription, resources added and removed, ACKs by nonce, and
// the resources held announced again after a reconnection.
func TestDeltaStream(t *testing.T) {
	srv, addr := startServer(t)
	h := &recordingHandler{subs: []Subscription{{TypeURL: "type.googleapis.com/google.protobuf.StringValue"}}}
	s := NewStream(addr, &corev3.Node{Id: "ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local"}, Incremental, h, WithReconnectBackoff(10*time.Millisecond))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	next := func() *discoveryv3.DeltaDiscoveryRequest {
		select {
		case r := <-srv.deltas:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no request within 10s")
			return nil
		}
	}
	first := next()
	if !slices.Equal(first.GetResourceNamesSubscribe(), []string{"*"}) || first.GetNode() == nil {
		t.Fatalf("first request %v", first)
	}
	a, _ := anypb.New(wrapperspb.String("w1"))
	srv.send <- &discoveryv3.DeltaDiscoveryResponse{TypeUrl: h.subs[0].TypeURL, Nonce: "d1", Resources: []*discoveryv3.Resource{{Name: "w1", Version: "1", Resource: a}}}
	if ack := next(); ack.GetResponseNonce() != "d1" || ack.GetErrorDetail() != nil {
		t.Fatalf("ACK %v", ack)
	}
	h.reject = true
	srv.send <- &discoveryv3.DeltaDiscoveryResponse{TypeUrl: h.subs[0].TypeURL, Nonce: "d2", RemovedResources: []string{"w1"}}
	if nack := next(); nack.GetResponseNonce() != "d2" || nack.GetErrorDetail() == nil {
		t.Fatalf("NACK %v", nack)
	}
	srv.hangUp <- struct{}{}
	again := next()
	if again.GetInitialResourceVersions()["w1"] != "1" {
		t.Fatalf("after reconnecting: %v, want w1 at version 1 announced (the removal was NACKed)", again)
	}
}

type recordingHandler struct {
	subs   []Subscription
	reject bool
}

func (h *recordingHandler) Subscriptions() []Subscription { return h.subs }
func (h *recordingHandler) Handle(Response) error {
	if h.reject {
		return errTest
	}
	return nil
}

var errTest = &testError{}

type testError struct{}

func (*testError) Error() string { return "rejected by the test" }
