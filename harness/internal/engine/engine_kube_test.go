package engine

// These tests run the engine's step logic against a real kube-apiserver with
// Istio's CRDs (harness/internal/local/controlplane). Only the in-pod transport is scripted:
// there is no kubelet, so probes and certificate reads come from a script,
// and pod readiness is written to the pods' status by the test. Test names
// say "ScriptedTransport" where that is so.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

var env *testsupport.Env

func TestMain(m *testing.M) {
	os.Exit(testsupport.Main(m, func(e *testsupport.Env) error { env = e; return nil }))
}

// suiteIn loads a suite whose workloads live in a namespace of the test's
// own, so tests sharing the API server do not see each other's objects.
func suiteIn(t *testing.T, steps string) (*scenario.Suite, string) {
	t.Helper()
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		ns = ns[:50]
	}
	ns = strings.Trim(ns, "-")
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 3, requests: 2, timeout: 20s, requestTimeout: 100ms}
clusters: [{name: c, istio: {version: 1.29.6, workloadCertTTL: 8s}}]
fixtures:
  namespace: %s
  workloads: [{name: service-a}, {name: service-b}, {name: legacy, mesh: false}]
scenarios:
- name: s
  steps:
%s`, ns, steps)
	s, err := scenario.Load("engine.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{ns, scenario.IstioRootNamespace} {
		env.EnsureNamespace(t, name)
	}
	return s, ns
}

func newEngine(t *testing.T, s *scenario.Suite, p Prober, opts ...Option) *Engine {
	t.Helper()
	opts = append([]Option{WithLogger(testsupport.Logger(t))}, opts...)
	e, err := New(s, "c", env.Client, p, "run-"+fmt.Sprint(time.Now().UnixNano()), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// readyPod creates a pod of a workload and marks it running and ready, as a
// kubelet would.
func readyPod(t *testing.T, ns, workload, ip string) {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: workload + "-0", Namespace: ns, Labels: map[string]string{"app": workload}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "meshproof.local/echo:test"}},
		},
	}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

func policyNames(t *testing.T, ns string) []string {
	t.Helper()
	var names []string
	var pas securityv1.PeerAuthenticationList
	if err := env.Client.List(context.Background(), &pas); err != nil {
		t.Fatal(err)
	}
	for _, p := range pas.Items {
		if p.Namespace == ns || p.Labels["meshproof.dev/scenario"] == "s" && p.Namespace == scenario.IstioRootNamespace {
			names = append(names, "PA "+p.Namespace+"/"+p.Name+" "+p.Spec.GetMtls().GetMode().String())
		}
	}
	var drs networkingv1.DestinationRuleList
	if err := env.Client.List(context.Background(), &drs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, d := range drs.Items {
		names = append(names, "DR "+d.Name)
	}
	return names
}

func TestMTLSStepReplacesThePreviousStepsPolicies(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}, {scope: mesh, mode: PERMISSIVE}]
      destinationRules: [{workload: service-b, mode: DISABLE}]
  - mtls:
      peerAuthentications: [{scope: workload, workload: service-b, mode: STRICT, ports: [{port: 9090, mode: PERMISSIVE}]}]
`)
	e := newEngine(t, s, nil)
	ctx := context.Background()
	sc := &s.Scenarios[0]
	if err := e.RunStep(ctx, sc, 0); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprint(policyNames(t, ns))
	want := fmt.Sprintf("[PA istio-system/meshproof-mesh PERMISSIVE PA %s/meshproof-namespace STRICT DR meshproof-service-b]", ns)
	if got != want {
		t.Errorf("after step 1: %s, want %s", got, want)
	}
	if err := e.RunStep(ctx, sc, 1); err != nil {
		t.Fatal(err)
	}
	got = fmt.Sprint(policyNames(t, ns))
	want = fmt.Sprintf("[PA %s/meshproof-service-b STRICT]", ns)
	if got != want {
		t.Errorf("after step 2: %s, want %s", got, want)
	}
	if err := e.RemovePolicies(ctx); err != nil {
		t.Fatal(err)
	}
	if got := policyNames(t, ns); len(got) != 0 {
		t.Errorf("after RemovePolicies: %v", got)
	}
}

// scriptedProber answers probe batches from a script: round n (from 0)
// returns what script(n, target) says for each request.
type scriptedProber struct {
	mu     sync.Mutex
	rounds map[string]int // client pod → rounds served
	script func(round int, client results.Pod, target echoapi.Target) echoapi.ProbeResult
	specs  []echoapi.ProbeSpec
	from   []string // client pod of each spec
}

// firstSpecOf is the first batch client pod name ran.
func (p *scriptedProber) firstSpecOf(name string) echoapi.ProbeSpec {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, spec := range p.specs {
		if p.from[i] == name {
			return spec
		}
	}
	return echoapi.ProbeSpec{}
}

func (p *scriptedProber) Probe(_ context.Context, client results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rounds == nil {
		p.rounds = map[string]int{}
	}
	n := p.rounds[client.Name]
	p.rounds[client.Name]++
	p.specs = append(p.specs, spec)
	p.from = append(p.from, client.Name)
	var out []echoapi.ProbeResult
	for _, tgt := range spec.Targets {
		for i := 0; i < spec.RequestsPerTarget; i++ {
			r := p.script(n, client, tgt)
			r.Target, r.URL, r.Attempt = tgt.Name, tgt.URL, i
			out = append(out, r)
		}
	}
	return out, nil
}

func mtlsResult(ns, from, to string) echoapi.ProbeResult {
	return echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultMTLS, XFCC: []echoapi.XFCCElement{{
		By:  "spiffe://cluster.local/ns/" + ns + "/sa/" + to,
		URI: "spiffe://cluster.local/ns/" + ns + "/sa/" + from,
	}}}
}

func TestExpectHoldsAfterConsecutiveMatchingRounds_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - expect:
    - {from: service-a, to: service-b, result: mtls}
    - {from: service-a, to: service-b, port: 9090, result: mtls}
    - {from: legacy, to: service-b, result: fail, reason: reset}
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	readyPod(t, ns, "legacy", "10.0.0.2")
	p := &scriptedProber{script: func(round int, client results.Pod, tgt echoapi.Target) echoapi.ProbeResult {
		if strings.HasPrefix(client.Name, "legacy") {
			return echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
		}
		if round < 2 { // policy still propagating: plaintext for two rounds
			return echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
		}
		return mtlsResult(ns, "service-a", "service-b")
	}}
	var rec recorded
	e := newEngine(t, s, p, WithRecorder(&rec))
	if err := e.RunStep(context.Background(), &s.Scenarios[0], 0); err != nil {
		t.Fatal(err)
	}
	// Two plaintext rounds, then three matching rounds in a row.
	if p.rounds["service-a-0"] != 5 || p.rounds["legacy-0"] != 5 {
		t.Errorf("rounds = %v, want 5 per client (one exec per client per round)", p.rounds)
	}
	spec := p.firstSpecOf("service-a-0")
	if len(spec.Targets) != 2 || spec.RequestsPerTarget != 2 {
		t.Errorf("service-a's batch = %+v, want both its targets with 2 requests each", spec)
	}
	if len(spec.Targets) > 0 && !strings.HasPrefix(spec.Targets[0].URL, "http://service-b."+ns+".svc.cluster.local:8080/") {
		t.Errorf("target URL = %s", spec.Targets[0].URL)
	}
	if n := len(rec.all()); n != 5*3*2 {
		t.Errorf("%d observations recorded, want 30", n)
	}
	// Every observation carries its row's expectation, for the report.
	want := map[string]string{"service-a:8080": "mtls", "service-a:9090": "mtls", "legacy:8080": "fail (reset)"}
	for _, o := range rec.all() {
		if w := want[fmt.Sprintf("%s:%d", o.From, o.Port)]; o.Expected != w {
			t.Errorf("%s -> %s:%d observed %s carries expected %q, want %q", o.From, o.To, o.Port, o.Outcome(), o.Expected, w)
		}
	}
}

type recorded struct {
	results.Discard
	mu  sync.Mutex
	obs []results.Observation
}

func (r *recorded) Record(o results.Observation) {
	r.mu.Lock()
	r.obs = append(r.obs, o)
	r.mu.Unlock()
}
func (r *recorded) all() []results.Observation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]results.Observation(nil), r.obs...)
}

func TestExpectFailsAtTimeoutWithATable_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - timeout: 2s
    expect:
    - {from: service-a, to: service-b, result: mtls}
    - {from: legacy, to: service-b, result: fail, reason: reset}
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	readyPod(t, ns, "legacy", "10.0.0.2")
	p := &scriptedProber{script: func(round int, client results.Pod, tgt echoapi.Target) echoapi.ProbeResult {
		if strings.HasPrefix(client.Name, "legacy") {
			return echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
		}
		// mTLS, but with a wrong client identity.
		return mtlsResult(ns, "intruder", "service-b")
	}}
	err := newEngine(t, s, p).RunStep(context.Background(), &s.Scenarios[0], 0)
	var xe *ExpectationError
	if !errors.As(err, &xe) {
		t.Fatalf("want an ExpectationError, got %v", err)
	}
	msg := strings.Join(strings.Fields(err.Error()), " ") // the table's column widths vary
	for _, want := range []string{
		"expectations did not hold within 2s",
		"FROM TO PORT EXPECTED LAST OBSERVED OVER THE WAIT WHY",
		"service-a service-b 8080 mtls mtls x2 mtls x",
		`want "spiffe://cluster.local/ns/` + ns + `/sa/service-a"`,
		"legacy service-b 8080 fail (reset) plaintext x2 plaintext x",
		"got plaintext",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

func TestExpectWithoutAReadyClientPodSaysSo_ScriptedTransport(t *testing.T) {
	s, _ := suiteIn(t, `  - timeout: 500ms
    expect: [{from: service-a, to: service-b, result: mtls}]
`)
	p := &scriptedProber{script: func(int, results.Pod, echoapi.Target) echoapi.ProbeResult { return echoapi.ProbeResult{} }}
	err := newEngine(t, s, p).RunStep(context.Background(), &s.Scenarios[0], 0)
	if err == nil || !strings.Contains(err.Error(), "not observed: workload service-a has no ready pod (0 pods)") {
		t.Fatalf("got %v", err)
	}
}

// scriptedCerts serves the handshake chain `before` for the first reads and
// `after` from then on; the sidecar's config dump holds `sidecar`.
type scriptedCerts struct {
	mu            sync.Mutex
	reads         int
	switchAfter   int
	before, after []*x509.Certificate
	sidecar       []*x509.Certificate
}

func (c *scriptedCerts) HandshakeChain(context.Context, results.Pod, results.Pod, int) ([]*x509.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if c.reads <= c.switchAfter {
		return c.before, nil
	}
	return c.after, nil
}

func (c *scriptedCerts) SidecarSecrets(context.Context, results.Pod) ([]*x509.Certificate, []*x509.Certificate, error) {
	return c.sidecar, nil, nil
}

func chainFor(t *testing.T, b *ca.Bundle, id string) []*x509.Certificate {
	t.Helper()
	_, _, chain, err := b.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func TestRotateStep_ScriptedTransport(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		newCA   *ca.Bundle
		refused int // first requests refused, as before the server is in the client's endpoints
		wantErr string
	}{
		{"rotates within the mesh", mesh, 0, ""},
		{"new chain from another CA", impostor, 0, "does not verify against the mesh root"},
		// Not yet flowing when the step begins: judged from when it flows.
		{"traffic flows after two refusals", mesh, 2, ""},
		{"traffic never flows", mesh, 1 << 30, "mTLS from service-a to service-b:8080 never flowed before the rotation (last: fail (reset)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ns := suiteIn(t, "  - rotate: {workload: service-b, within: 10s}\n    timeout: 15s\n")
			readyPod(t, ns, "service-a", "10.0.0.1")
			readyPod(t, ns, "service-b", "10.0.0.2")
			readyPod(t, ns, "legacy", "10.0.0.3")
			root := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns},
				Data: map[string]string{RootCertKey: string(ca.EncodeCertificatesPEM(mesh.Root))}}
			if err := env.Client.Create(context.Background(), root); err != nil {
				t.Fatal(err)
			}
			id := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"
			before := chainFor(t, mesh, id)
			before[0].NotBefore = before[0].NotBefore.Add(-time.Minute) // issued "earlier"
			after := chainFor(t, tc.newCA, id)
			certs := &scriptedCerts{switchAfter: 3, before: before, after: after, sidecar: after}
			p := &scriptedProber{script: func(round int, _ results.Pod, _ echoapi.Target) echoapi.ProbeResult {
				if round < tc.refused {
					return echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
				}
				return mtlsResult(ns, "service-a", "service-b")
			}}
			ctx, cancel := context.WithTimeout(context.Background(), s.Scenarios[0].Steps[0].Timeout.Duration)
			defer cancel()
			err := newEngine(t, s, p, WithCertReader(certs)).RunStep(ctx, &s.Scenarios[0], 0)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("rotation failed: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
			if p.rounds["service-a-0"] == 0 {
				t.Error("no traffic ran during the rotation window")
			}
		})
	}
}

func TestRestartPatchesTheTemplateAndWaitsForTheRollout(t *testing.T) {
	s, ns := suiteIn(t, "  - restart: {workloads: [service-b]}\n")
	ctx := context.Background()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "service-b", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "service-b"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "service-b"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}},
			},
		},
	}
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	// No controller-manager runs here: play the Deployment controller once
	// the restart has bumped the generation.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			var cur appsv1.Deployment
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), &cur); err == nil && cur.Generation > 1 {
				cur.Status = appsv1.DeploymentStatus{ObservedGeneration: cur.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
				if env.Client.Status().Update(ctx, &cur) == nil {
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	if err := newEngine(t, s, nil).RunStep(ctx, &s.Scenarios[0], 0); err != nil {
		t.Fatal(err)
	}
	<-done
	var got appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
		t.Error("the pod template was not stamped with restartedAt")
	}
}

// Zero-valued modes (DestinationRule DISABLE, PeerAuthentication UNSET) must
// replace a previously applied mode; Istio's JSON leaves zero values out,
// which server-side apply used to turn into a refused null.
func TestMTLSStepCanSwitchToZeroValuedModes(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls:
      peerAuthentications: [{scope: workload, workload: service-b, mode: STRICT, ports: [{port: 9090, mode: STRICT}]}]
      destinationRules: [{workload: service-b, mode: ISTIO_MUTUAL}, {workload: legacy, port: 9090, mode: ISTIO_MUTUAL}]
  - mtls:
      peerAuthentications: [{scope: workload, workload: service-b, mode: UNSET, ports: [{port: 9090, mode: UNSET}]}]
      destinationRules: [{workload: service-b, mode: DISABLE}, {workload: legacy, port: 9090, mode: DISABLE}]
`)
	e := newEngine(t, s, nil)
	ctx := context.Background()
	for i := range s.Scenarios[0].Steps {
		if err := e.RunStep(ctx, &s.Scenarios[0], i); err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	var b networkingv1.DestinationRule
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "meshproof-service-b"}, &b); err != nil {
		t.Fatal(err)
	}
	if got := b.Spec.GetTrafficPolicy().GetTls().GetMode().String(); got != "DISABLE" || b.Spec.GetTrafficPolicy().GetTls() == nil {
		t.Errorf("service-b rule tls mode = %s", got)
	}
	var pa securityv1.PeerAuthentication
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "meshproof-service-b"}, &pa); err != nil {
		t.Fatal(err)
	}
	if pa.Spec.GetMtls().GetMode().String() != "UNSET" || pa.Spec.GetPortLevelMtls()[9090].GetMode().String() != "UNSET" {
		t.Errorf("service-b policy = %v", &pa.Spec)
	}
}

func TestExpectAutoChecksEveryPairAgainstTheOracle_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect: auto
`)
	readyPod(t, ns, "service-a", "10.0.0.1")
	readyPod(t, ns, "service-b", "10.0.0.2")
	readyPod(t, ns, "legacy", "10.0.0.3")
	inMesh := map[string]bool{"service-a": true, "service-b": true}
	// What a STRICT namespace does, written out by hand.
	p := &scriptedProber{script: func(_ int, client results.Pod, tgt echoapi.Target) echoapi.ProbeResult {
		from := strings.TrimSuffix(client.Name, "-0")
		to, _, _ := strings.Cut(tgt.Name, ":")
		switch {
		case !inMesh[from]:
			return echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
		case !inMesh[to]:
			return echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
		}
		return mtlsResult(ns, from, to)
	}}
	e := newEngine(t, s, p)
	sc := &s.Scenarios[0]
	for i := range sc.Steps {
		if err := e.RunStep(context.Background(), sc, i); err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	table, err := oracle.Table(s, sc, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != 12 { // 3 clients x 2 other workloads x 2 ports
		t.Errorf("auto table has %d rows, want 12", len(table))
	}
	var targets int
	for _, spec := range p.specs[:3] {
		targets += len(spec.Targets)
	}
	if targets != 12 {
		t.Errorf("the first round probed %d targets, want 12", targets)
	}
}
