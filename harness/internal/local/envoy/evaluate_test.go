package envoy_test

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
)

// loadCapture reads a cell's capture as the evaluator's network.
func loadCapture(t *testing.T, cell string, bundle *ca.Bundle) *xdstest.Network {
	t.Helper()
	file := xdstest.CaptureFile(cell)
	c, snaps, err := xdstest.ReadCapture(file)
	if err != nil {
		t.Fatalf("%v (regenerate with go test ./harness/internal/local/envoy -run TestCaptureFromIstiod -update)", err)
	}
	n, err := xdstest.NewNetwork(c, snaps, bundle)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// want is what a pair must come to: kind, whether the server received it
// over mutual TLS, and for a local reply its status and a piece of its
// body.
type want struct {
	kind   envoy.Kind
	mtls   bool
	status int
	body   string
}

var (
	mtls        = want{kind: envoy.Delivered, mtls: true}
	plaintext   = want{kind: envoy.Delivered}
	closed      = want{kind: envoy.Closed}
	reply503    = want{kind: envoy.LocalReply, status: 503, body: "connection termination"}
	reply503TLS = want{kind: envoy.LocalReply, status: 503, body: "TLS_error"}
)

type pair struct {
	from, to string
	port     uint16
}

// The evaluator on configurations the real istiod served, cell by cell:
// what Istio's documentation and its own reachability tests say each
// policy does to each pair (Istio's authentication policy task: a client
// without sidecar is reset by STRICT; DestinationRule DISABLE towards
// STRICT gets the client sidecar's 503; auto mTLS honours a workload or
// port DISABLE; istiod infers a service's mode from namespace policies
// only, so a workload STRICT under namespace DISABLE gets plaintext from
// auto mTLS clients).
func TestEvaluateCaptures(t *testing.T) {
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]map[pair]want{
		"default": {
			{"service-a", "service-b", 80}: mtls, {"service-a", "service-b", 9000}: mtls, {"service-a", "service-b", 7070}: mtls,
			{"legacy", "service-b", 80}: plaintext, {"legacy", "service-b", 9000}: plaintext, {"legacy", "service-b", 7070}: plaintext,
			{"service-a", "legacy", 80}: plaintext, {"service-a", "legacy", 9000}: plaintext,
		},
		"namespace STRICT": {
			{"service-a", "service-b", 80}: mtls, {"service-a", "service-b", 9000}: mtls, {"service-a", "service-b", 7070}: mtls,
			{"legacy", "service-b", 80}: closed, {"legacy", "service-b", 9000}: closed, {"legacy", "service-b", 7070}: closed,
			{"service-a", "legacy", 80}: plaintext,
		},
		"namespace STRICT, DR DISABLE": {
			{"service-a", "service-b", 80}: reply503, {"service-a", "service-b", 9000}: closed,
		},
		"namespace STRICT, DR SIMPLE": {
			{"service-a", "service-b", 80}: reply503TLS,
		},
		"namespace DISABLE": {
			{"service-a", "service-b", 80}: plaintext, {"service-a", "service-b", 9000}: plaintext, {"legacy", "service-b", 80}: plaintext,
		},
		"namespace PERMISSIVE, workload DISABLE, port 19000 STRICT": {
			{"service-a", "service-b", 80}: plaintext, {"service-a", "service-b", 9000}: mtls,
			{"legacy", "service-b", 80}: plaintext, {"legacy", "service-b", 9000}: closed,
		},
		"mesh PERMISSIVE, namespace DISABLE, workload STRICT": {
			{"service-a", "service-b", 80}: reply503, {"legacy", "service-b", 80}: closed,
		},
		"mesh DR ISTIO_MUTUAL": {
			{"service-a", "service-b", 80}: mtls, {"service-a", "legacy", 80}: reply503TLS,
		},
	}
	for _, cell := range captureCells {
		t.Run(cell.name, func(t *testing.T) {
			n := loadCapture(t, cell.name, bundle)
			for p, w := range cases[cell.name] {
				req := n.Request(p.from, p.to, p.port)
				proto := req.Protocol
				out, err := envoy.Evaluate(n, req)
				if err != nil {
					t.Errorf("%s -> %s:%d: %v\ntrace: %s", p.from, p.to, p.port, err, out.Trace)
					continue
				}
				got := fmt.Sprintf("%s mtls=%v", out.Kind, out.MTLS != nil)
				if out.Kind != w.kind || (out.MTLS != nil) != w.mtls || (w.status != 0 && out.Status != w.status) || !strings.Contains(out.Body, w.body) {
					t.Errorf("%s -> %s:%d: %s %d %q (%s), want %s mtls=%v %d %q\ntrace: %s", p.from, p.to, p.port, got, out.Status, out.Body, out.Why, w.kind, w.mtls, w.status, w.body, out.Trace)
					continue
				}
				t.Logf("%s -> %s:%d: %s (%s); decided by %s", p.from, p.to, p.port, got, out.Why, out.Trace.DecidedBy())
				checkDetails(t, p, proto, out)
			}
		})
	}
}

// checkDetails holds a delivered mTLS request to what the probe reads: the
// XFCC element the server's sidecar added (HTTP, gRPC), or the TCP count
// its istio.stats filter made.
func checkDetails(t *testing.T, p pair, proto envoy.Protocol, out envoy.Outcome) {
	t.Helper()
	if out.Kind != envoy.Delivered {
		return
	}
	clientID := "spiffe://cluster.local/ns/" + captureNamespace + "/sa/" + p.from
	serverID := "spiffe://cluster.local/ns/" + captureNamespace + "/sa/" + p.to
	switch {
	case proto == envoy.TCP && out.TCPCount == nil && out.MTLS != nil:
		t.Errorf("%s -> %s:%d: an mTLS TCP connection counted by no istio.stats filter", p.from, p.to, p.port)
	case proto == envoy.TCP && out.MTLS != nil && (out.TCPCount.Policy != envoy.PolicyMutualTLS || out.TCPCount.SourcePrincipal != clientID):
		t.Errorf("%s -> %s:%d: counted %+v", p.from, p.to, p.port, out.TCPCount)
	case proto != envoy.TCP && out.MTLS != nil && (!strings.Contains(out.XFCC, "By="+serverID) || !strings.Contains(out.XFCC, "URI="+clientID)):
		t.Errorf("%s -> %s:%d: XFCC %q, want By=%s and URI=%s", p.from, p.to, p.port, out.XFCC, serverID, clientID)
	case proto != envoy.TCP && out.MTLS == nil && out.XFCC != "":
		t.Errorf("%s -> %s:%d: plaintext with XFCC %q", p.from, p.to, p.port, out.XFCC)
	}
}

// An endpoint EDS still lists after its pod went away (the client's
// sidecar has not had the push yet) refuses the connection; the route's
// retry policy (Istio's: retry_on connect-failure, two retries, the
// previous_hosts predicate) sends the request to another endpoint, as
// Envoy's router does.
func TestRetryOnAnotherEndpoint(t *testing.T) {
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	n := loadCapture(t, "namespace STRICT", bundle)
	a := n.Hosts["service-a"]
	snap := *a.Sidecar.Config
	cluster := "outbound|80||service-b." + captureNamespace + ".svc.cluster.local"
	cla := proto.Clone(snap.Endpoints[cluster]).(*endpointv3.ClusterLoadAssignment)
	gone := proto.Clone(cla.GetEndpoints()[0].GetLbEndpoints()[0]).(*endpointv3.LbEndpoint)
	gone.GetEndpoint().GetAddress().GetSocketAddress().Address = "10.244.9.9" // no pod has it
	cla.Endpoints[0].LbEndpoints = append([]*endpointv3.LbEndpoint{gone}, cla.Endpoints[0].LbEndpoints...)
	snap.Endpoints = maps.Clone(snap.Endpoints)
	snap.Endpoints[cluster] = cla
	sc := *a.Sidecar
	sc.Config = &snap
	a.Sidecar = &sc
	out, err := envoy.Evaluate(n, n.Request("service-a", "service-b", 80))
	if err != nil {
		t.Fatal(err)
	}
	if out.Kind != envoy.Delivered || out.MTLS == nil || !strings.Contains(out.Trace.String(), "retry 1 on endpoint") {
		t.Errorf("%s (mTLS %v), want mTLS delivered after a retry; trace: %s", out.Kind, out.MTLS != nil, out.Trace)
	}
	// The load balancer's own pick is the live endpoint: no retry.
	out, err = envoy.Evaluate(n, envoy.Request{Client: a, Destination: n.Request("service-a", "service-b", 80).Destination, Protocol: envoy.HTTP1, Authority: "service-b:80", Path: "/",
		Pick: func([]netip.AddrPort) int { return 1 }})
	if err != nil || out.Kind != envoy.Delivered {
		t.Errorf("picking the live endpoint: %s, %v", out.Kind, err)
	}
}
