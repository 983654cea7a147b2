//go:build linux

package conformance_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/local/xds/xdstest"
	"github.com/meshproof/meshproof/harness/internal/local/ztunnel"
	podprobe "github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The ambient matrix holds the oracle's ambient rules (harness/oracle/
// ambient.go) to what the rehearsal's simulated ztunnels decide from what
// the real istiod serves them: a local cluster with Istio 1.30.3's charts
// in the ambient profile, two ambient workloads, a sidecar one and one out
// of the mesh. For every cell the policies are applied as a run applies
// them, the ztunnel is given istiod's push, and every pair with an ambient
// side is probed through the rehearsal's data plane; an answered request
// is mtls or plaintext by what the ztunnel counted (the engine's evidence),
// a failed one by the probe's reason.

const ambientNamespace = "ambient-conf"

// Ports of the matrix's servers: an HTTP port whose container port
// differs from its Service port (PeerAuthentication port-level modes name
// the container port), a second HTTP port, and a TCP port.
var ambientPorts = []scenario.Port{
	{Name: "http", Number: 80, TargetPort: 18080, Protocol: scenario.ProtocolHTTP},
	{Name: "http-alt", Number: 9090, Protocol: scenario.ProtocolHTTP},
	{Name: "tcp-echo", Number: 9000, Protocol: scenario.ProtocolTCP},
}

type ambientFixture struct {
	name string
	dp   scenario.DataPlane
}

var ambientFixtures = []ambientFixture{
	{"amb-a", scenario.DataPlaneAmbient}, {"amb-b", scenario.DataPlaneAmbient},
	{"service-a", scenario.DataPlaneSidecar}, {"legacy", scenario.DataPlaneNone},
}

// ambientSuite is the fixtures as the oracle sees them.
func ambientSuite() *scenario.Suite {
	s := &scenario.Suite{Fixtures: scenario.Fixtures{Namespace: ambientNamespace}}
	for _, f := range ambientFixtures {
		inMesh := f.dp != scenario.DataPlaneNone
		s.Fixtures.Workloads = append(s.Fixtures.Workloads, scenario.Workload{Name: f.name, Namespace: ambientNamespace, ServiceAccount: f.name,
			DataPlane: f.dp, Mesh: &inMesh, Ports: ambientPorts})
	}
	return s
}

// ambientCells are the matrix: PeerAuthentication none, mesh, namespace
// and workload (on amb-b) × UNSET/DISABLE/PERMISSIVE/STRICT, port-level
// overrides of amb-b's container port 18080 under each workload mode and
// under an inherited STRICT (istiod's conversion quirks among them); and
// DestinationRules (on amb-b, on the sidecar, mesh-wide) × DISABLE/
// ISTIO_MUTUAL/SIMPLE with and without a namespace STRICT.
func ambientCells() []cell {
	modes := []scenario.MTLSMode{scenario.ModeUnset, scenario.ModeDisable, scenario.ModePermissive, scenario.ModeStrict}
	pa := func(scope scenario.PolicyScope, mode scenario.MTLSMode, ports ...scenario.PortMode) scenario.PeerAuthentication {
		p := scenario.PeerAuthentication{Scope: scope, Namespace: ambientNamespace, Mode: mode, Ports: ports}
		switch scope {
		case scenario.ScopeMesh:
			p.Namespace = scenario.IstioRootNamespace
		case scenario.ScopeWorkload:
			p.Workload = "amb-b"
		}
		return p
	}
	port := func(mode scenario.MTLSMode) scenario.PortMode { return scenario.PortMode{Port: 18080, Mode: mode} }
	cells := []cell{{name: "no policy"}}
	add := func(name string, pas []scenario.PeerAuthentication, drs ...scenario.DestinationRule) {
		cells = append(cells, cell{name: name, policies: &scenario.MTLSStep{PeerAuthentications: pas, DestinationRules: drs}})
	}
	for _, scope := range []scenario.PolicyScope{scenario.ScopeMesh, scenario.ScopeNamespace, scenario.ScopeWorkload} {
		for _, m := range modes {
			add(fmt.Sprintf("%s %s", scope, m), []scenario.PeerAuthentication{pa(scope, m)})
		}
	}
	for _, m := range modes {
		for _, pm := range []scenario.MTLSMode{scenario.ModeStrict, scenario.ModePermissive, scenario.ModeDisable} {
			if m == pm {
				continue
			}
			add(fmt.Sprintf("workload %s, port 18080 %s", m, pm), []scenario.PeerAuthentication{pa(scenario.ScopeWorkload, m, port(pm))})
		}
	}
	for _, pm := range []scenario.MTLSMode{scenario.ModePermissive, scenario.ModeDisable} {
		add(fmt.Sprintf("namespace STRICT, workload UNSET, port 18080 %s", pm),
			[]scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeStrict), pa(scenario.ScopeWorkload, scenario.ModeUnset, port(pm))})
		add(fmt.Sprintf("mesh STRICT, workload UNSET, port 18080 %s", pm),
			[]scenario.PeerAuthentication{pa(scenario.ScopeMesh, scenario.ModeStrict), pa(scenario.ScopeWorkload, scenario.ModeUnset, port(pm))})
		add(fmt.Sprintf("mesh STRICT, namespace UNSET, workload UNSET, port 18080 %s", pm),
			[]scenario.PeerAuthentication{pa(scenario.ScopeMesh, scenario.ModeStrict), pa(scenario.ScopeNamespace, scenario.ModeUnset), pa(scenario.ScopeWorkload, scenario.ModeUnset, port(pm))})
	}
	add("namespace PERMISSIVE, workload STRICT", []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModePermissive), pa(scenario.ScopeWorkload, scenario.ModeStrict)})
	add("mesh STRICT, namespace DISABLE", []scenario.PeerAuthentication{pa(scenario.ScopeMesh, scenario.ModeStrict), pa(scenario.ScopeNamespace, scenario.ModeDisable)})
	for _, tls := range []scenario.TLSMode{scenario.TLSDisable, scenario.TLSIstioMutual, scenario.TLSSimple} {
		for _, target := range []string{"amb-b", "service-a", "mesh"} {
			dr := scenario.DestinationRule{Scope: scenario.DRScopeWorkload, Workload: target, Mode: tls}
			if target == "mesh" {
				dr = scenario.DestinationRule{Scope: scenario.DRScopeMesh, Mode: tls}
			}
			add(fmt.Sprintf("DR %s %s", target, tls), nil, dr)
			add(fmt.Sprintf("namespace STRICT, DR %s %s", target, tls), []scenario.PeerAuthentication{pa(scenario.ScopeNamespace, scenario.ModeStrict)}, dr)
		}
	}
	return cells
}

// TestAmbientConformance runs the matrix; every disagreement fails naming
// its cell, and a deliberately wrong rule fails named cells too.
func TestAmbientConformance(t *testing.T) {
	// Its own local cluster: it runs beside the proxyless matrix.
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	var workloads []manifests.Workload
	for _, f := range ambientFixtures {
		w := manifests.Workload{Name: f.name, Namespace: ambientNamespace, InMesh: f.dp != scenario.DataPlaneNone, Ambient: f.dp == scenario.DataPlaneAmbient}
		for _, p := range ambientPorts {
			w.Ports = append(w.Ports, manifests.Port{Name: p.Name, Number: int32(p.Number), TargetPort: int32(p.Target()), Protocol: string(p.Protocol)})
		}
		workloads = append(workloads, w)
	}
	m := xdstest.StartAmbient(ctx, t, "lc-ambient-conf", ambientNamespace, workloads...)
	dp := ambientDataPlane(ctx, t, m)
	z := waitEnrolled(ctx, t, m)
	t.Logf("local cluster, istiod, ambient fixtures enrolled and the node's ztunnel synced in %s", time.Since(start).Round(100*time.Millisecond))

	s := ambientSuite()
	cells := ambientCells()
	var allObserved []cellObservations
	matrixStart := time.Now()
	for i, c := range cells {
		applied := m.Apply(ctx, t, policiesOrNone(c.policies), i+1)
		settleZtunnel(ctx, z, applied)
		preds, err := oracle.PredictPolicies(s, c.policies)
		if err != nil {
			t.Fatalf("cell %q: %v", c.name, err)
		}
		observed := probeAmbientPairs(ctx, t, m, dp, z, s)
		allObserved = append(allObserved, cellObservations{c.name, preds, observed})
		for _, d := range oracle.Conform(c.name, preds, observed) {
			t.Error(d)
		}
	}
	pairs := len(allObserved[0].observed)
	kinds := map[string]int{}
	for _, co := range allObserved {
		for _, o := range co.observed {
			kinds[string(o.Result)]++
		}
	}
	// A matrix whose requests all came out alike would prove nothing.
	for _, k := range []scenario.Result{scenario.ResultMTLS, scenario.ResultPlaintext, scenario.ResultFail} {
		if kinds[string(k)] == 0 {
			t.Errorf("no request of the matrix came out %s: %v", k, kinds)
		}
	}
	t.Logf("observed: %v", kinds)
	t.Logf("ambient conformance matrix: %d cells x %d pairs with an ambient side (ports 80->18080, 9090, tcp 9000) in %s; %s in all",
		len(cells), pairs, time.Since(matrixStart).Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))

	// A wrong rule fails named cells: the oracle's answer for ambient to
	// ambient turned to plaintext under a DISABLE (what a reader of
	// PeerAuthentication's documentation might expect, and ztunnel does
	// not do).
	var wrong []string
	for _, co := range allObserved {
		if !strings.Contains(co.cell, "DISABLE") {
			continue
		}
		preds := make([]oracle.Prediction, len(co.preds))
		copy(preds, co.preds)
		for i, p := range preds {
			if strings.HasPrefix(p.From, "amb-") && strings.HasPrefix(p.To, "amb-") {
				preds[i].Result, preds[i].Reason = scenario.ResultPlaintext, ""
			}
		}
		for _, d := range oracle.Conform(co.cell, preds, co.observed) {
			if !strings.Contains(d.String(), `cell "`+co.cell+`"`) {
				t.Errorf("a disagreement does not name its cell: %s", d)
			}
			wrong = append(wrong, co.cell)
		}
	}
	if len(wrong) == 0 {
		t.Error("a wrong rule (ambient to ambient plaintext under DISABLE) fails no cell")
	} else {
		t.Logf("the wrong rule fails %d pairs, e.g. in cell %q", len(wrong), wrong[0])
	}
}

type cellObservations struct {
	cell     string
	preds    []oracle.Prediction
	observed []oracle.Observed
}

func policiesOrNone(m *scenario.MTLSStep) *scenario.MTLSStep {
	if m == nil {
		return &scenario.MTLSStep{}
	}
	return m
}

// ambientDataPlane is the rehearsal's data plane on the mesh, with its
// sidecars' and ztunnels' certificates from istiod's CA.
func ambientDataPlane(ctx context.Context, t *testing.T, m *xdstest.Mesh) *dataplane.Execer {
	t.Helper()
	addr, err := m.Cluster.Istiod().CAAddress("")
	if err != nil {
		t.Fatal(err)
	}
	cm, err := m.Kube.CoreV1().ConfigMaps(ambientNamespace).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(cm.Data["root-cert.pem"])) {
		t.Fatal("no root in istio-ca-root-cert")
	}
	ca, err := dataplane.NewIstiodCA(m.Client, addr, roots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close() })
	return dataplane.New(m.Client, ca, dataplane.WithZtunnels(m.Cluster.Ambient(), ca), dataplane.WithLogger(testsupport.Logger(t)))
}

// waitEnrolled waits for istio-cni's annotation on the ambient pods and
// returns the node's ztunnel.
func waitEnrolled(ctx context.Context, t *testing.T, m *xdstest.Mesh) *ztunnel.Ztunnel {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ok := true
		for _, f := range ambientFixtures {
			p := m.Pod(ctx, t, f.name)
			if (p.Annotations[manifests.AmbientRedirectionAnnotation] == manifests.AmbientRedirectionEnabled) != (f.dp == scenario.DataPlaneAmbient) {
				ok = false
			}
		}
		z, err := m.Cluster.Ambient().Ztunnel(m.Pods["amb-a"].Spec.NodeName)
		if ok && err == nil && z.Synced() {
			// istiod marks the enrolled pods HBONE once it sees the
			// annotation.
			snap := z.Snapshot()
			hbone := 0
			for _, f := range ambientFixtures {
				p := m.Pod(ctx, t, f.name)
				if w := snap.WorkloadByIP(mustAddr(t, p.Status.PodIP)); w != nil && w.Tunnel == ztunnel.TunnelHBONE {
					hbone++
				}
			}
			if hbone == 3 { // the two ambient pods and the ambient profile's sidecar
				return z
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the ambient pods were not enrolled, or istiod did not mark them HBONE, within 2m")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// settleZtunnel waits until the ztunnel has istiod's pushes for a change
// applied at applied: a push received after it and then 300ms without
// another (istiod debounces 100ms), or 1.5s without any (a change that
// concerns no ztunnel, such as a DestinationRule, brings none).
func settleZtunnel(ctx context.Context, z *ztunnel.Ztunnel, applied time.Time) {
	for {
		last := z.Snapshot().LastPush
		now := time.Now()
		if last.After(applied) && now.Sub(last) >= 300*time.Millisecond || !last.After(applied) && now.Sub(applied) >= 1500*time.Millisecond {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// probeAmbientPairs probes every pair with an ambient side on every port
// through the data plane, and concludes each request as the engine does.
func probeAmbientPairs(ctx context.Context, t *testing.T, m *xdstest.Mesh, dp *dataplane.Execer, z *ztunnel.Ztunnel, s *scenario.Suite) []oracle.Observed {
	t.Helper()
	var out []oracle.Observed
	for _, from := range s.Fixtures.Workloads {
		for _, to := range s.Fixtures.Workloads {
			if from.Name == to.Name || !from.Ambient() && !to.Ambient() {
				continue
			}
			for _, p := range to.Ports {
				out = append(out, probeOne(ctx, t, m, dp, z, &from, &to, p))
			}
		}
	}
	return out
}

func probeOne(ctx context.Context, t *testing.T, m *xdstest.Mesh, dp *dataplane.Execer, z *ztunnel.Ztunnel, from, to *scenario.Workload, p scenario.Port) oracle.Observed {
	t.Helper()
	sel := istiostats.ZtunnelSelector{Reporter: istiostats.ReporterDestination, Destination: istiostats.Workload{Namespace: ambientNamespace, Name: to.Name}}
	if !to.Ambient() {
		sel = istiostats.ZtunnelSelector{Reporter: istiostats.ReporterSource, Source: istiostats.Workload{Namespace: ambientNamespace, Name: from.Name},
			Destination: istiostats.Workload{Namespace: ambientNamespace, Name: to.Name}}
	}
	counts := func() istiostats.Counts {
		samples, err := istiostats.Parse(z.Metrics(), istiostats.TCPConnectionsOpened)
		if err != nil {
			t.Fatal(err)
		}
		c, err := istiostats.ZtunnelTCP(samples, istiostats.TCPConnectionsOpened, sel)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host := fmt.Sprintf("%s.%s.svc.cluster.local:%d", to.Name, ambientNamespace, p.Number)
	url := "http://" + host + "/"
	if p.Protocol == scenario.ProtocolTCP {
		url = "tcp://" + host
	}
	spec := echoapi.ProbeSpec{Targets: []echoapi.Target{{Name: to.Name, URL: url, Port: p.Number}}, RequestsPerTarget: 1,
		Timeout: echoapi.Duration(3 * time.Second), Deadline: echoapi.Duration(5 * time.Second)}
	stdin, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	before := counts()
	client := m.Pods[from.Name]
	stdout, stderr, err := dp.Exec(ctx, podprobe.Command{Pod: results.Pod{Namespace: client.Namespace, Name: client.Name}, Container: manifests.ContainerName,
		Argv: []string{image.BinaryPath, "probe"}, Stdin: stdin})
	o := oracle.Observed{From: from.Name, To: to.Name, Port: p.Number}
	if err != nil {
		o.Result, o.Reason, o.Detail = scenario.ResultFail, "harness-error", fmt.Sprintf("%v: %s", err, stderr)
		return o
	}
	res, err := echoapi.DecodeResults(bytes.NewReader(stdout))
	if err != nil || len(res) != 1 {
		t.Fatalf("%s -> %s:%d: %v (%d results)", from.Name, to.Name, p.Number, err, len(res))
	}
	r := res[0]
	switch r.Result {
	case echoapi.ResultMTLS, echoapi.ResultPlaintext, echoapi.ResultEchoed:
		delta, err := counts().Since(before)
		switch {
		case err != nil:
			o.Result, o.Reason, o.Detail = scenario.ResultFail, "no-witness", err.Error()
		case len(delta) != 1 || delta.Total() != 1:
			o.Result, o.Reason, o.Detail = scenario.ResultFail, "no-witness", "ztunnel counted "+delta.String()
		default:
			for peer := range delta {
				o.Result, o.Detail = scenario.ResultPlaintext, peer.String()
				if peer.SecurityPolicy == istiostats.PolicyMutualTLS {
					o.Result = scenario.ResultMTLS
				}
			}
		}
	default:
		o.Result, o.Reason, o.Detail = scenario.ResultFail, r.Reason, r.Error
	}
	return o
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
