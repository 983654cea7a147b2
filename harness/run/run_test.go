package run

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/scenario"
)

// fakeProvider is a cluster provider whose Create hands out a given
// kubeconfig (or blocks until its context ends, as kind's uncancellable
// Create does) and which records Destroy.
type fakeProvider struct {
	kubeconfig []byte
	block      bool          // Create waits for ctx to end, then fails
	creating   chan struct{} // closed when Create starts
	dir        string

	mu        sync.Mutex
	created   int
	destroyed int
	// destroyLeft is how long Destroy's context had left when it was
	// called (0: no deadline), and destroyErr its error then.
	destroyLeft time.Duration
	destroyErr  error
}

func (f *fakeProvider) Create(ctx context.Context, _ ...string) (string, error) {
	f.mu.Lock()
	f.created++
	f.mu.Unlock()
	if f.creating != nil {
		close(f.creating)
	}
	if f.block {
		<-ctx.Done()
		return "", ctx.Err()
	}
	path := filepath.Join(f.dir, "fake.kubeconfig")
	return path, os.WriteFile(path, f.kubeconfig, 0o600)
}

func (f *fakeProvider) Destroy(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed++
	if d, ok := ctx.Deadline(); ok {
		f.destroyLeft = time.Until(d)
	}
	f.destroyErr = ctx.Err()
	return nil
}

func (f *fakeProvider) counts() (created, destroyed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.created, f.destroyed
}

func (f *fakeProvider) WithName(string) support.E2EClusterProvider                 { return f }
func (f *fakeProvider) WithVersion(string) support.E2EClusterProvider              { return f }
func (f *fakeProvider) WithPath(string) support.E2EClusterProvider                 { return f }
func (f *fakeProvider) WithOpts(...support.ClusterOpts) support.E2EClusterProvider { return f }
func (f *fakeProvider) CreateWithConfig(ctx context.Context, _ string) (string, error) {
	return f.Create(ctx)
}
func (f *fakeProvider) GetKubeconfig() string { return "" }
func (f *fakeProvider) GenerateKubeconfig(...string) (string, error) {
	return "", errors.ErrUnsupported
}
func (f *fakeProvider) GetKubectlContext() string                { return "" }
func (f *fakeProvider) ExportLogs(context.Context, string) error { return errors.ErrUnsupported }
func (f *fakeProvider) SetDefaults() support.E2EClusterProvider  { return f }
func (f *fakeProvider) WaitForControlPlane(context.Context, klient.Client) error {
	return nil
}
func (f *fakeProvider) KubernetesRestConfig() *rest.Config { return nil }

// unreachableKubeconfig points at a loopback port nothing listens on.
const unreachableKubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: gone, context: {cluster: gone, user: u}}]
current-context: gone
`

const twoScenarios = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, provider: existing, existing: {kubeconfig: none}, istio: {version: 1.30.3}}]
scenarios:
- name: strict
  labels: [strict]
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect: [{from: service-a, to: service-b, port: 8080, result: mtls}]
- name: rotation
  labels: [rotation, slow]
  steps:
  - wait: {duration: 1s}
`

func loadSuite(t *testing.T, doc string) *scenario.Suite {
	t.Helper()
	s, err := scenario.Load("suite.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// noMesh, noImage and noTransport stand in for the seams a test does not
// reach; reaching them anyway fails the test.
func noMesh(t *testing.T) meshFunc {
	return func(context.Context, target, *scenario.Cluster, *slog.Logger, []istio.Option) (*mesh.Mesh, error) {
		t.Error("the mesh installer was called")
		return nil, errors.New("no mesh in this test")
	}
}

type noImage struct{ t *testing.T }

func (n noImage) Deliver(context.Context, support.E2EClusterProvider, *scenario.Cluster, *slog.Logger) (string, error) {
	n.t.Error("image delivery was called")
	return "", errors.New("no image in this test")
}

func noTransport(*rest.Config) (probe.Execer, error) { return nil, nil }

func newTestRun(t *testing.T, s *scenario.Suite, p *fakeProvider, opts ...Option) (*Run, *bytes.Buffer) {
	t.Helper()
	var log bytes.Buffer
	base := []Option{
		WithReports(t.TempDir()),
		WithLogger(slog.New(NewProgressHandler(&log))),
		WithProviders(func(c *scenario.Cluster, dir string, _ *slog.Logger) (support.E2EClusterProvider, error) {
			p.dir = t.TempDir()
			return p, nil
		}),
		withMesh(noMesh(t)), WithImageDelivery(noImage{t}), WithTransport(noTransport),
	}
	r, err := New(s, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	// A test that stops early still releases the cluster (its Lease) and
	// closes the run folder.
	t.Cleanup(func() {
		_ = r.Teardown(context.Background())
		_ = r.Close()
	})
	return r, &log
}

// A cluster created but never reached is destroyed at teardown, and the
// run folder still says what happened: the setup's failure in JUnit (every
// planned step skipped with it as the reason), results.json and
// report.html.
func TestCreatedButUnreachableClusterIsDestroyed(t *testing.T) {
	p := &fakeProvider{kubeconfig: []byte(unreachableKubeconfig)}
	r, log := newTestRun(t, loadSuite(t, twoScenarios), p, WithReachTimeout(2*time.Second))
	sum, err := r.Execute(t.Context(), t.Context())
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if created, destroyed := p.counts(); created != 1 || destroyed != 1 {
		t.Errorf("created %d, destroyed %d clusters; want the one created to be destroyed\n%s", created, destroyed, log)
	}
	if !sum.SetupFailed || sum.OK() || sum.Skipped != 3 || sum.Passed != 0 || sum.Failed != 0 {
		t.Errorf("summary %+v, want the setup failed and the 3 steps skipped", sum)
	}
	if len(sum.Failures) != 1 || !strings.Contains(sum.Failures[0].Reason, "https://127.0.0.1:1") ||
		!strings.Contains(sum.Failures[0].Reason, "did not answer within 2s") {
		t.Errorf("setup failure %+v, want it to name the API server and the bound", sum.Failures)
	}

	cases := readJUnit(t, r.JUnitPath())
	if c := cases["[SynchronizedBeforeSuite]"]; c.Failure == nil || !strings.Contains(c.Failure.Message, "did not answer") {
		t.Errorf("setup testcase %+v, want it failed with the reason", c)
	}
	for _, name := range []string{"[It] strict 1 mtls namespace STRICT [Serial, strict]", "[It] strict 2 expect (1 pair) [Serial, strict]", "[It] rotation 1 wait [Serial, rotation, slow]"} {
		c, ok := cases[name]
		if !ok || c.Skipped == nil || !strings.Contains(c.Skipped.Message, "setup failed") {
			t.Errorf("testcase %q = %+v, want it skipped because the setup failed (cases: %v)", name, c, keys(cases))
		}
	}
	raw, err := os.ReadFile(r.JUnitPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"INVALID NODE TYPE", "01/01/01", "disabled=", "skipped - "} {
		if bytes.Contains(raw, []byte(bad)) {
			t.Errorf("junit.xml holds %q:\n%s", bad, raw)
		}
	}
	for _, want := range []string{`<testsuites name="meshproof mtls (scenarios.yaml)" tests="4" failures="1" errors="0"`, `tests="4" failures="1" errors="0" skipped="3"`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("junit.xml lacks %s:\n%s", want, raw)
		}
	}

	obs, verdicts, err := report.ReadResults(filepath.Join(r.Dir(), report.ResultsFile))
	if err != nil || len(obs) != 0 || len(verdicts) != 4 {
		t.Errorf("results.json: %d observations, %d verdicts, %v; want the setup's and three skipped steps' verdicts", len(obs), len(verdicts), err)
	}
	page, err := os.ReadFile(filepath.Join(r.Dir(), report.HTMLFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"did not answer within 2s", `href="junit.xml"`} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("report.html lacks %q", want)
		}
	}
}

// A run that lasts longer than the clean-up bound still cleans up: the
// bound counts from when the teardown begins, not from the run's start (a
// deadline set at the start ran out during long runs' steps, and their
// clusters and namespaces were left behind).
func TestCleanupBoundStartsWithTheCleanup(t *testing.T) {
	p := &fakeProvider{kubeconfig: []byte(unreachableKubeconfig)}
	const bound = 1500 * time.Millisecond
	r, log := newTestRun(t, loadSuite(t, twoScenarios), p, WithReachTimeout(2*time.Second), WithCleanupTimeout(bound))
	start := time.Now()
	if _, err := r.Execute(t.Context(), t.Context()); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if took := time.Since(start); took <= bound {
		t.Fatalf("the run took %s, not longer than the bound %s: the test proves nothing", took, bound)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.destroyed != 1 || p.destroyErr != nil || p.destroyLeft <= 0 || p.destroyLeft > bound {
		t.Errorf("Destroy called %d times with %s of a %s bound left (%v); want once, within a bound that began with the teardown\n%s", p.destroyed, p.destroyLeft, bound, p.destroyErr, log)
	}
}

// Ctrl-C while the provider creates the cluster: Create returns only when
// the provider is done (kind cannot be interrupted), and the cluster it
// made is destroyed at teardown because it was registered before Create.
func TestInterruptedCreateIsDestroyed(t *testing.T) {
	p := &fakeProvider{block: true, creating: make(chan struct{})}
	r, log := newTestRun(t, loadSuite(t, twoScenarios), p)
	ctx, interrupt := context.WithCancel(t.Context())
	go func() {
		<-p.creating
		interrupt()
	}()
	sum, err := r.Execute(ctx, t.Context())
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if created, destroyed := p.counts(); created != 1 || destroyed != 1 {
		t.Errorf("created %d, destroyed %d; want the interrupted cluster destroyed\n%s", created, destroyed, log)
	}
	if !sum.SetupFailed || !strings.Contains(sum.Failures[0].Reason, "context canceled") {
		t.Errorf("summary %+v, want the setup failed by the interrupt", sum)
	}
	if _, err := os.Stat(r.JUnitPath()); err != nil {
		t.Errorf("no JUnit after an interrupt: %v", err)
	}
}

func TestLabelFilterSelectsScenarios(t *testing.T) {
	filter, err := WithLabelFilter("strict || (rotation && !slow)")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := newTestRun(t, loadSuite(t, twoScenarios), &fakeProvider{}, filter)
	var names []string
	for _, sc := range r.Scenarios() {
		names = append(names, sc.Name)
	}
	if strings.Join(names, ",") != "strict" {
		t.Errorf("selected %v, want only strict", names)
	}
	if _, err := WithLabelFilter("strict &&"); err == nil || !strings.Contains(err.Error(), `label filter "strict &&"`) {
		t.Errorf("a broken filter: %v", err)
	}
}

type junitCase struct {
	Name    string `xml:"name,attr"`
	Failure *struct {
		Message string `xml:"message,attr"`
	} `xml:"failure"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
}

func readJUnit(t *testing.T, path string) map[string]junitCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[string]junitCase{}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			out[c.Name] = c
		}
	}
	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A suite whose steps the engine cannot run with proxyless workloads (a
// rotation of one, a root rotation next to them) is refused by validation,
// each step at its line and saying what is missing; a suite built in code
// that holds them anyway (so validation never saw it) is refused by New
// from the same table, before anything exists: no run folder, no cluster.
// gRPC ports and proxyless workloads as such are not refused.
func TestProxylessCertificateStepsAreRefusedBeforeAnything(t *testing.T) {
	const file = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, pluggedCA: true}}]
fixtures:
  workloads:
  - {name: service-a, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: grpc-a, proxyless: true}
  - {name: legacy, mesh: false}
scenarios:
- {name: s, steps: [{name: wait, wait: {duration: 1s}}, {name: rot, timeout: 13h, rotate: {workload: grpc-a}}, {name: root, rotateRoot: {}}]}
`
	_, err := scenario.Load("grpc.yaml", []byte(file))
	for _, want := range []string{`grpc.yaml:10:102: scenarios[0].steps[1].rotate.workload: workload "grpc-a" is proxyless gRPC, and a rotate step needs to read the certificate it serves`,
		`grpc.yaml:10:137: scenarios[0].steps[2].rotateRoot: rotateRoot needs to read the certificate it serves for every in-mesh workload, which meshproof cannot for proxyless gRPC grpc-a: a proxyless pod has no Envoy`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation: %v\nwant it to say %q", err, want)
		}
	}
	// The same file with a sidecar workload to rotate passes validation;
	// made proxyless in code, New refuses it.
	s, err := scenario.Load("grpc.yaml", []byte(strings.Replace(strings.Replace(file, "rotate: {workload: grpc-a}", "rotate: {workload: service-a}", 1), ", {name: root, rotateRoot: {}}", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	s.Fixtures.Workloads[0].DataPlane, s.Fixtures.Workloads[0].Proxyless = scenario.DataPlaneProxyless, true
	reports := t.TempDir()
	_, err = New(s, WithReports(reports))
	if err == nil || !strings.Contains(err.Error(), `workload "service-a" is proxyless gRPC, and a rotate step needs to read the certificate it serves`) {
		t.Fatalf("New: %v, want the rotation of a proxyless workload refused", err)
	}
	if strings.Contains(err.Error(), `"wait"`) || strings.Contains(err.Error(), "7070") {
		t.Errorf("error %q names what runs: the wait step or the grpc port", err)
	}
	if entries, _ := os.ReadDir(reports); len(entries) != 0 {
		t.Errorf("the refused run left %v in the reports folder", entries)
	}
}

// A kubeconfig a provider writes for a cluster the run creates (as kind
// does, with the cluster's admin credentials) goes to a private directory
// under meshproof's cache, never the run folder; it is removed with the
// run, and under --keep it stays and the run says where and why.
func TestClusterKubeconfigsStayOutOfTheRunFolder(t *testing.T) {
	const kindLike = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, istio: {version: 1.30.3}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`
	const token = "meshproof-run-test-credential-41d7"
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%t", keep), func(t *testing.T) {
			cache, reports := t.TempDir(), t.TempDir()
			t.Setenv("MESHPROOF_CACHE", cache)
			p := &fakeProvider{kubeconfig: []byte(strings.Replace(unreachableKubeconfig, "token: x", "token: "+token, 1))}
			var log bytes.Buffer
			r, err := New(loadSuite(t, kindLike), WithReports(reports), WithKeep(keep), WithReachTimeout(time.Second),
				WithLogger(slog.New(NewProgressHandler(&log))), withMesh(noMesh(t)), WithImageDelivery(noImage{t}), WithTransport(noTransport),
				WithProviders(func(_ *scenario.Cluster, dir string, _ *slog.Logger) (support.E2EClusterProvider, error) {
					p.dir = dir
					return p, os.MkdirAll(dir, 0o700)
				}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Execute(t.Context(), t.Context()); err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(cache, "kubeconfigs", r.ID()); p.dir != want {
				t.Errorf("kubeconfig directory %s, want %s", p.dir, want)
			}
			filepath.WalkDir(reports, func(path string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if data, _ := os.ReadFile(path); bytes.Contains(data, []byte(token)) {
						t.Errorf("%s holds the cluster's credential", path)
					}
				}
				return err
			})
			kubeconfig := filepath.Join(p.dir, "fake.kubeconfig")
			_, statErr := os.Stat(kubeconfig)
			switch {
			case !keep && !errors.Is(statErr, os.ErrNotExist):
				t.Errorf("the run's kubeconfig outlives it: %v", statErr)
			case keep && statErr != nil:
				t.Errorf("--keep: the kubeconfig of the cluster left running is gone: %v", statErr)
			case keep && (!strings.Contains(log.String(), "Its kubeconfig holds the cluster's admin credentials; it is kept outside the reports folder (so that publishing reports never publishes it): delete it with the cluster") ||
				!strings.Contains(log.String(), kubeconfig)):
				t.Errorf("--keep does not say where the kubeconfig is and why:\n%s", log.String())
			}
		})
	}
}
