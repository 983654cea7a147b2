package dataplane_test

// These tests drive the real engine (harness/internal/engine), through the real
// probe.Prober and probe.CertReader, with the simulated data plane as the
// pod transport, against a real kube-apiserver with Istio's CRDs
// (harness/internal/local/controlplane). The fixture pods are created here, with or without an
// istio-proxy container, and marked running as a kubelet would. The
// certificates come from testCA, a stand-in for istiod signing with
// harness/internal/ca: these tests prove the decisions, not istiod's CA.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

var env *testsupport.Env

func TestMain(m *testing.M) {
	os.Exit(testsupport.Main(m, func(e *testsupport.Env) error { env = e; return nil }))
}

// testCA issues workload certificates the way istiod does (the SPIFFE ID
// of the pod's ServiceAccount, the requested TTL) from a harness/internal/ca bundle.
// wrongRoot, when set for a pod name, makes that pod's sidecar trust a
// different root: a misconfigured CA.
type testCA struct {
	bundle *ca.Bundle
	other  *ca.Bundle

	mu        sync.Mutex
	issued    int
	wrongRoot map[string]bool
	refuse    map[string]bool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	b, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	o, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{bundle: b, other: o, wrongRoot: map[string]bool{}, refuse: map[string]bool{}}
}

func (c *testCA) Issue(_ context.Context, pod *corev1.Pod, ttl time.Duration) (*dataplane.Certs, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refuse[pod.Name] {
		return nil, errors.New("the CA refused the request")
	}
	c.issued++
	sa := pod.Spec.ServiceAccountName
	_, _, chain, err := c.bundle.IssueWorkloadCert(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", pod.Namespace, sa), ttl)
	if err != nil {
		return nil, err
	}
	root := c.bundle.Root
	if c.wrongRoot[pod.Name] {
		root = c.other.Root
	}
	return &dataplane.Certs{Chain: chain, Roots: []*x509.Certificate{root}}, nil
}

// fixture is one workload as stored: its ServiceAccount, Service (8080 and
// 9090 HTTP, 7070 TCP) and one running pod, injected or not.
type fixture struct {
	name     string
	injected bool
	ip       string
	env      []corev1.EnvVar // the istio-proxy container's environment
}

// namespaceFor is a fresh namespace of the test's own.
func namespaceFor(t *testing.T) string {
	return env.NewNamespace(t, "dataplane")
}

func deploy(t *testing.T, ns string, fixtures ...fixture) {
	t.Helper()
	ctx := context.Background()
	env.EnsureNamespace(t, scenario.IstioRootNamespace)
	for _, f := range fixtures {
		labels := map[string]string{"app": f.name}
		if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: f.name, Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: f.name, Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
				{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080)},
				{Name: "http-alt", Port: 9090, TargetPort: intstr.FromInt32(9090)},
				// Istio reads a port's protocol from appProtocol first.
				{Name: "echo-tcp", Port: 7070, TargetPort: intstr.FromInt32(7070), AppProtocol: ptr.To("tcp")},
			}},
		}
		if err := env.Client.Create(ctx, svc); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: f.name + "-0", Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{
				ServiceAccountName:           f.name,
				AutomountServiceAccountToken: ptr.To(false),
				Containers:                   []corev1.Container{{Name: manifests.ContainerName, Image: "meshproof.local/echo:test"}},
			},
		}
		if f.injected {
			// What injection stores with native sidecars: istio-proxy as an
			// init container that keeps running.
			pod.Spec.InitContainers = []corev1.Container{{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.30.3",
				RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways), Env: f.env}}
		}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: f.ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if err := env.Client.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
}

// suite is a scenario file over the standard fixtures in ns.
func suite(t *testing.T, ns, steps string) *scenario.Suite {
	t.Helper()
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 5s}
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: %s
  workloads: [{name: service-a}, {name: service-b}, {name: legacy, mesh: false}]
scenarios:
- name: s
  steps:
%s`, ns, steps)
	s, err := scenario.Load("dataplane.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// run runs every step of the suite's scenario with the engine on the
// simulated data plane and returns each step's error and what was recorded.
func run(t *testing.T, s *scenario.Suite, certs dataplane.CertSource) ([]error, *recorder) {
	t.Helper()
	return runWith(t, s, dataplane.New(env.Client, certs))
}

// runWith is run on a given transport.
func runWith(t *testing.T, s *scenario.Suite, dp probe.Execer) ([]error, *recorder) {
	t.Helper()
	rec := &recorder{}
	e, err := engine.New(s, "c", env.Client, probe.NewProber(dp), fmt.Sprint("run-", time.Now().UnixNano()),
		engine.WithLogger(testsupport.Logger(t)), engine.WithRecorder(rec), engine.WithCertReader(probe.NewCertReader(dp)),
		engine.WithConnectionWitness(probe.NewStatsReader(dp)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.RemovePolicies(context.Background()); err != nil {
			t.Error(err)
		}
	})
	sc := &s.Scenarios[0]
	var errs []error
	for i := range sc.Steps {
		errs = append(errs, e.RunStep(context.Background(), sc, i))
	}
	return errs, rec
}

type recorder struct {
	results.Discard
	mu  sync.Mutex
	obs []results.Observation
}

func (r *recorder) Record(o results.Observation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.obs = append(r.obs, o)
}

// last returns the last observation of from -> to:port.
func (r *recorder) last(t *testing.T, from, to string, port int) results.Observation {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.obs) - 1; i >= 0; i-- {
		o := r.obs[i]
		if o.From == from && o.To == to && o.Port == port {
			return o
		}
	}
	t.Fatalf("no observation of %s -> %s:%d", from, to, port)
	return results.Observation{}
}

// standardFixtures are service-a and service-b injected, legacy not, with
// pod IPs 10.<net>.0.1-3 (each test its own net: peercert finds pods by IP
// across namespaces).
func standardFixtures(net int) []fixture {
	return []fixture{
		{name: "service-a", injected: true, ip: fmt.Sprintf("10.%d.0.1", net)},
		{name: "service-b", injected: true, ip: fmt.Sprintf("10.%d.0.2", net)},
		{name: "legacy", injected: false, ip: fmt.Sprintf("10.%d.0.3", net)},
	}
}

func TestStrictNamespaceMTLSInMeshResetOutOfMesh(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(1)...)
	s := suite(t, ns, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
    - {from: service-a, to: service-b, port: 9090, result: mtls}
    - {from: legacy, to: service-b, port: 8080, result: fail, reason: reset}
    - {from: service-b, to: legacy, port: 8080, result: plaintext}
    - {from: legacy, to: service-a, port: 9090, result: fail, reason: reset}
`)
	errs, rec := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
	o := rec.last(t, "service-a", "service-b", 8080)
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-a"; o.ClientID != want {
		t.Errorf("client identity %q, want %q", o.ClientID, want)
	}
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"; o.ServerID != want {
		t.Errorf("server identity %q, want %q", o.ServerID, want)
	}
	if o := rec.last(t, "legacy", "service-b", 8080); o.Result != scenario.ResultFail || o.Reason != "reset" {
		t.Errorf("legacy -> service-b: %s (%s), want fail (reset)", o.Result, o.Reason)
	}
}

func TestDestinationRuleDisableToStrictServerIs503(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(2)...)
	s := suite(t, ns, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
      destinationRules: [{workload: service-b, mode: DISABLE, port: 9090}]
  - expect:
    - {from: service-a, to: service-b, port: 9090, result: fail, reason: upstream-503}
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	errs, _ := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
}

// The expect table contradicts the stored STRICT policy: the step fails,
// saying what was observed.
func TestTableContradictingStoredPoliciesFails(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(3)...)
	s := suite(t, ns, `  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
  - expect:
    - {from: legacy, to: service-b, port: 8080, result: plaintext}
`)
	errs, _ := run(t, s, newTestCA(t))
	if errs[0] != nil {
		t.Fatalf("mtls step: %v", errs[0])
	}
	var xerr *engine.ExpectationError
	if !errors.As(errs[1], &xerr) {
		t.Fatalf("expect step: %v, want an expectation error", errs[1])
	}
	if !strings.Contains(errs[1].Error(), "fail (reset)") {
		t.Errorf("the failure does not say what was observed: %v", errs[1])
	}
}

// The scenario says service-b is in the mesh, but the stored pod has no
// istio-proxy: its traffic is plaintext, and a table expecting mtls fails.
func TestUninjectedPodIsPlaintext(t *testing.T) {
	ns := namespaceFor(t)
	fx := standardFixtures(4)
	fx[1].injected = false
	deploy(t, ns, fx...)
	s := suite(t, ns, `  - expect:
    - {from: service-a, to: service-b, port: 8080, result: plaintext}
    - {from: service-b, to: service-a, port: 8080, result: plaintext}
  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	errs, _ := run(t, s, newTestCA(t))
	if errs[0] != nil {
		t.Fatalf("plaintext expectation: %v", errs[0])
	}
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "plaintext") {
		t.Fatalf("mtls expectation for an uninjected server: %v, want a failure observing plaintext", errs[1])
	}
}

// A sidecar whose CA gave it another root cannot complete Istio mTLS: the
// client's sidecar answers 503 and the step fails. A CA refusing to sign
// does the same.
func TestMisconfiguredCAFailsTheStep(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(5)...)
	s := suite(t, ns, `  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	for _, tc := range []struct {
		name    string
		breakCA func(*testCA)
	}{
		{"wrong root", func(c *testCA) { c.wrongRoot["service-b-0"] = true }},
		{"refused", func(c *testCA) { c.refuse["service-a-0"] = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCA(t)
			tc.breakCA(c)
			errs, rec := run(t, s, c)
			if errs[0] == nil {
				t.Fatal("the expect step passed with a misconfigured CA")
			}
			if o := rec.last(t, "service-a", "service-b", 8080); o.Result != scenario.ResultFail || o.Reason != "upstream-503" {
				t.Errorf("observed %s (%s), want fail (upstream-503)", o.Result, o.Reason)
			}
		})
	}
}

// The certificate reads of the rotate and rotateRoot steps: the chain the
// sidecar presents in a handshake and the one in its config dump are the
// same, issued for the pod's SECRET_TTL, and renewed once
// SECRET_GRACE_PERIOD_RATIO of it is left, not before.
func TestCertificatesFollowSecretTTLAndGracePeriod(t *testing.T) {
	ns := namespaceFor(t)
	fx := standardFixtures(6)
	fx[1].env = []corev1.EnvVar{{Name: "SECRET_TTL", Value: "1h"}, {Name: "SECRET_GRACE_PERIOD_RATIO", Value: "0.25"}}
	deploy(t, ns, fx...)
	ctx := context.Background()
	now := time.Now()
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	certs := &failingCA{CertSource: newTestCA(t)}
	r := probe.NewCertReader(dataplane.New(env.Client, certs, dataplane.WithClock(clock)))
	legacy := results.Pod{Namespace: ns, Name: "legacy-0", IP: fx[2].ip}
	server := results.Pod{Namespace: ns, Name: "service-b-0", IP: fx[1].ip}

	// read reads the certificate both ways; a renewal (in the background,
	// as istio-agent's) may land between the two reads, so they are tried
	// again until they agree.
	read := func() *x509.Certificate {
		t.Helper()
		var presented, chain, roots []*x509.Certificate
		err := wait.For(func(ctx context.Context) (bool, error) {
			var err error
			if presented, err = r.HandshakeChain(ctx, legacy, server, 8080); err != nil {
				return false, err
			}
			if chain, roots, err = r.SidecarSecrets(ctx, server); err != nil {
				return false, err
			}
			return presented[0].Equal(chain[0]), nil
		}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(100*time.Millisecond), wait.WithTimeout(5*time.Second))
		if presented == nil || chain == nil {
			t.Fatalf("reading the certificate: %v", err)
		}
		if !presented[0].Equal(chain[0]) {
			t.Fatalf("the handshake presented serial %x, the config dump holds %x", presented[0].SerialNumber, chain[0].SerialNumber)
		}
		id, err := ca.VerifyWorkloadChain(chain, roots...)
		if err != nil {
			t.Fatal(err)
		}
		if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"; id != want {
			t.Fatalf("identity %s, want %s", id, want)
		}
		return chain[0]
	}
	issued := clock()
	first := read()
	if got := first.NotAfter.Sub(first.NotBefore); got != time.Hour {
		t.Errorf("the certificate is valid for %s, want the pod's SECRET_TTL 1h", got)
	}
	// Renewal is due when a quarter of the lifetime is left, the lifetime
	// counted from issuance as istio-agent counts it (its rotateTime).
	renewAt := first.NotAfter.Add(-first.NotAfter.Sub(issued) / 4)
	advance(renewAt.Sub(now) - time.Minute)
	if again := read(); !again.Equal(first) {
		t.Fatalf("renewed at %s, before the grace period began at %s", now, renewAt)
	}
	advance(2 * time.Minute)
	// Due: the first use starts the renewal in the background and is
	// answered with the certificate held; the new one follows.
	if presented, err := r.HandshakeChain(ctx, legacy, server, 8080); err != nil {
		t.Fatal(err)
	} else if !presented[0].Equal(first) {
		t.Fatalf("the use that started the renewal was answered with serial %x, want the held %x: no request waits for istiod's CA", presented[0].SerialNumber, first.SerialNumber)
	}
	second := first
	_ = wait.For(func(context.Context) (bool, error) {
		second = read()
		return !second.Equal(first), nil
	}, wait.WithContext(ctx), wait.WithInterval(100*time.Millisecond), wait.WithTimeout(10*time.Second))
	if second.Equal(first) {
		t.Fatalf("not renewed at %s, after the grace period began at %s", now, renewAt)
	}
	// istiod unreachable (restarting): istio-agent keeps the certificate it
	// holds past its renewal time, until it expires.
	certs.fail.Store(true)
	advance(second.NotAfter.Sub(now) - time.Minute)
	if again := read(); !again.Equal(second) {
		t.Fatalf("with istiod unreachable the sidecar holds serial %x, want the one it had, %x, until its NotAfter", again.SerialNumber, second.SerialNumber)
	}
	advance(2 * time.Minute)
	if _, err := r.HandshakeChain(ctx, legacy, server, 8080); err == nil {
		t.Fatal("a handshake succeeded with an expired certificate and istiod unreachable")
	}
}

// failingCA is a CertSource whose issuance fails while fail is set, as
// istiod's CA does while istiod restarts.
type failingCA struct {
	dataplane.CertSource
	fail atomic.Bool
}

func (c *failingCA) Issue(ctx context.Context, pod *corev1.Pod, ttl time.Duration) (*dataplane.Certs, error) {
	if c.fail.Load() {
		return nil, errors.New("istiod unreachable")
	}
	return c.CertSource.Issue(ctx, pod, ttl)
}

// Commands the simulation does not answer fail, and so does an exec into
// a container the pod does not have.
func TestUnansweredCommandsFail(t *testing.T) {
	ns := namespaceFor(t)
	fx := standardFixtures(7)
	deploy(t, ns, fx...)
	dp := dataplane.New(env.Client, newTestCA(t))
	for _, cmd := range []probe.Command{
		{Pod: results.Pod{Namespace: ns, Name: "service-a-0"}, Container: manifests.ContainerName, Argv: []string{"/echo", "serve"}},
		{Pod: results.Pod{Namespace: ns, Name: "service-a-0"}, Container: "istio-proxy", Argv: []string{"pilot-agent", "request", "POST", "quitquitquit"}},
		{Pod: results.Pod{Namespace: ns, Name: "legacy-0"}, Container: "istio-proxy", Argv: []string{"pilot-agent", "request", "GET", "config_dump"}},
		{Pod: results.Pod{Namespace: ns, Name: "gone-0"}, Container: manifests.ContainerName, Argv: []string{"/echo", "probe"}},
	} {
		_, stderr, err := dp.Exec(context.Background(), cmd)
		var execErr *probe.ExecError
		if !errors.As(err, &execErr) {
			t.Errorf("%s: %v, want an ExecError", cmd, err)
			continue
		}
		if !strings.Contains(string(stderr), dataplane.Label) {
			t.Errorf("%s: stderr %q does not say the data plane is simulated", cmd, stderr)
		}
	}
}

// A PeerAuthentication stored behind the harness's back (not through a
// scenario step) decides too: on a port it sets to DISABLE the sidecar
// presents no certificate; on the others it does.
func TestHandshakeOnDisabledPortPresentsNothing(t *testing.T) {
	ns := namespaceFor(t)
	fx := standardFixtures(9)
	deploy(t, ns, fx...)
	ctx := context.Background()
	pa := &securityv1.PeerAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "by-hand", Namespace: ns},
		Spec: securityapi.PeerAuthentication{
			Selector:      &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "service-b"}},
			Mtls:          &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT},
			PortLevelMtls: map[uint32]*securityapi.PeerAuthentication_MutualTLS{9090: {Mode: securityapi.PeerAuthentication_MutualTLS_DISABLE}},
		},
	}
	if err := env.Client.Create(ctx, pa); err != nil {
		t.Fatal(err)
	}
	r := probe.NewCertReader(dataplane.New(env.Client, newTestCA(t)))
	legacy := results.Pod{Namespace: ns, Name: "legacy-0", IP: fx[2].ip}
	server := results.Pod{Namespace: ns, Name: "service-b-0", IP: fx[1].ip}
	if _, err := r.HandshakeChain(ctx, legacy, server, 8080); err != nil {
		t.Errorf("STRICT port 8080: %v", err)
	}
	if _, err := r.HandshakeChain(ctx, legacy, server, 9090); err == nil || !strings.Contains(err.Error(), "presented no certificate") {
		t.Errorf("DISABLE port 9090: %v, want no certificate presented", err)
	}
}
