package report_test

// This test is in an external package because it drives the engine, and
// package report must not import the engine (the engine's results reach
// the report as data, through package results). It proves the page on
// what the real code path produces: the engine runs its steps against a
// real kube-apiserver (testsupport) and records into a real report.Run; only
// the in-pod transport (probes, certificate reads) is scripted, since
// there is no kubelet, and the test writes the pods' readiness as a
// kubelet would.

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

var kube testsupport.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

const runSuite = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 20s, requestTimeout: 200ms}
clusters: [{name: c, istio: {version: 1.30.3, workloadCertTTL: 1s}}]
fixtures:
  namespace: %s
  workloads: [{name: service-a}, {name: service-b}, {name: legacy, mesh: false}]
scenarios:
- name: strict-mesh
  steps:
  - name: strict-policies
    mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - name: strict-holds
    expect:
    - {from: service-a, to: service-b, result: mtls}
    - {from: legacy, to: service-b, result: fail, reason: reset}
  - name: port-9090-closed
    timeout: 2s
    expect:
    - {from: service-a, to: service-b, port: 9090, result: mtls}
    - {from: legacy, to: service-b, port: 9090, result: fail, reason: reset}
  - name: rotate-service-b
    rotate: {workload: service-b, within: 2s}
- name: migrate
  steps:
  - name: plaintext-first
    mtls: {peerAuthentications: [{scope: namespace, mode: DISABLE}]}
  - name: to-strict
    transition:
      to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
      observe: 3s
      noPlaintextAfter: 2s
      traffic:
        every: 100ms
        maxFailures: 1000
        pairs: [{from: service-a, to: service-b}, {from: legacy, to: service-b}]
`

// scriptedMesh plays the data plane from the PeerAuthentication it reads
// from the API server, like Envoy after a propagation delay: DISABLE
// answers plaintext; STRICT answers mTLS to the mesh and resets legacy's
// plaintext, except on port 9090, which it leaves open (the broken port
// exception the failing expect step finds); while STRICT propagates, the
// mesh's plaintext meets a 503 and legacy still gets through.
// Certificates never rotate.
type scriptedMesh struct {
	kube    client.Client
	ns      string
	chain   []*x509.Certificate
	mu      sync.Mutex
	mode    string
	changed time.Time // when mode was first seen
}

func (m *scriptedMesh) Probe(ctx context.Context, c results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	var pa securityv1.PeerAuthentication
	mode := "UNSET"
	if err := m.kube.Get(ctx, client.ObjectKey{Namespace: m.ns, Name: "meshproof-namespace"}, &pa); err == nil {
		mode = pa.Spec.GetMtls().GetMode().String()
	}
	m.mu.Lock()
	if mode != m.mode {
		m.mode, m.changed = mode, time.Now()
	}
	propagated := time.Since(m.changed) >= 300*time.Millisecond
	m.mu.Unlock()
	from := strings.TrimSuffix(c.Name, "-0")
	var out []echoapi.ProbeResult
	for _, tgt := range spec.Targets {
		to, port, _ := strings.Cut(tgt.Name, ":")
		r := echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultPlaintext}
		switch {
		case mode != "STRICT":
		case from == "legacy" && (port == "9090" || !propagated):
		case from == "legacy":
			r = echoapi.ProbeResult{Result: echoapi.ResultFail, Reason: "reset", Error: "read: connection reset by peer"}
		case propagated:
			r = echoapi.ProbeResult{StatusCode: 200, Result: echoapi.ResultMTLS, XFCC: []echoapi.XFCCElement{{
				By: "spiffe://cluster.local/ns/" + m.ns + "/sa/" + to, URI: "spiffe://cluster.local/ns/" + m.ns + "/sa/" + from}}}
		default:
			r = echoapi.ProbeResult{StatusCode: 503, Result: echoapi.ResultFail, Reason: "upstream-503"}
		}
		for i := range max(spec.RequestsPerTarget, 1) {
			r.Target, r.URL, r.Attempt = tgt.Name, tgt.URL, i
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *scriptedMesh) HandshakeChain(context.Context, results.Pod, results.Pod, int) ([]*x509.Certificate, error) {
	return m.chain, nil
}

func (m *scriptedMesh) SidecarSecrets(context.Context, results.Pod) ([]*x509.Certificate, []*x509.Certificate, error) {
	return m.chain, nil, nil
}

// readyPod creates a workload's pod and marks it running and ready, as a
// kubelet would.
func readyPod(t *testing.T, c client.Client, ns, workload, ip string) {
	t.Helper()
	ctx := t.Context()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: workload + "-0", Namespace: ns, Labels: map[string]string{"app": workload}},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "app", Image: "meshproof.local/echo:test"}}},
	}
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := c.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

// realRun runs every step of the suite through the engine, recording into
// a report.Run the way the run library does (RunStep, then engine.Verdict
// and RecordVerdict), and closes it. It returns the run.
func realRun(t *testing.T) *report.Run {
	env := kube.Get(t)
	ns := env.NewNamespace(t, "report-real-run")
	env.EnsureNamespace(t, scenario.IstioRootNamespace)
	s, err := scenario.Load("scenarios.yaml", []byte(fmt.Sprintf(runSuite, ns)))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"service-a", "service-b", "legacy"} {
		readyPod(t, env.Client, ns, w, fmt.Sprintf("10.0.0.%d", i+1))
	}
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	_, _, chain, err := bundle.IssueWorkloadCert("spiffe://cluster.local/ns/"+ns+"/sa/service-b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mesh := &scriptedMesh{kube: env.Client, ns: ns, chain: chain}

	run, err := report.Open(filepath.Join(t.TempDir(), "reports"), "real-run")
	if err != nil {
		t.Fatal(err)
	}
	// The setup's verdict: this test's setup is the API server and pods.
	run.RecordVerdict(results.Verdict{Step: results.SetupStep, Kind: results.SetupStep, Status: results.Passed, Started: time.Now()})
	e, err := engine.New(s, "c", env.Client, mesh, "real-run", engine.WithRecorder(run), engine.WithCertReader(mesh), engine.WithLogger(testsupport.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j := range sc.Steps {
			started := time.Now()
			err := e.RunStep(t.Context(), sc, j)
			v := engine.Verdict(sc, j, started, time.Since(started), err)
			if v.Status == results.Failed {
				// The run library collects diagnostics here; the folder
				// stands for them.
				v.Diagnostics = filepath.ToSlash(filepath.Join("diagnostics", sc.Name, sc.Steps[j].Name))
				if err := os.MkdirAll(run.Path(v.Diagnostics), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%s", v)
			run.RecordVerdict(v)
		}
	}
	if err := os.WriteFile(run.JUnitPath(), []byte("<testsuites/>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.RemovePolicies(context.Background()); err != nil {
		t.Logf("removing the policies: %v", err)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	return run
}

func TestReportOfARealRun_ScriptedTransport(t *testing.T) {
	run := realRun(t)
	page, err := os.ReadFile(run.HTMLPath())
	if err != nil {
		t.Fatal(err)
	}
	checkRealRunPage(t, page)
}

// checkRealRunPage checks the page of realRun, as written or as a browser
// built it.
func checkRealRunPage(t *testing.T, page []byte) {
	t.Helper()
	doc := report.ParsePage(t, page)
	find, text, texts, attr, has := report.FindAll, report.Text, report.Texts, report.Attr, report.HasClass
	by := report.ByTagClass

	// Every step counts, the mtls steps and the setup included.
	banner := find(doc, by("div", "banner"))
	if len(banner) != 1 || !has(banner[0], "banner-failed") ||
		text(banner[0]) != "FAILED 2 scenarios, 6 steps: 4 passed, 2 failed, 0 skipped; setup passed · junit.xml" {
		t.Errorf("banner %q", texts(banner))
	}
	if a := find(banner[0], by("a", "")); len(a) != 1 || attr(a[0], "href") != "junit.xml" {
		t.Errorf("the banner does not link junit.xml")
	}

	// Failures first, their text on the page.
	failures := find(doc, by("div", "failure"))
	if len(failures) != 2 {
		t.Fatalf("%d failures listed, want 2: %q", len(failures), texts(failures))
	}
	expect, rotate := failures[0], failures[1]
	if h := text(find(expect, by("h3", ""))[0]); h != "strict-mesh / port-9090-closed ✗ failed" {
		t.Errorf("first failure %q", h)
	}
	if r := text(find(expect, by("pre", "reason"))[0]); !strings.Contains(r, `step "port-9090-closed": expectations did not hold within 2s`) {
		t.Errorf("the failed expect's text reads %q", r)
	}
	rows := find(expect, by("tr", "row-differs"))
	if len(rows) != 1 || !strings.HasPrefix(text(rows[0]), "legacyservice-b9090fail (reset)plaintext x2") || !strings.Contains(text(rows[0]), "✗ got plaintext") {
		t.Errorf("the failed expect's table marks %q", texts(rows))
	}
	if ok := find(expect, by("tr", "row-ok")); len(ok) != 1 || !strings.HasPrefix(text(ok[0]), "service-aservice-b9090mtls") {
		t.Errorf("the failed expect's matching rows %q", texts(ok))
	}
	if a := find(expect, by("a", "")); len(a) != 2 || attr(a[1], "href") != "diagnostics/strict-mesh/port-9090-closed" {
		t.Errorf("the failed expect does not link its diagnostics: %q", texts(a))
	}
	if h := text(find(rotate, by("h3", ""))[0]); h != "strict-mesh / rotate-service-b ✗ failed" {
		t.Errorf("second failure %q", h)
	}
	if r := text(find(rotate, by("pre", "reason"))[0]); !strings.Contains(r, "service-b still serves serial") {
		t.Errorf("the failed rotation's text reads %q", r)
	}
	if d := find(rotate, by("tr", "deadline-row-missed")); len(d) != 1 || !strings.HasPrefix(text(d[0]), "new serial within 2s") {
		t.Errorf("the failed rotation's missed deadline %q", texts(d))
	}

	// The rotation that saw no new serial is red, though its traffic was
	// all mTLS as expected; its missed deadline is on its timeline.
	rs := report.StepOf(t, doc, "rotate-service-b")
	if s := find(rs, by("span", "status")); len(s) != 1 || !has(s[0], "status-differs") || text(s[0]) != "✗ failed" {
		t.Errorf("rotate step status %q", texts(s))
	}
	if c := report.CellOf(t, rs, "service-a", "service-b:8080"); !has(c, "cell-ok") || !strings.Contains(text(c), "✓ expected mtls") {
		t.Errorf("rotation traffic cell %q", text(c))
	}
	if l := find(rs, by("line", "deadline-missed")); len(l) != 1 {
		t.Errorf("the rotation's timeline draws %d missed deadlines, want 1", len(l))
	}

	// Expectation marks in every cell the engine probed for a row. The
	// step passed once STRICT had propagated; the requests before that
	// (503s while the sidecars caught up) are marked as differing, legacy's
	// resets while the policy propagated as expected.
	sh := report.StepOf(t, doc, "strict-holds")
	for _, c := range []struct{ from, target, verdict string }{
		{"service-a", "service-b:8080", "expected mtls"},
		{"legacy", "service-b:8080", "expected fail (reset)"},
	} {
		cell := report.CellOf(t, sh, c.from, c.target)
		v := find(cell, by("span", "verdict"))
		if len(v) != 1 || !strings.Contains(text(v[0]), c.verdict) {
			t.Errorf("strict-holds %s -> %s: verdict %q, want %q", c.from, c.target, texts(v), c.verdict)
			continue
		}
		if differing := strings.HasPrefix(text(v[0]), "✗"); differing != has(cell, "cell-differs") || differing == has(cell, "cell-ok") {
			t.Errorf("strict-holds %s -> %s: verdict %q in a cell of class %q", c.from, c.target, text(v[0]), attr(cell, "class"))
		}
	}
	if s := text(find(sh, by("span", "status"))[0]); s != "✓ passed" {
		t.Errorf("strict-holds status %q", s)
	}
	pc := report.StepOf(t, doc, "port-9090-closed")
	if cell := report.CellOf(t, pc, "legacy", "service-b:9090"); !has(cell, "cell-differs") || !strings.HasPrefix(text(cell), "plaintext ") {
		t.Errorf("the open port's cell %q class %q", text(cell), attr(cell, "class"))
	}
	// The mtls steps, which observe nothing, are on the page.
	for _, step := range []string{"strict-policies", "plaintext-first"} {
		if s := text(find(report.StepOf(t, doc, step), by("span", "status"))[0]); s != "✓ passed" {
			t.Errorf("%s status %q", step, s)
		}
	}

	// The transition: it passed, both deadlines drawn as met, its
	// requests marked against the policies before and after the change.
	ts := report.StepOf(t, doc, "to-strict")
	if s := text(find(ts, by("span", "status"))[0]); s != "✓ passed" {
		t.Errorf("transition status %q", s)
	}
	var drawn []string
	for _, g := range find(ts, by("g", "deadline-mark")) {
		drawn = append(drawn, attr(find(g, by("line", ""))[0], "class")+": "+text(find(g, by("title", ""))[0]))
	}
	if len(drawn) != 2 || !strings.HasPrefix(drawn[0], "deadline deadline-met: ") || !strings.HasPrefix(drawn[1], "deadline deadline-met: ") ||
		!strings.Contains(strings.Join(drawn, "\n"), "no plaintext after 2s") || !strings.Contains(strings.Join(drawn, "\n"), "converged by the end of the window") {
		t.Errorf("transition deadlines drawn:\n%s", strings.Join(drawn, "\n"))
	}
	c := report.CellOf(t, ts, "legacy", "service-b:8080")
	if v := text(find(c, by("span", "verdict"))[0]); !strings.HasPrefix(v, "✓ expected fail (reset) / plaintext") && !strings.HasPrefix(v, "✗ expected fail (reset) / plaintext") {
		t.Errorf("transition cell legacy -> service-b:8080 verdict %q, want both policies' expectations", v)
	}
	if n := find(doc, by("p", "note")); len(n) != 0 {
		t.Errorf("notes %q on a complete run whose observations carry expectations", texts(n))
	}
}
