package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// upgradeFixture starts fakeNodes for an application namespace (and
// Istio's, when istioNS is set) and the workloads in it.
func upgradeFixture(t *testing.T, ns, istioNS string, proxyImage func(context.Context, string) string) *fakeNodes {
	t.Helper()
	f := &fakeNodes{t: t, appNS: ns, istioNS: istioNS, proxyImage: proxyImage}
	f.start()
	startWorkloads(t, ns)
	return f
}

// startWorkloads creates service-a and service-b as Deployments (rolled by
// a running fakeNodes) and legacy as a plain ready pod, and waits for the
// rollout.
func startWorkloads(t *testing.T, ns string) {
	t.Helper()
	workloadDeployment(t, ns, "service-a")
	workloadDeployment(t, ns, "service-b")
	// legacy is out of the mesh: like the fixtures, it tells the injector
	// to stay out (the namespace may be labelled for injection).
	legacy := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy-0", Namespace: ns, Labels: map[string]string{"app": "legacy", "sidecar.istio.io/inject": "false"}},
		Spec:       corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false), Containers: []corev1.Container{{Name: "app", Image: "meshproof.local/echo:test"}}},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := kubeFast().Create(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	legacy.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.3", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := kubeFast().Status().Update(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	if err := deploy.WaitRolledOut(ctx, kubeFast(), client.ObjectKey{Namespace: ns, Name: "service-a"}, client.ObjectKey{Namespace: ns, Name: "service-b"}); err != nil {
		t.Fatal(err)
	}
}

// meshTraffic answers every probe with mTLS between the right identities,
// except where fail says otherwise.
func meshTraffic(ns string, fail func(round int, client results.Pod) *echoapi.ProbeResult) *scriptedProber {
	return &scriptedProber{script: func(round int, c results.Pod, tgt echoapi.Target) echoapi.ProbeResult {
		if fail != nil {
			if r := fail(round, c); r != nil {
				return *r
			}
		}
		from := c.Name[:strings.LastIndex(c.Name, "-")]
		to, _, _ := strings.Cut(tgt.Name, ":")
		return mtlsResult(ns, from, to)
	}}
}

func istiodImageIn(t *testing.T, ns, name string) string {
	t.Helper()
	var d appsv1.Deployment
	if err := kubeFast().Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
		t.Fatalf("Deployment %s/%s: %v", ns, name, err)
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// deployedReleases lists the deployed Helm releases in ns from Helm's
// release Secrets.
func deployedReleases(t *testing.T, ns string) string {
	t.Helper()
	var secrets corev1.SecretList
	if err := kubeFast().List(context.Background(), &secrets, client.InNamespace(ns), client.MatchingLabels{"owner": "helm", "status": "deployed"}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range secrets.Items {
		names = append(names, s.Labels["name"]+" v"+s.Labels["version"])
	}
	return fmt.Sprint(sortedStrings(names))
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestUpgradeStepInPlaceWithTheHelmInstaller_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - timeout: 3m
    upgrade:
      to: 1.30.3
      traffic: {every: 50ms, maxFailures: 2}
`)
	const istioNS = "istio-up-inplace"
	labelNamespace(t, ns, map[string]string{"istio-injection": "enabled"})
	in := installIstio(t, istioNS, "1.29.6")
	upgradeFixture(t, ns, istioNS, chartInjector(istioNS))
	if got := podProxies(t, ns, "service-a", "service-b"); fmt.Sprint(got) != "map[service-a:[docker.io/istio/proxyv2:1.29.6] service-b:[docker.io/istio/proxyv2:1.29.6]]" {
		t.Fatalf("before the upgrade the pods run %v", got)
	}

	// One failed request, within the budget of two: a restart's blip.
	p := meshTraffic(ns, func(round int, c results.Pod) *echoapi.ProbeResult {
		if round == 1 && c.Name == "service-a-g1" {
			return &echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
		}
		return nil
	})
	mc := &kubeletlessMesh{Installer: in}
	var rec recordedEvents
	e := newMeshEngine(t, s, p, WithMeshControl(mc), WithRecorder(&rec))
	sc := &s.Scenarios[0]
	ctx := context.Background()
	if err := e.RunStep(ctx, sc, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.RunStep(ctx, sc, 1); err != nil {
		t.Fatalf("upgrade failed: %v", err)
	}

	if got := istiodImageIn(t, istioNS, "istiod"); got != "docker.io/istio/pilot:1.30.3" {
		t.Errorf("istiod image after the upgrade: %s", got)
	}
	if got := deployedReleases(t, istioNS); got != "[istio-base v2 istiod v2]" {
		t.Errorf("deployed releases after the upgrade: %s, want both upgraded to a second revision", got)
	}
	if in.Version() != "1.30.3" || in.Revision() != "" {
		t.Errorf("installer manages %s revision %q", in.Version(), in.Revision())
	}
	if got := podProxies(t, ns, "service-a", "service-b"); fmt.Sprint(got) != "map[service-a:[docker.io/istio/proxyv2:1.30.3] service-b:[docker.io/istio/proxyv2:1.30.3]]" {
		t.Errorf("after the upgrade the pods run %v", got)
	}
	if mc.waitReadyCalls != 1 {
		t.Errorf("WaitReady called %d times, want once, before the restart", mc.waitReadyCalls)
	}
	kinds := rec.kinds()
	for _, want := range []string{"upgrade: Istio 1.29.6 to 1.30.3 (inPlace)", "control-plane-upgraded", "control-plane-ready", "workloads-restarted: service-a, service-b rolled out"} {
		if !strings.Contains(kinds, want) {
			t.Errorf("events lack %q: %s", want, kinds)
		}
	}
	if !strings.Contains(kinds, "control-plane-ready") || strings.Index(kinds, "control-plane-ready") > strings.Index(kinds, "workloads-restarted") {
		t.Errorf("the workloads were restarted before the new control plane was ready: %s", kinds)
	}
}

func TestUpgradeStepCanaryWithTheHelmInstaller_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - timeout: 3m
    upgrade:
      to: 1.30.3
      method: canary
      traffic: {every: 50ms}
`)
	const istioNS = "istio-up-canary"
	labelNamespace(t, ns, map[string]string{"istio-injection": "enabled"})
	in := installIstio(t, istioNS, "1.29.6")
	upgradeFixture(t, ns, istioNS, chartInjector(istioNS))

	mc := &kubeletlessMesh{Installer: in}
	var rec recordedEvents
	e := newMeshEngine(t, s, meshTraffic(ns, nil), WithMeshControl(mc), WithRecorder(&rec))
	if err := e.RunStep(context.Background(), &s.Scenarios[0], 0); err != nil {
		t.Fatalf("canary upgrade failed: %v", err)
	}

	var n corev1.Namespace
	if err := kubeFast().Get(context.Background(), client.ObjectKey{Name: ns}, &n); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Labels["istio-injection"]; ok || n.Labels["istio.io/rev"] != "1-30-3" {
		t.Errorf("namespace labels after the canary: %v, want istio.io/rev=1-30-3 and no istio-injection", n.Labels)
	}
	if got := istiodImageIn(t, istioNS, "istiod-1-30-3"); got != "docker.io/istio/pilot:1.30.3" {
		t.Errorf("canary istiod image: %s", got)
	}
	if err := kubeFast().Get(context.Background(), client.ObjectKey{Namespace: istioNS, Name: "istiod"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("the old istiod Deployment is still there: %v", err)
	}
	// base was upgraded twice: for the canary's CRDs, then to make the
	// canary the default revision.
	if got := deployedReleases(t, istioNS); got != "[istio-base v3 istiod-1-30-3 v1]" {
		t.Errorf("deployed releases after the canary: %s", got)
	}
	if in.Revision() != "1-30-3" || in.Version() != "1.30.3" {
		t.Errorf("installer manages %s revision %q, want 1.30.3 revision 1-30-3", in.Version(), in.Revision())
	}
	if got := podProxies(t, ns, "service-a", "service-b"); fmt.Sprint(got) != "map[service-a:[docker.io/istio/proxyv2:1.30.3] service-b:[docker.io/istio/proxyv2:1.30.3]]" {
		t.Errorf("after the canary the pods run %v", got)
	}
	kinds := rec.kinds()
	order := []string{"upgrade: Istio 1.29.6 to 1.30.3 (canary)", "canary-installed", "control-plane-ready", "namespaces-relabelled: " + ns + " now select revision 1-30-3", "workloads-restarted", "revision-removed: revision default uninstalled"}
	last := -1
	for _, want := range order {
		i := strings.Index(kinds, want)
		if i <= last {
			t.Errorf("event %q missing or out of order: %s", want, kinds)
		}
		last = i
	}
}

// recordingMesh is a MeshControl that records the calls and, on an
// upgrade, makes the fake injector hand out the new proxy: the verdict
// tests need no Helm.
type recordingMesh struct {
	mu      sync.Mutex
	calls   []string
	proxy   string
	upgrade string // the proxy image after an upgrade
}

func (m *recordingMesh) record(call string) {
	m.mu.Lock()
	m.calls = append(m.calls, call)
	m.mu.Unlock()
}
func (m *recordingMesh) Upgrade(_ context.Context, to, charts string) error {
	m.record("Upgrade " + to + " " + charts)
	m.mu.Lock()
	m.proxy = m.upgrade
	m.mu.Unlock()
	return nil
}
func (m *recordingMesh) InstallCanary(_ context.Context, rev, to, charts string) error {
	m.record("InstallCanary " + rev + " " + to)
	return nil
}
func (m *recordingMesh) RelabelNamespaces(_ context.Context, rev string, nss ...string) error {
	m.record("RelabelNamespaces " + rev + " " + strings.Join(nss, ","))
	return nil
}
func (m *recordingMesh) RemoveRevision(_ context.Context, rev string) error {
	m.record("RemoveRevision " + rev)
	return nil
}
func (m *recordingMesh) WaitReady(context.Context) error { m.record("WaitReady"); return nil }
func (m *recordingMesh) RestartControlPlane(context.Context) error {
	m.record("RestartControlPlane")
	return nil
}
func (m *recordingMesh) Revision() string  { return "" }
func (m *recordingMesh) Version() string   { return "1.29.6" }
func (m *recordingMesh) Namespace() string { return "istio-system" }
func (m *recordingMesh) MultiRoot() bool   { return false }
func (m *recordingMesh) injector(context.Context, string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proxy
}

func TestUpgradeStepVerdict_ScriptedTransport(t *testing.T) {
	plaintext := &echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
	reset := &echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset"}
	for _, tc := range []struct {
		name       string
		afterProxy string
		fail       func(round int, c results.Pod) *echoapi.ProbeResult
		wantErr    []string
	}{
		{name: "traffic kept flowing on the new proxies", afterProxy: "docker.io/istio/proxyv2:1.30.3-distroless"},
		{
			name: "failures over the budget fail the step", afterProxy: "docker.io/istio/proxyv2:1.30.3",
			fail: func(round int, c results.Pod) *echoapi.ProbeResult {
				if round < 2 && strings.HasPrefix(c.Name, "service-b") {
					return reset
				}
				return nil
			},
			wantErr: []string{"requests failed during the upgrade (at most 1 allowed), first: service-b -> service-a:8080 fail (reset) at"},
		},
		{
			name: "plaintext towards a STRICT server fails the step", afterProxy: "docker.io/istio/proxyv2:1.30.3",
			fail: func(round int, c results.Pod) *echoapi.ProbeResult {
				if round == 1 && strings.HasPrefix(c.Name, "service-a") {
					return plaintext
				}
				return nil
			},
			wantErr: []string{"requests were answered in plaintext during the upgrade by a server the policies close to plaintext: service-a -> service-b:8080 plaintext"},
		},
		{
			name: "a workload left on the old proxy fails the step", afterProxy: "docker.io/istio/proxyv2:1.29.6",
			wantErr: []string{"service-a: pod ", "runs docker.io/istio/proxyv2:1.29.6, want the proxy of Istio 1.30.3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			charts := chartsDir(t)
			s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - upgrade: {to: 1.30.3, charts: `+charts+`, traffic: {every: 30ms, maxFailures: 1}}
`)
			mc := &recordingMesh{proxy: "docker.io/istio/proxyv2:1.29.6", upgrade: tc.afterProxy}
			upgradeFixture(t, ns, "", mc.injector)
			e := newMeshEngine(t, s, meshTraffic(ns, tc.fail), WithMeshControl(mc))
			sc := &s.Scenarios[0]
			if err := e.RunStep(context.Background(), sc, 0); err != nil {
				t.Fatal(err)
			}
			err := e.RunStep(context.Background(), sc, 1)
			if len(tc.wantErr) == 0 && err != nil {
				t.Fatalf("upgrade failed: %v", err)
			}
			for _, want := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("got %v, want an error saying %q", err, want)
				}
			}
			if got := strings.Join(mc.calls, "; "); got != "Upgrade 1.30.3 "+charts+"; WaitReady" {
				t.Errorf("mesh calls: %s", got)
			}
		})
	}
}

func TestUpgradeStepWithoutMeshControlSaysSo(t *testing.T) {
	s, _ := suiteIn(t, "  - upgrade: {to: 1.30.3}\n")
	err := newMeshEngine(t, s, nil).RunStep(context.Background(), &s.Scenarios[0], 0)
	if err == nil || !strings.Contains(err.Error(), "the engine has no MeshControl (engine.WithMeshControl)") {
		t.Fatalf("got %v", err)
	}
}

func TestJudgeContinuous(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	preds := []oracle.Prediction{
		{From: "a", To: "b", Port: 8080, Result: scenario.ResultMTLS},
		{From: "legacy", To: "b", Port: 8080, Result: scenario.ResultFail, Reason: "reset"},
		{From: "a", To: "legacy", Port: 8080, Result: scenario.ResultPlaintext},
	}
	obs := []results.Observation{
		{Time: start, From: "a", To: "b", Port: 8080, Result: scenario.ResultMTLS},
		{Time: start.Add(time.Second), From: "a", To: "b", Port: 8080, Result: scenario.ResultFail, Reason: "upstream-503"},
		{Time: start, From: "legacy", To: "b", Port: 8080, Result: scenario.ResultFail, Reason: "reset"},
		{Time: start.Add(2 * time.Second), From: "legacy", To: "b", Port: 8080, Result: scenario.ResultPlaintext},
		{Time: start, From: "a", To: "legacy", Port: 8080, Result: scenario.ResultPlaintext},
	}
	v := JudgeContinuous(obs, preds)
	if v.Total != 5 || len(v.Failures) != 1 || v.Failures[0].Reason != "upstream-503" {
		t.Errorf("failures = %+v, want only the 503 (legacy's reset is predicted)", v.Failures)
	}
	if len(v.Plaintext) != 1 || v.Plaintext[0].From != "legacy" {
		t.Errorf("plaintext = %+v, want only legacy -> b (a -> legacy is predicted plaintext)", v.Plaintext)
	}
	if err := v.Verify("x", 1, start); err == nil || strings.Contains(err.Error(), "failed") || !strings.Contains(err.Error(), "legacy -> b:8080 plaintext at +2.0s") {
		t.Errorf("Verify(budget 1) = %v, want only the plaintext", err)
	}
	if err := v.Verify("x", 0, start); err == nil || !strings.Contains(err.Error(), "1 of 5 requests failed during x (at most 0 allowed), first: a -> b:8080 fail (upstream-503) at +1.0s") {
		t.Errorf("Verify(budget 0) = %v", err)
	}
	if err := (ContinuousVerdict{}).Verify("x", 0, start); err == nil || !strings.Contains(err.Error(), "no request ran during x") {
		t.Errorf("empty verdict: %v", err)
	}
}

// chartsDir is a folder holding a base and an istiod chart, for scenarios
// that name charts (validation requires them to exist); the scripted mesh
// control never reads them.
func chartsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, chart := range []string{"base", "istiod"} {
		if err := os.MkdirAll(filepath.Join(dir, chart), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, chart, "Chart.yaml"), []byte("name: "+chart+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
