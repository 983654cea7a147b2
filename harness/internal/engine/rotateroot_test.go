package engine

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

func TestRootRotationPlan(t *testing.T) {
	old, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	current, err := old.Secret("istio-system", nil)
	if err != nil {
		t.Fatal(err)
	}
	phases, err := RootRotationPlan(current.Data, next)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		caCert, chainHead *x509.Certificate
		roots             []*x509.Certificate
	}
	for i, w := range []want{
		{old.Intermediate, old.Intermediate, []*x509.Certificate{old.Root, next.Root}},
		{next.Intermediate, next.Intermediate, []*x509.Certificate{old.Root, next.Root}},
		{next.Intermediate, next.Intermediate, []*x509.Certificate{next.Root}},
	} {
		d := phases[i].Data
		caCert, _ := ca.ParseCertificatesPEM(d[ca.CACertKey])
		chain, _ := ca.ParseCertificatesPEM(d[ca.CertChainKey])
		roots, _ := ca.ParseCertificatesPEM(d[ca.RootCertKey])
		if len(caCert) != 1 || !caCert[0].Equal(w.caCert) || !chain[0].Equal(w.chainHead) || !phases[i].Signing.Equal(w.caCert) {
			t.Errorf("phase %s signs with the wrong intermediate", phases[i].Name)
		}
		if len(roots) != len(w.roots) || !roots[0].Equal(w.roots[0]) || !sameCertSet(roots, w.roots) || !sameCertSet(phases[i].Roots, w.roots) {
			t.Errorf("phase %s trusts %s, want %s (old first)", phases[i].Name, certNames(roots), certNames(w.roots))
		}
		if len(d[ca.CAKeyKey]) == 0 {
			t.Errorf("phase %s has no signing key", phases[i].Name)
		}
	}
	if string(phases[0].Data[ca.CAKeyKey]) != string(current.Data[ca.CAKeyKey]) {
		t.Error("phase 1 changed the signing key")
	}

	_, err = RootRotationPlan(phases[0].Data, next)
	if err == nil || !strings.Contains(err.Error(), "holds 2 roots: an earlier root rotation did not finish") {
		t.Errorf("planning from a half-rotated Secret: %v", err)
	}
}

// rotationSuiteIn is suiteIn with a plugged CA, which rotateRoot requires.
func rotationSuiteIn(t *testing.T, steps string) (*scenario.Suite, string) {
	t.Helper()
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		ns = ns[:50]
	}
	ns = strings.Trim(ns, "-")
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, timeout: 20s}
clusters: [{name: c, istio: {version: 1.30.3, pluggedCA: true}}]
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
	if err := kubeFast().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return s, ns
}

// fakeCAMesh plays istiod's CA and the sidecars for a root rotation: istiod
// loads the cacerts Secret when it starts and writes its roots into the
// istio-ca-root-cert ConfigMap; a pod gets, when it starts, a certificate
// from the CA istiod loaded and the roots istiod distributes. Its
// CertReader serves those certificates; its Prober answers mTLS only when
// each side's chain verifies against the other side's roots.
type fakeCAMesh struct {
	t              *testing.T
	istioNS, appNS string
	stuck          string // a workload whose pods keep certificates of the CA istiod first loaded

	mu      sync.Mutex
	first   map[string][]byte
	loaded  map[string][]byte
	started map[int64]bool
	loads   []string // what istiod loaded at each start: signing CA and roots
	pods    map[string]*podCerts
	latest  map[string]string // workload → its newest pod
}

type podCerts struct {
	chain, roots []*x509.Certificate
}

func (m *fakeCAMesh) istiodStarted(ctx context.Context, d *appsv1.Deployment) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started[d.Generation] {
		return nil
	}
	var s corev1.Secret
	if err := kubeFast().Get(ctx, client.ObjectKey{Namespace: m.istioNS, Name: ca.SecretName}, &s); err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: m.appNS, Name: RootCertConfigMap}}
	data := map[string]string{RootCertKey: string(s.Data[ca.RootCertKey])}
	err := kubeFast().Get(ctx, client.ObjectKeyFromObject(cm), cm)
	cm.Data = data
	switch {
	case apierrors.IsNotFound(err):
		err = kubeFast().Create(ctx, cm)
	case err == nil:
		err = kubeFast().Update(ctx, cm)
	}
	if err != nil {
		return fmt.Errorf("writing ConfigMap %s: %w", RootCertConfigMap, err)
	}
	m.started[d.Generation] = true
	if m.first == nil {
		m.first = s.Data
	}
	m.loaded = s.Data
	signing, _ := ca.ParseCertificatesPEM(s.Data[ca.CACertKey])
	roots, _ := ca.ParseCertificatesPEM(s.Data[ca.RootCertKey])
	m.loads = append(m.loads, fmt.Sprintf("signs with %s, trusts %s", signing[0].Subject.Organization[0], orgs(roots)))
	return nil
}

func orgs(cs []*x509.Certificate) string {
	var o []string
	for _, c := range cs {
		o = append(o, c.Subject.Organization[0])
	}
	return strings.Join(o, " + ")
}

func (m *fakeCAMesh) podStarted(_ context.Context, workload, pod string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pods[pod] != nil {
		return
	}
	from := m.loaded
	if workload == m.stuck {
		from = m.first
	}
	chain, err := issueFrom(from, "spiffe://cluster.local/ns/"+m.appNS+"/sa/"+workload)
	if err != nil {
		m.t.Errorf("fake istiod: issuing for %s: %v", pod, err)
		return
	}
	roots, _ := ca.ParseCertificatesPEM(m.loaded[ca.RootCertKey])
	m.pods[pod] = &podCerts{chain: chain, roots: roots}
	m.latest[workload] = pod
}

// issueFrom signs a workload certificate with the intermediate of a
// cacerts Secret's data, as istiod does.
func issueFrom(data map[string][]byte, id string) ([]*x509.Certificate, error) {
	inter, err := ca.ParseCertificatesPEM(data[ca.CACertKey])
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data[ca.CAKeyKey])
	if block == nil {
		return nil, errors.New("no signing key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(id)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter[0], &leafKey.PublicKey, key.(crypto.Signer))
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{leaf, inter[0]}, nil
}

func (m *fakeCAMesh) certs(pod string) (*podCerts, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.pods[pod]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("pod %s has no sidecar certificate", pod)
}

func (m *fakeCAMesh) HandshakeChain(_ context.Context, _, server results.Pod, _ int) ([]*x509.Certificate, error) {
	c, err := m.certs(server.Name)
	if err != nil {
		return nil, err
	}
	return c.chain, nil
}

func (m *fakeCAMesh) SidecarSecrets(_ context.Context, server results.Pod) ([]*x509.Certificate, []*x509.Certificate, error) {
	c, err := m.certs(server.Name)
	if err != nil {
		return nil, nil, err
	}
	return c.chain, c.roots, nil
}

func (m *fakeCAMesh) Probe(_ context.Context, c results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	var out []echoapi.ProbeResult
	from := c.Name[:strings.LastIndex(c.Name, "-")]
	for _, tgt := range spec.Targets {
		to, _, _ := strings.Cut(tgt.Name, ":")
		r := mtlsResult(m.appNS, from, to)
		m.mu.Lock()
		server := m.latest[to]
		m.mu.Unlock()
		client, err := m.certs(c.Name)
		var srv *podCerts
		if err == nil {
			srv, err = m.certs(server)
		}
		if err == nil {
			if _, err = ca.VerifyWorkloadChain(srv.chain, client.roots...); err == nil {
				_, err = ca.VerifyWorkloadChain(client.chain, srv.roots...)
			}
		}
		if err != nil {
			r = echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "tls", Error: err.Error()}
		}
		r.Target, r.URL = tgt.Name, tgt.URL
		out = append(out, r)
	}
	return out, nil
}

// rotationFixture installs Istio with multi-root trust over a plugged CA
// "old", with the fake CA mesh behind it.
func rotationFixture(t *testing.T, istioNS, ns, stuck string) (*istio.Installer, *ca.Bundle, *fakeCAMesh) {
	t.Helper()
	old, err := ca.Generate(ca.WithOrganization("old"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := old.Install(ctx, kubeFast(), istioNS, nil); err != nil {
		t.Fatal(err)
	}
	in := installIstio(t, istioNS, "1.30.3", istio.WithMultiRoot(true))
	labelNamespace(t, ns, map[string]string{"istio-injection": "enabled"})
	m := &fakeCAMesh{t: t, istioNS: istioNS, appNS: ns, stuck: stuck, started: map[int64]bool{}, pods: map[string]*podCerts{}, latest: map[string]string{}}
	f := &fakeNodes{t: t, appNS: ns, istioNS: istioNS, proxyImage: chartInjector(istioNS), podStarted: m.podStarted, istiodStarted: m.istiodStarted}
	// istiod starts first, as it must: the workloads' certificates come from it.
	f.start()
	if err := waitFor(ctx, func() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.loaded != nil }); err != nil {
		t.Fatalf("the fake istiod never started: %v", err)
	}
	startWorkloads(t, ns)
	return in, old, m
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func TestRotateRootStepWithTheHelmInstaller_ScriptedTransport(t *testing.T) {
	s, ns := rotationSuiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - timeout: 2m
    rotateRoot: {within: 30s, traffic: {every: 50ms}}
`)
	const istioNS = "istio-rotate"
	in, old, m := rotationFixture(t, istioNS, ns, "")
	var rec recordedEvents
	e := newMeshEngine(t, s, m, WithMeshControl(in), WithCertReader(m), WithPluggedCA(old), WithRecorder(&rec))
	sc := &s.Scenarios[0]
	ctx := context.Background()
	if err := e.RunStep(ctx, sc, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.RunStep(ctx, sc, 1); err != nil {
		t.Fatalf("root rotation failed: %v", err)
	}

	next := e.PluggedCA()
	if next == old || next.Root.Equal(old.Root) || next.RootKey == nil {
		t.Fatal("the engine does not hold the new CA after the rotation")
	}
	newOrg := next.Root.Subject.Organization[0]
	// What istiod loaded at each start: the install, then the three phases.
	want := []string{
		"signs with old, trusts old",
		"signs with old, trusts old + " + newOrg,
		"signs with " + newOrg + ", trusts old + " + newOrg,
		"signs with " + newOrg + ", trusts " + newOrg,
	}
	m.mu.Lock()
	loads := append([]string(nil), m.loads...)
	m.mu.Unlock()
	if strings.Join(loads, "\n") != strings.Join(want, "\n") {
		t.Errorf("istiod loaded:\n%s\nwant:\n%s", strings.Join(loads, "\n"), strings.Join(want, "\n"))
	}
	var secret corev1.Secret
	if err := kubeFast().Get(ctx, client.ObjectKey{Namespace: istioNS, Name: ca.SecretName}, &secret); err != nil {
		t.Fatal(err)
	}
	if roots, _ := ca.ParseCertificatesPEM(secret.Data[ca.RootCertKey]); !sameCertSet(roots, []*x509.Certificate{next.Root}) {
		t.Errorf("cacerts trusts %s at the end, want only the new root", certNames(roots))
	}
	if roots, err := e.meshRoots(ctx, ns); err != nil || !sameCertSet(roots, []*x509.Certificate{next.Root}) {
		t.Errorf("ConfigMap %s holds %s (%v), want only the new root", RootCertConfigMap, certNames(roots), err)
	}
	for _, w := range []string{"service-a", "service-b"} {
		p, err := e.readyPod(ctx, w)
		if err != nil {
			t.Fatal(err)
		}
		c, err := m.certs(p.Name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ca.VerifyWorkloadChain(c.chain, next.Root); err != nil {
			t.Errorf("%s serves a chain the new root does not verify: %v", w, err)
		}
	}
	kinds := rec.kinds()
	for _, want := range []string{"phase 1/3 trust both roots", "phase 2/3 sign with the new intermediate: every workload serves a chain of", "phase 3/3 drop the old root: ConfigMap istio-ca-root-cert holds"} {
		if !strings.Contains(kinds, want) {
			t.Errorf("events lack %q: %s", want, kinds)
		}
	}
	if n := len(rec.all()); n < 20 {
		t.Errorf("only %d requests observed through the rotation", n)
	}
}

func TestRotateRootStepFailsWhenAWorkloadKeepsTheOldRoot_ScriptedTransport(t *testing.T) {
	s, ns := rotationSuiteIn(t, `  - timeout: 1m
    rotateRoot: {within: 5s, traffic: {every: 50ms}}
`)
	in, old, m := rotationFixture(t, "istio-rotate-stuck", ns, "service-b")
	e := newMeshEngine(t, s, m, WithMeshControl(in), WithCertReader(m), WithPluggedCA(old))
	err := e.RunStep(context.Background(), &s.Scenarios[0], 0)
	t.Logf("the step failed with: %v", err)
	for _, want := range []string{
		"root rotation, phase 2/3 sign with the new intermediate: waiting for every workload to serve a certificate of the new root (within 5s)",
		"service-b: workload certificate spiffe://cluster.local/ns/" + ns + "/sa/service-b does not chain to the trusted root",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an error saying %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "service-a:") {
		t.Errorf("service-a moved to the new root but is reported: %v", err)
	}
}

func TestRotateRootStepRefusesAMeshWithoutMultiRootTrust(t *testing.T) {
	s, _ := rotationSuiteIn(t, "  - rotateRoot: {}\n")
	err := newMeshEngine(t, s, nil, WithMeshControl(&recordingMesh{}), WithCertReader(&scriptedCerts{})).RunStep(context.Background(), &s.Scenarios[0], 0)
	if err == nil || !strings.Contains(err.Error(), "Istio was installed without multi-root trust (istiod env ISTIO_MULTIROOT_MESH=true") {
		t.Fatalf("got %v", err)
	}
}
