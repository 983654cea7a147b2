//go:build linux

package envoy_test

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

var update = flag.Bool("update", false, "capture testdata/*.json from the real istiod of a local cluster")

// TestCaptureFromIstiod regenerates the evaluator's test data from what the
// real istiod serves: a local cluster with istiod and Istio's charts, the
// capture fixtures, and for every capture cell its policies applied as a
// run applies them and the sidecars' configurations once istiod has
// pushed. It runs with -update only; the unit tests read what it wrote.
func TestCaptureFromIstiod(t *testing.T) {
	if !*update {
		t.Skip("regenerates testdata: run with -update")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	m := xdstest.Start(ctx, t, "lc-envoy-capture", captureNamespace, captureWorkloads()...)
	clients := map[string]*xds.Sidecar{}
	for _, w := range captureWorkloads() {
		if w.InMesh {
			clients[w.Name] = m.Sidecar(ctx, t, w.Name)
		}
	}
	var all []*xds.Sidecar
	for _, c := range clients {
		all = append(all, c)
	}
	hosts, services := network(m)
	for i, cell := range captureCells {
		applied := m.Apply(ctx, t, cell.policies, i)
		last, err := xdstest.Settle(ctx, applied, all...)
		if err != nil {
			t.Fatal(err)
		}
		c := capture{Cell: cell.name, Hosts: hosts, Services: services, Sidecars: map[string]json.RawMessage{}}
		for w, sc := range clients {
			if n := sc.NACKs(); len(n) > 0 {
				t.Errorf("%s: %s NACKed: %v", cell.name, w, n)
			}
			b, err := xds.MarshalSnapshot(sc.Snapshot())
			if err != nil {
				t.Fatal(err)
			}
			c.Sidecars[w] = b
		}
		out, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(captureFile(cell.name), append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: settled %s after the apply; wrote %s", cell.name, last.Sub(applied).Round(time.Millisecond), captureFile(cell.name))
	}
}

// network is the capture's pods and Services as the evaluator's network
// needs them.
func network(m *xdstest.Mesh) ([]capturedHost, []capturedService) {
	var hosts []capturedHost
	var services []capturedService
	for _, w := range captureWorkloads() {
		pod := m.Pods[w.Name]
		h := capturedHost{Workload: w.Name, Namespace: pod.Namespace, Pod: pod.Name, IP: pod.Status.PodIP,
			ServiceAccount: pod.Spec.ServiceAccountName, Sidecar: injection.Proxy(pod) != nil, Ports: map[uint16]string{}}
		for _, p := range w.Ports {
			h.Ports[uint16(p.Target())] = p.Protocol
		}
		hosts = append(hosts, h)
		svc := m.Services[w.Name]
		cs := capturedService{Name: svc.Name, Namespace: svc.Namespace, ClusterIP: svc.Spec.ClusterIP}
		for _, sp := range svc.Spec.Ports {
			proto := manifests.ProtocolHTTP
			if sp.AppProtocol != nil {
				proto = *sp.AppProtocol
			}
			cs.Ports = append(cs.Ports, capturedPort{Name: sp.Name, Port: uint16(sp.Port), TargetPort: uint16(sp.TargetPort.IntValue()), Protocol: proto})
		}
		services = append(services, cs)
	}
	return hosts, services
}
