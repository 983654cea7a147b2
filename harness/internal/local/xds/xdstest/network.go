package xdstest

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/envoy"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Capture is what the real istiod served the fixtures' sidecars under one
// cell's policies, with the pods and Services the evaluator's network
// needs: written from a live mesh (Mesh.Capture), read by unit tests
// (ReadCapture) that evaluate it without a cluster.
type Capture struct {
	Cell string `json:"cell"`
	// Policies are the cell's, as the oracle reads them.
	Policies *scenario.MTLSStep `json:"policies"`
	Hosts    []Host             `json:"hosts"`
	Services []Service          `json:"services"`
	// Sidecars are the xds snapshots by workload name.
	Sidecars map[string]json.RawMessage `json:"sidecars"`
}

// Host is one fixture pod.
type Host struct {
	Workload, Namespace, Pod, IP, ServiceAccount string
	Sidecar                                      bool
	// EntryIP is the address of the WorkloadEntry the local cluster
	// registers for a pod whose process serves at an address of its own
	// (out of the mesh, serving gRPC): istiod's endpoints name the pod by it.
	EntryIP string `json:",omitempty"`
	// Ports are the application's container ports and what it speaks
	// there (http, tcp, grpc).
	Ports map[uint16]string
}

// Service is one fixture Service.
type Service struct {
	Name, Namespace, ClusterIP string
	Ports                      []ServicePort
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name       string
	Port       uint16
	TargetPort uint16
	Protocol   string
}

// CaptureFile is where a cell's capture lives: in this package's
// testdata, which the tests of the evaluator and of the oracle's
// conformance both read.
func CaptureFile(cell string) string {
	_, self, _, _ := runtime.Caller(0)
	name := strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(strings.ToLower(cell))
	return filepath.Join(filepath.Dir(self), "testdata", name+".json")
}

// Suite is the capture's fixtures as the oracle reads them: each
// workload's namespace, ServiceAccount, sidecar and Service ports.
func (c *Capture) Suite() *scenario.Suite {
	s := &scenario.Suite{}
	for _, h := range c.Hosts {
		inMesh := h.Sidecar
		w := scenario.Workload{Name: h.Workload, Namespace: h.Namespace, ServiceAccount: h.ServiceAccount, Mesh: &inMesh}
		for _, svc := range c.Services {
			if svc.Name != h.Workload || svc.Namespace != h.Namespace {
				continue
			}
			for _, p := range svc.Ports {
				w.Ports = append(w.Ports, scenario.Port{Name: p.Name, Number: int(p.Port), TargetPort: int(p.TargetPort), Protocol: scenario.PortProtocol(p.Protocol)})
			}
		}
		s.Fixtures.Namespace = h.Namespace
		s.Fixtures.Workloads = append(s.Fixtures.Workloads, w)
	}
	return s
}

// ReadCapture reads a capture and decodes its snapshots.
func ReadCapture(file string) (*Capture, map[string]*xds.Snapshot, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	var c Capture
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", file, err)
	}
	snaps := map[string]*xds.Snapshot{}
	for w, raw := range c.Sidecars {
		s, err := xds.UnmarshalSnapshot(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: the snapshot of %s: %w", file, w, err)
		}
		snaps[w] = s
	}
	return &c, snaps, nil
}

// Capture is the mesh's configuration now, as clients hold it, under
// cell's policies.
func (m *Mesh) Capture(cell string, policies *scenario.MTLSStep, workloads []manifests.Workload, clients map[string]*xds.Sidecar) (*Capture, error) {
	c := &Capture{Cell: cell, Policies: policies, Sidecars: map[string]json.RawMessage{}}
	c.Hosts, c.Services = m.hostsAndServices(workloads)
	for w, sc := range clients {
		b, err := xds.MarshalSnapshot(sc.Snapshot())
		if err != nil {
			return nil, err
		}
		c.Sidecars[w] = b
	}
	return c, nil
}

// Write writes the capture to file.
func (c *Capture) Write(file string) error {
	out, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(file, append(out, '\n'), 0o644)
}

// hostsAndServices are the fixtures' pods and Services as a capture holds
// them.
func (m *Mesh) hostsAndServices(workloads []manifests.Workload) ([]Host, []Service) {
	var hosts []Host
	var services []Service
	entries := m.entryIPs()
	for _, w := range workloads {
		pod := m.Pods[w.Name]
		h := Host{Workload: w.Name, Namespace: pod.Namespace, Pod: pod.Name, IP: pod.Status.PodIP, EntryIP: entries[pod.UID],
			ServiceAccount: pod.Spec.ServiceAccountName, Sidecar: injection.Proxy(pod) != nil, Ports: map[uint16]string{}}
		for _, p := range w.Ports {
			h.Ports[uint16(p.Target())] = p.Protocol
		}
		hosts = append(hosts, h)
		svc := m.Services[w.Name]
		s := Service{Name: svc.Name, Namespace: svc.Namespace, ClusterIP: svc.Spec.ClusterIP}
		for _, sp := range svc.Spec.Ports {
			proto := manifests.ProtocolHTTP
			if sp.AppProtocol != nil {
				proto = *sp.AppProtocol
			}
			s.Ports = append(s.Ports, ServicePort{Name: sp.Name, Port: uint16(sp.Port), TargetPort: uint16(sp.TargetPort.IntValue()), Protocol: proto})
		}
		services = append(services, s)
	}
	return hosts, services
}

// Network is a set of fixtures as an envoy.Network: the pods by IP, each
// with its sidecar's configuration and a workload certificate from a test
// CA (certificates come from istio-agent's SDS, not from istiod's xDS; the
// evaluator needs some, and these have the same SPIFFE identities), and
// the Services' cluster IPs forwarded to their pods as kube-proxy would.
type Network struct {
	Hosts    map[string]*envoy.Host // by workload name
	byIP     map[netip.Addr]*envoy.Host
	services map[netip.AddrPort]netip.AddrPort
	vips     map[string]netip.Addr
	protos   map[string]map[uint16]string // Service name → port → protocol
}

// NewNetwork is the capture's fixtures with configurations snaps, their
// certificates issued by bundle.
func NewNetwork(c *Capture, snaps map[string]*xds.Snapshot, bundle *ca.Bundle) (*Network, error) {
	n := &Network{Hosts: map[string]*envoy.Host{}, byIP: map[netip.Addr]*envoy.Host{}, services: map[netip.AddrPort]netip.AddrPort{},
		vips: map[string]netip.Addr{}, protos: map[string]map[uint16]string{}}
	ips := map[string]netip.Addr{}
	for _, h := range c.Hosts {
		ip, err := netip.ParseAddr(h.IP)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Pod, err)
		}
		ips[h.Workload] = ip
		ports := h.Ports
		host := &envoy.Host{Name: h.Namespace + "/" + h.Pod, IP: ip, Listens: func(p uint16) []envoy.Protocol {
			// The echo serves HTTP and its TCP echo on every port but the
			// gRPC ones (it sorts connections by their first bytes).
			switch proto, ok := ports[p]; {
			case !ok:
				return nil
			case proto == manifests.ProtocolGRPC:
				return []envoy.Protocol{envoy.GRPC}
			}
			return []envoy.Protocol{envoy.HTTP1, envoy.TCP}
		}}
		if h.Sidecar {
			snap := snaps[h.Workload]
			if snap == nil {
				return nil, fmt.Errorf("no configuration of %s's sidecar", h.Workload)
			}
			_, _, chain, err := bundle.IssueWorkloadCert(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", h.Namespace, h.ServiceAccount), time.Hour)
			if err != nil {
				return nil, err
			}
			host.Sidecar = &envoy.Proxy{Name: host.Name, Config: snap, Identity: &envoy.Identity{Chain: chain, Roots: []*x509.Certificate{bundle.Root}}}
		}
		n.Hosts[h.Workload], n.byIP[ip] = host, host
		if h.EntryIP != "" {
			entry, err := netip.ParseAddr(h.EntryIP)
			if err != nil {
				return nil, fmt.Errorf("host %s's WorkloadEntry: %w", h.Pod, err)
			}
			n.byIP[entry] = host
		}
	}
	for _, s := range c.Services {
		vip, err := netip.ParseAddr(s.ClusterIP)
		if err != nil {
			return nil, fmt.Errorf("Service %s: %w", s.Name, err)
		}
		n.vips[s.Name] = vip
		n.protos[s.Name] = map[uint16]string{}
		for _, p := range s.Ports {
			n.services[netip.AddrPortFrom(vip, p.Port)] = netip.AddrPortFrom(ips[s.Name], p.TargetPort)
			n.protos[s.Name][p.Port] = p.Protocol
		}
	}
	return n, nil
}

// Host is the envoy.Network's.
func (n *Network) Host(ip netip.Addr) *envoy.Host { return n.byIP[ip] }

// KubeProxy is the envoy.Network's.
func (n *Network) KubeProxy(vip netip.AddrPort) (netip.AddrPort, bool) {
	ep, ok := n.services[vip]
	return ep, ok
}

// Request is what the engine's probe sends from one fixture to another's
// Service port: HTTP, a TCP echo or a gRPC call as the port's protocol
// says, to the Service's name.
func (n *Network) Request(from, to string, port uint16) envoy.Request {
	proto, path := envoy.HTTP1, "/"
	switch n.protos[to][port] {
	case manifests.ProtocolTCP:
		proto, path = envoy.TCP, ""
	case manifests.ProtocolGRPC:
		proto, path = envoy.GRPC, echoapi.GRPCEchoMethod
	}
	return envoy.Request{Client: n.Hosts[from], Destination: netip.AddrPortFrom(n.vips[to], port), Protocol: proto,
		Authority: fmt.Sprintf("%s:%d", to, port), Path: path}
}

// Network is the mesh's fixtures now, with the configurations clients
// hold, as an envoy.Network (see NewNetwork).
func (m *Mesh) Network(workloads []manifests.Workload, clients map[string]*xds.Sidecar, bundle *ca.Bundle) (*Network, error) {
	c := &Capture{}
	c.Hosts, c.Services = m.hostsAndServices(workloads)
	snaps := map[string]*xds.Snapshot{}
	for w, sc := range clients {
		snaps[w] = sc.Snapshot()
	}
	return NewNetwork(c, snaps, bundle)
}

// entryIPs are the addresses of the WorkloadEntries the local cluster
// registered for the fixtures' pods, by pod UID (its owner reference).
func (m *Mesh) entryIPs() map[types.UID]string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var entries networkingv1.WorkloadEntryList
	out := map[types.UID]string{}
	if err := m.Client.List(ctx, &entries, client.InNamespace(m.Namespace)); err != nil {
		return out // no WorkloadEntry type or none: pods are at their own IPs
	}
	for _, we := range entries.Items {
		for _, ref := range we.OwnerReferences {
			if ref.Kind == "Pod" {
				out[ref.UID] = we.Spec.GetAddress()
			}
		}
	}
	return out
}
