package rehearsal_test

import (
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	echowire "github.com/meshproof/meshproof/fixtures/echo/wire"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
	"github.com/meshproof/meshproof/harness/internal/wire"
	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// clusters is a pool of local clusters the tests rehearse on, in parallel:
// a test takes one for all its runs (one after the other, as runs on one
// kind cluster would follow each other) and gives it back.
var clusters = make(chan *testCluster, poolSize)

// poolSize bounds how many rehearsals run at once; most of a rehearsal's
// time is waiting, not computing.
const poolSize = 2

// testCluster is a local cluster with istiod and a client for it.
type testCluster struct {
	*cluster.Cluster
	kube kubernetes.Interface
}

func TestMain(m *testing.M) {
	proc.StopOnSignal(30 * time.Second)
	flag.Parse()
	if flag.Lookup("test.run").Value.String() == "^$" {
		// Benchmarks only (go test -run '^$' -bench ...): each makes
		// clusters of its own, as make rehearse does; an idle pool would
		// only take CPU from what they measure.
		os.Exit(m.Run())
	}
	code := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute) // includes first-use builds
		defer cancel()
		var created []*cluster.Cluster
		defer func() {
			for _, lc := range created {
				if err := lc.Destroy(context.Background()); err != nil {
					fmt.Fprintln(os.Stderr, "destroying a local cluster:", err)
				}
			}
		}()
		errs := make(chan error, poolSize)
		var mu sync.Mutex
		for i := range poolSize {
			go func() {
				lc := cluster.New(cluster.WithName(fmt.Sprintf("rehearsal-test-%d", i)), cluster.WithIstiod())
				mu.Lock()
				created = append(created, lc)
				mu.Unlock()
				if _, err := lc.Create(ctx); err != nil {
					errs <- err
					return
				}
				kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
				if err == nil {
					clusters <- &testCluster{Cluster: lc, kube: kube}
				}
				errs <- err
			}()
		}
		for range poolSize {
			if err := <-errs; err != nil {
				fmt.Fprintln(os.Stderr, "these tests need local clusters with istiod:", err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// takeCluster gives the test a local cluster of its own until it ends.
func takeCluster(t *testing.T) *testCluster {
	t.Helper()
	select {
	case c := <-clusters:
		t.Cleanup(func() { clusters <- c })
		t.Logf("rehearsing on local cluster %s", c.Name())
		return c
	case <-t.Context().Done():
		t.Fatal("no local cluster became free")
		return nil
	}
}

// progressLog is where a test's run writes its progress lines. With -v
// they are logged as they come; otherwise they are kept and logged only if
// the test fails, after its failures, so that a CI log cut to its first
// and last lines shows why the test failed rather than how its run began.
func progressLog(t *testing.T) io.Writer {
	if testing.Verbose() {
		return testWriter{t}
	}
	kept := &lines{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("progress of the run:\n%s", kept)
		}
	})
	return kept
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lines are the progress lines a run wrote.
type lines struct {
	mu   sync.Mutex
	text strings.Builder
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.String()
}

// newRun is a rehearsal run of the file at path (relative to this
// package) on the shared local cluster, writing under a fresh folder.
func newRun(t *testing.T, c *testCluster, path string, opts ...rehearsal.Option) *run.Run {
	t.Helper()
	return newRunLogging(t, c, path, progressLog(t), opts...)
}

// newRunLogging is newRun with the progress lines written to w.
func newRunLogging(t *testing.T, c *testCluster, path string, w io.Writer, opts ...rehearsal.Option) *run.Run {
	t.Helper()
	return newRunSelecting(t, c, path, "", w, opts...)
}

// newRunSelecting is newRunLogging of the scenarios labelFilter selects
// ("" for all), as `meshproof run --label-filter` selects them.
func newRunSelecting(t *testing.T, c *testCluster, path, labelFilter string, w io.Writer, opts ...rehearsal.Option) *run.Run {
	t.Helper()
	filter, err := run.WithLabelFilter(labelFilter)
	if err != nil {
		t.Fatal(err)
	}
	return newRunWith(t, c, path, w, []run.Option{filter}, opts...)
}

// newRunWith is newRunLogging with run options of the test's own (given
// before the rehearsal's, which win).
func newRunWith(t *testing.T, c *testCluster, path string, w io.Writer, runOpts []run.Option, opts ...rehearsal.Option) *run.Run {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	suite, err := scenario.Load(path, data)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(run.NewProgressHandler(w))
	r, err := run.New(suite, append(append([]run.Option{run.WithReports(t.TempDir()), run.WithSuiteName(run.SuiteName(path)), run.WithLogger(logger)}, runOpts...),
		rehearsal.New(append([]rehearsal.Option{rehearsal.WithCluster(rehearsal.Borrow(c.Cluster)), rehearsal.WithLogger(logger)}, opts...)...).RunOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// execute runs r to its end and checks that the run left nothing of its
// own on the cluster.
func execute(t *testing.T, c *testCluster, r *run.Run) run.Summary {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("run folder kept: %s", r.Dir())
		}
	})
	t.Helper()
	start := time.Now()
	sum, err := r.Execute(t.Context(), context.Background())
	t.Logf("rehearsal took %s: %d passed, %d failed, %d skipped, setup failed %t", time.Since(start).Round(time.Second), sum.Passed, sum.Failed, sum.Skipped, sum.SetupFailed)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	leftNothing(t, c, r.ID())
	return sum
}

// leftNothing fails when an object labelled with the run's id is still on
// the cluster and not being deleted (objects terminating excepted: a pod
// with a sidecar drains for Istio's terminationDrainDuration, as a kubelet
// would hold it, and the next run's sweep waits for them), or an Istio
// release is still installed.
func leftNothing(t *testing.T, c *testCluster, runID string) {
	t.Helper()
	cfg := c.KubernetesRestConfig()
	disco := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	meta := metadata.NewForConfigOrDie(cfg)
	refs, err := deploy.Find(t.Context(), disco, meta, deploy.RunSelector(runID))
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		if ref.Terminating {
			continue
		}
		if ref.Resource.Resource == "namespaces" {
			ns, err := c.kube.CoreV1().Namespaces().Get(t.Context(), ref.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || err == nil && ns.DeletionTimestamp != nil {
				continue // gone since it was listed, or going
			}
			if err == nil {
				// Who wrote it and when, for a namespace that was never
				// deleted or was made again.
				var managers []string
				for _, m := range ns.ManagedFields {
					managers = append(managers, m.Manager+" at "+m.Time.UTC().Format(time.TimeOnly))
				}
				t.Errorf("left on the cluster: %s, created %s, written by %v", ref, ns.CreationTimestamp.UTC().Format(time.TimeOnly), managers)
				continue
			}
		}
		t.Errorf("left on the cluster: %s", ref)
	}
	releases, err := c.kube.CoreV1().Secrets("istio-system").List(t.Context(), metav1.ListOptions{LabelSelector: "owner=helm"})
	if err == nil {
		for _, s := range releases.Items {
			t.Errorf("Helm release left installed: %s", s.Name)
		}
	}
}

// runFolder is what a run wrote.
type runFolder struct {
	junit        reporters.JUnitTestSuites
	observations []results.Observation
	verdicts     []results.Verdict
	html         string
}

func readFolder(t *testing.T, dir string) runFolder {
	t.Helper()
	var f runFolder
	data, err := os.ReadFile(filepath.Join(dir, report.JUnitFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(data, &f.junit); err != nil {
		t.Fatalf("junit.xml: %v", err)
	}
	if f.observations, f.verdicts, err = report.ReadResults(filepath.Join(dir, report.ResultsFile)); err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(filepath.Join(dir, report.HTMLFile))
	if err != nil {
		t.Fatal(err)
	}
	f.html = string(html)
	return f
}

// failedCases are the names of the JUnit testcases that failed.
func (f runFolder) failedCases() []string {
	var out []string
	for _, s := range f.junit.TestSuites {
		for _, tc := range s.TestCases {
			if tc.Failure != nil {
				out = append(out, tc.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// bannerTells checks report.html's banner against the run's summary (what
// the CLI's final line prints): PASSED or FAILED as the run, the same step
// counts and the setup's outcome; the setup is its own section (phases, no
// timeline), never a scenario or a step without a verdict; a failed setup
// is the one failure listed.
func (f runFolder) bannerTells(t *testing.T, sum run.Summary) {
	t.Helper()
	m := regexp.MustCompile(`<div class="banner banner-(\w+)" role="status"><span class="headline">([A-Z ]+)</span> <span class="counts">([^<]*)</span>`).FindStringSubmatch(f.html)
	if m == nil {
		t.Fatal("report.html has no banner")
	}
	headline, setup := "PASSED", "; setup passed"
	if !sum.OK() {
		headline = "FAILED"
	}
	if sum.SetupFailed {
		setup = "; setup failed"
	}
	if m[1] != strings.ToLower(headline) || m[2] != headline || !strings.HasSuffix(m[3], ": "+sum.Counts()+setup) {
		t.Errorf("banner %q %q, want %s ending in %q (the CLI's counts)", m[2], m[3], headline, sum.Counts()+setup)
	}
	steps := fmt.Sprintf("%d steps", sum.Passed+sum.Failed+sum.Skipped)
	if steps == "1 steps" {
		steps = "1 step"
	}
	if !strings.Contains(m[3], " "+steps+": ") || strings.Contains(m[3], "without a verdict") {
		t.Errorf("banner %q, want %s, each with a verdict", m[3], steps)
	}
	section := regexp.MustCompile(`(?s)<section class="setup" id="setup">.*?</section>`).FindString(f.html)
	if section == "" || strings.Contains(section, "<svg") || !strings.Contains(section, "setup-phase") {
		t.Errorf("the setup's section is missing, draws a timeline or lists no phase:\n%s", section)
	}
	if strings.Contains(f.html, `"></a>`) || strings.Contains(f.html, "<h2>Scenario </h2>") {
		t.Error("report.html lists a scenario without a name (the setup counted as one)")
	}
	failures := strings.Count(f.html, `<div class="failure"`)
	if sum.SetupFailed && (failures != 1 || !strings.Contains(f.html, `<div class="failure" id="failure-setup">`)) {
		t.Errorf("%d failures listed, want the setup alone", failures)
	}
	if want := sum.Failed; !sum.SetupFailed && failures != want {
		t.Errorf("%d failures listed, want %d", failures, want)
	}
}

// labelled checks that everything the run wrote says it was a rehearsal.
func (f runFolder) labelled(t *testing.T) {
	t.Helper()
	label, envoyLabel := rehearsal.Label(), rehearsal.EnvoyLabel()
	for _, o := range f.observations {
		f.envoyDecided(t, o)
	}
	for _, v := range f.verdicts {
		if v.DataPlane != label && v.DataPlane != envoyLabel {
			t.Fatalf("verdict %s/%s says data plane %q, want %q or %q", v.Scenario, v.Step, v.DataPlane, label, envoyLabel)
		}
	}
	for _, s := range f.junit.TestSuites {
		for _, tc := range s.TestCases {
			if tc.Properties == nil || !strings.HasPrefix(tc.Properties.WithName(junit.DataPlaneProperty), "rehearsal: ") {
				t.Fatalf("testcase %q has no %s property saying what stood in for the data plane", tc.Name, junit.DataPlaneProperty)
			}
		}
	}
	want := []string{"rehearsal: data plane simulated"}
	if len(f.observations) > 0 {
		want = append(want, "data plane: Envoy simulated on the configuration istiod served", "decided by ")
	}
	for _, w := range want {
		if !strings.Contains(f.html, w) {
			t.Fatalf("report.html does not say %q", w)
		}
	}
}

// envoyDecided checks that an observation between pods with an Envoy
// sidecar or none was decided by the Envoy evaluator on istiod's
// configuration: its label, and the configuration that decided it.
func (f runFolder) envoyDecided(t *testing.T, o results.Observation) {
	t.Helper()
	if o.DataPlane != rehearsal.EnvoyLabel() {
		t.Fatalf("observation %s %s→%s:%d says data plane %q, want %q", o.Step, o.From, o.To, o.Port, o.DataPlane, rehearsal.EnvoyLabel())
	}
	if o.DecidedBy == "" || (o.From != "legacy" && !strings.HasPrefix(o.From, "grpc-") && !strings.Contains(o.DecidedBy, "client sidecar: listener")) {
		t.Fatalf("observation %s %s→%s:%d says it was decided by %q", o.Step, o.From, o.To, o.Port, o.DecidedBy)
	}
}

// proxylessLabelled checks what answered each observation of a run whose
// proxyless workloads serve gRPC on grpcPort: their real processes for
// gRPC from a proxyless client and for legacy's calls towards a proxyless
// server, the simulation for the rest (the rehearsal's router); and that
// some observation was real.
func (f runFolder) proxylessLabelled(t *testing.T, grpcPort int, workloads ...string) {
	t.Helper()
	counts := map[string]int{}
	for _, o := range f.observations {
		counts[o.DataPlane]++
		switch {
		case o.Ztunnel != nil || strings.HasPrefix(o.From, "amb-") || strings.HasPrefix(o.To, "amb-"):
			// A pair with an ambient side: ambientProven checks it.
		case (slices.Contains(workloads, o.From) && o.Port == grpcPort) || (o.From == "legacy" && slices.Contains(workloads, o.To)):
			if o.DataPlane != rehearsal.ProxylessLabel() {
				t.Errorf("observation %s %s→%s:%d says data plane %q, want %q", o.Step, o.From, o.To, o.Port, o.DataPlane, rehearsal.ProxylessLabel())
			}
		case slices.Contains(workloads, o.To):
			// A proxyless server that no real process answers here (a
			// sidecar client's call): the oracle's mixed rules. A
			// proxyless pod's HTTP and TCP leave it without Envoy and
			// are decided as a plain client's (default).
			if o.DataPlane != rehearsal.Label() {
				t.Errorf("observation %s %s→%s:%d says data plane %q, want %q", o.Step, o.From, o.To, o.Port, o.DataPlane, rehearsal.Label())
			}
		default:
			f.envoyDecided(t, o)
		}
	}
	if counts[rehearsal.ProxylessLabel()] == 0 {
		t.Error("no observation came from the real proxyless processes")
	}
	if counts[rehearsal.EnvoyLabel()] == 0 {
		t.Error("no observation was decided on istiod's configuration")
	}
	t.Logf("observations by data plane: %v", counts)
}

// ambientProven checks the observations of pairs with an ambient side
// (one of the workloads named): every one says the simulated ztunnel
// decided it; every answered one carries ztunnel's evidence, the server's ztunnel
// (reporter destination) towards an ambient server, the client's (reporter
// source) otherwise, mutual_tls with both identities for an mtls result,
// unknown for plaintext; and report.html sets their cells apart.
func (f runFolder) ambientProven(t *testing.T, ambient ...string) {
	t.Helper()
	td := "spiffe://cluster.local/ns/"
	n := 0
	for _, o := range f.observations {
		if !slices.Contains(ambient, o.From) && !slices.Contains(ambient, o.To) {
			continue
		}
		n++
		where := fmt.Sprintf("observation %s %s→%s:%d (%s)", o.Step, o.From, o.To, o.Port, o.Outcome())
		if o.DataPlane != rehearsal.AmbientLabel() {
			t.Errorf("%s says data plane %q, want %q", where, o.DataPlane, rehearsal.AmbientLabel())
		}
		z := o.Ztunnel
		if o.Result == scenario.ResultFail {
			if z != nil {
				t.Errorf("%s failed, yet carries ztunnel evidence %s", where, z)
			}
			continue
		}
		wantReporter := "source"
		if slices.Contains(ambient, o.To) {
			wantReporter = "destination"
		}
		switch {
		case z == nil:
			t.Errorf("%s carries no ztunnel evidence", where)
		case z.Reporter != wantReporter || z.Opened+z.Bytes == 0 || !strings.HasPrefix(z.Pod, "istio-system/ztunnel-"):
			t.Errorf("%s: evidence %s, want reporter %s with growth from a ztunnel pod", where, z, wantReporter)
		case o.Result == scenario.ResultMTLS && (z.SecurityPolicy != "mutual_tls" || !strings.HasPrefix(z.SourcePrincipal, td) || !strings.HasSuffix(z.SourcePrincipal, "/sa/"+o.From) ||
			!strings.HasSuffix(z.DestinationPrincipal, "/sa/"+o.To) || o.ClientID != z.SourcePrincipal || o.ServerID != z.DestinationPrincipal):
			t.Errorf("%s: evidence %s, identities %s → %s; want mutual_tls from %s to %s", where, z, o.ClientID, o.ServerID, o.From, o.To)
		case o.Result == scenario.ResultPlaintext && z.SecurityPolicy != "unknown":
			t.Errorf("%s: evidence %s, want connection_security_policy unknown", where, z)
		}
	}
	if n == 0 {
		t.Error("no observation of a pair with an ambient side")
	}
	if !strings.Contains(f.html, "cell-ambient") || !strings.Contains(f.html, `<span class="ztunnel">◇ ztunnel (destination) mutual_tls`) ||
		!strings.Contains(f.html, "data plane: ztunnel simulated") {
		t.Error("report.html does not set the ambient cells apart with ztunnel's evidence and their data plane")
	}
}

// wireVerdicts checks what the wire witness says of every observation:
// the real proxyless processes' mtls requests were seen encrypted and
// their plaintext ones with the canary in cleartext, from real packets on
// loopback; what the simulation answered carries not-captured (simulated
// data plane). Without CAP_NET_RAW the real ones say so instead (CI has
// it: with CI=true its absence fails).
func (f runFolder) wireVerdicts(t *testing.T) {
	t.Helper()
	capErr := echowire.CheckCapability()
	if capErr != nil && os.Getenv("CI") == "true" {
		t.Errorf("CI=true and the wire witness cannot capture: %v", capErr)
	}
	counts := map[string]int{}
	witnessed := 0
	for _, o := range f.observations {
		where := fmt.Sprintf("observation %s %s→%s:%d (%s)", o.Step, o.From, o.To, o.Port, o.Outcome())
		if o.Wire.Witnessed() {
			witnessed++
		}
		if o.Wire == nil {
			t.Errorf("%s carries no wire verdict", where)
			continue
		}
		key := o.DataPlane + ": " + string(o.Result) + " " + o.Wire.Verdict
		counts[key]++
		switch {
		case o.DataPlane != rehearsal.ProxylessLabel():
			if o.Wire.Verdict != results.WireNotCaptured || !o.Wire.Unavailable || o.Wire.Detail != wire.SimulatedDataPlane {
				t.Errorf("%s, simulated, says wire %+v", where, *o.Wire)
			}
		case capErr != nil:
			if o.Wire.Verdict != results.WireNotCaptured || !o.Wire.Unavailable || !strings.Contains(o.Wire.Detail, "CAP_NET_RAW") {
				t.Errorf("%s, without CAP_NET_RAW, says wire %+v", where, *o.Wire)
			}
		case o.Result == scenario.ResultMTLS && o.Wire.Verdict != results.WireEncrypted:
			t.Errorf("%s: the wire witness saw %s (%s), want encrypted", where, o.Wire.Verdict, o.Wire.Detail)
		case o.Result == scenario.ResultPlaintext && (o.Wire.Verdict != results.WirePlaintext || o.Wire.Packet == ""):
			t.Errorf("%s: the wire witness saw %s (%s), want plaintext with the canary's packet", where, o.Wire.Verdict, o.Wire.Detail)
		}
		if o.DataPlane == rehearsal.ProxylessLabel() && !echoapi.IsCanary(o.Canary) {
			t.Errorf("%s carries no canary (%q)", where, o.Canary)
		}
	}
	if capErr == nil && witnessed == 0 {
		t.Error("no observation was witnessed on the wire (encrypted or plaintext from real packets)")
	}
	t.Logf("wire verdicts: %v", counts)
}

// The default scenarios pass on the rehearsal, end to end, through the same
// run library as meshproof run, as many at once as meshproof run runs them;
// every observation carries its expectation, and the expect steps after
// mtls steps say how long their policies took to be enforced. Then
// the same file in two shards, merged, gives the JUnit testcases of the
// unsharded run, each once.
func TestDefaultScenariosPass(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRunWith(t, c, "../../scenarios.yaml", progressLog(t), []run.Option{run.WithParallel(run.DefaultParallel)})
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() || sum.Passed == 0 {
		t.Errorf("summary %+v, want every step passed; failed: %q", sum, f.failedCases())
	}
	if got := f.junit.Tests; got == 0 || f.junit.Failures != 0 || f.junit.Errors != 0 {
		t.Errorf("junit.xml: %d tests, %d failures, %d errors", got, f.junit.Failures, f.junit.Errors)
	}
	if len(f.observations) == 0 {
		t.Fatal("results.json holds no observation")
	}
	f.bannerTells(t, sum)
	for _, o := range f.observations {
		if o.Expected == "" {
			t.Errorf("observation %s %s %s→%s:%d carries no expectation", o.Scenario, o.Step, o.From, o.To, o.Port)
			break
		}
	}
	// grpc-a and grpc-b are proxyless: gRPC from them, and from legacy
	// towards them, is answered by their real processes; the rest by the
	// simulation.
	f.proxylessLabelled(t, 7070, "grpc-a", "grpc-b")
	// amb-a and amb-b are ambient: the simulated ztunnels decided their
	// pairs, and the ztunnels' counts proved them.
	f.ambientProven(t, "amb-a", "amb-b")
	f.wireVerdicts(t)
	enforced := 0
	for _, s := range f.junit.TestSuites {
		for _, tc := range s.TestCases {
			if tc.Properties != nil && tc.Properties.WithName(junit.EnforcedAfterProperty) != "" {
				enforced++
			}
			if tc.Properties == nil || !strings.Contains(tc.Properties.WithName(junit.DataPlaneProperty), "rehearsal: ") {
				t.Fatalf("testcase %q has no %s property saying what answered it", tc.Name, junit.DataPlaneProperty)
			}
		}
	}
	if enforced == 0 {
		t.Errorf("no testcase has a %s property", junit.EnforcedAfterProperty)
	}
	for _, want := range []string{"data plane: real (proxyless gRPC)", "data plane: Envoy simulated on the configuration istiod served", "data plane: simulated", "enforced "} {
		if !strings.Contains(f.html, want) {
			t.Errorf("report.html marks no cell %q", want)
		}
	}
	shardsMergeToTheWholeRun(t, c, f)
}

// shardsMergeToTheWholeRun rehearses scenarios.yaml again in two shards on
// c, merges their folders and checks that the merged JUnit holds exactly
// the testcases of the unsharded run whole, none twice.
func shardsMergeToTheWholeRun(t *testing.T, c *testCluster, whole runFolder) {
	t.Helper()
	var dirs []string
	for i := 1; i <= 2; i++ {
		sh := run.Shard{Index: i, Count: 2}
		r := newRunWith(t, c, "../../scenarios.yaml", progressLog(t), []run.Option{run.WithParallel(run.DefaultParallel), run.WithShard(sh)})
		if n := len(r.Scenarios()); n == 0 || n == len(r.Planned()) {
			t.Errorf("shard %s runs %d of %d scenarios", sh, n, len(r.Planned()))
		}
		if sum := execute(t, c, r); !sum.OK() {
			t.Errorf("shard %s: %+v", sh, sum)
		}
		dirs = append(dirs, r.Dir())
	}
	out := filepath.Join(t.TempDir(), "merged")
	if _, err := report.Merge(out, dirs...); err != nil {
		t.Fatal(err)
	}
	merged := readFolder(t, out)
	names := func(f runFolder) []string {
		var out []string
		for _, s := range f.junit.TestSuites {
			for _, tc := range s.TestCases {
				out = append(out, tc.Name)
			}
		}
		return out
	}
	got, want := names(merged), names(whole)
	seen := map[string]int{}
	for _, n := range got {
		if seen[n]++; seen[n] == 2 {
			t.Errorf("the merged JUnit holds %q twice", n)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("the merged JUnit's testcases differ from the unsharded run's:\n got  %q\n want %q", got, want)
	}
	if merged.junit.Failures != 0 || len(merged.verdicts) != len(whole.verdicts) {
		t.Errorf("merged: %d failures, %d verdicts; the whole run had %d verdicts", merged.junit.Failures, len(merged.verdicts), len(whole.verdicts))
	}
	merged.proxylessLabelled(t, 7070, "grpc-a", "grpc-b")
}

// The ambient migration recipe, examples/ambient-migration.yaml, passes as
// written: a namespace half moved to ambient under STRICT (every pair and
// port as predicted, each data plane's certificates rotated under
// traffic), tightened from PERMISSIVE to STRICT while sidecar and ambient
// workloads call each other, and then its sidecar workloads (frontend,
// orders) moved to ambient by a moveDataPlane step under continuous
// traffic with STRICT kept. Its ambient pairs are decided by the simulated
// ztunnels and proven by their counts; its sidecar pairs by the Envoy
// evaluator. After the move, frontend's and orders' pairs are ambient's
// (ztunnel's label and evidence, no X-Forwarded-Client-Cert), which shows
// the move happened: the pods were relabelled, the real istiod's injector
// left them without a sidecar, the simulated istio-cni enrolled them and
// the simulated ztunnels decided their requests on istiod's configuration.
func TestAmbientMigrationExample(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	// As `meshproof run` runs it: its three scenarios at once, each in
	// namespaces of its own.
	r := newRunWith(t, c, "../../examples/ambient-migration.yaml", progressLog(t), []run.Option{run.WithParallel(run.DefaultParallel)})
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() || sum.Passed != 13 {
		t.Errorf("summary %+v, want the 13 steps passed; failed: %q", sum, f.failedCases())
	}
	kinds := map[string]int{}
	for _, v := range f.verdicts {
		if v.Status == results.Passed {
			kinds[v.Kind]++
		}
	}
	for k, n := range map[string]int{"expect": 5, "rotate": 3, "transition": 1, "moveDataPlane": 1} {
		if kinds[k] != n {
			t.Errorf("%d passed %s steps, want %d: %v", kinds[k], k, n, kinds)
		}
	}
	const moving, moveStep = "move-sidecars-to-ambient", "move frontend and orders to ambient"
	// Before the move (and in the other scenarios) cart and payments are
	// the ambient workloads; after it, every workload in the mesh.
	afterMove := map[string]bool{"4 expect auto": true, "5 rotate orders": true}
	var mixed, moved runFolder
	mixed.html, moved.html = f.html, f.html
	var during []results.Observation
	for _, o := range f.observations {
		switch {
		case o.Scenario == moving && o.Step == moveStep:
			during = append(during, o)
		case o.Scenario == moving && afterMove[o.Step]:
			moved.observations = append(moved.observations, o)
		default:
			mixed.observations = append(mixed.observations, o)
		}
	}
	ambient := []string{"cart", "payments"}
	mixed.ambientProven(t, ambient...)
	for _, o := range mixed.observations {
		if !slices.Contains(ambient, o.From) && !slices.Contains(ambient, o.To) && o.DataPlane != rehearsal.EnvoyLabel() {
			t.Errorf("observation %s %s→%s:%d says data plane %q, want %q", o.Step, o.From, o.To, o.Port, o.DataPlane, rehearsal.EnvoyLabel())
		}
	}
	// After the move: frontend's and orders' pairs carry ztunnel's label
	// and evidence, mtls proven by the destination's ztunnel.
	moved.ambientProven(t, "frontend", "orders", "cart", "payments")
	for _, o := range moved.observations {
		if (o.From == "frontend" || o.To == "orders") && o.Result == scenario.ResultMTLS && (o.Ztunnel == nil || o.Ztunnel.Reporter != "destination" && o.To != "batch") {
			t.Errorf("after the move, %s %s→%s:%d is not proven by ztunnel: %+v", o.Step, o.From, o.To, o.Port, o.Ztunnel)
		}
	}
	// During the move: requests on every pair, none failed that the
	// policies do not refuse, frontend's and orders' pods on sidecars first
	// and on ambient last.
	byPair := map[string][]results.Observation{}
	for _, o := range during {
		key := fmt.Sprintf("%s→%s:%d", o.From, o.To, o.Port)
		byPair[key] = append(byPair[key], o)
		if o.Result == scenario.ResultFail && o.From != "batch" {
			t.Errorf("during the move, %s failed: %s (%s)", key, o.Reason, o.Error)
		}
		if o.From == "batch" && o.Result != scenario.ResultFail {
			t.Errorf("during the move, %s was %s, want refused", key, o.Result)
		}
	}
	for _, key := range []string{"frontend→orders:8080", "cart→orders:8080", "frontend→cart:8080"} {
		obs := byPair[key]
		if len(obs) < 2 {
			t.Errorf("during the move, %d observations of %s, want several", len(obs), key)
			continue
		}
		first, last := obs[0], obs[len(obs)-1]
		if strings.HasPrefix(key, "frontend→orders") && (first.Ztunnel != nil || first.DataPlane != rehearsal.EnvoyLabel()) {
			t.Errorf("%s before the move: data plane %q, ztunnel %v; want the sidecars' X-Forwarded-Client-Cert", key, first.DataPlane, first.Ztunnel)
		}
		if last.Ztunnel == nil || last.Ztunnel.Reporter != "destination" || last.Result != scenario.ResultMTLS {
			t.Errorf("%s at the end of the move: %s, ztunnel %v; want mtls counted by orders' or cart's ztunnel", key, last.Result, last.Ztunnel)
		}
	}
	t.Logf("the move step saw %d requests: %d pairs", len(during), len(byPair))
	for _, v := range f.verdicts {
		if v.Step == moveStep {
			t.Logf("the move step took %s; deadlines %+v", v.Duration, v.Deadlines)
		}
	}
	f.bannerTells(t, sum)
}

// The ambient upgrade recipe, examples/ambient-upgrade.yaml, passes as
// written: istiod, istio-cni and ztunnel upgraded in place from 1.29.6 to
// 1.30.3 under traffic between ambient and sidecar workloads, the sidecar
// restarted onto the new proxy and the ambient workloads left running,
// each ambient workload's node running the new ztunnel after, then STRICT
// and a ztunnel-held certificate's rotation checked on 1.30.3.
func TestAmbientUpgradeExample(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "../../examples/ambient-upgrade.yaml")
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() || sum.Passed != 5 {
		t.Errorf("summary %+v, want the 5 steps passed; failed: %q", sum, f.failedCases())
	}
	kinds := map[string]int{}
	for _, v := range f.verdicts {
		if v.Status == results.Passed {
			kinds[v.Kind]++
		}
	}
	for k, n := range map[string]int{"expect": 2, "upgrade": 1, "rotate": 1} {
		if kinds[k] != n {
			t.Errorf("%d passed %s steps, want %d: %v", kinds[k], k, n, kinds)
		}
	}
	f.ambientProven(t, "amb-a", "amb-b")
	f.bannerTells(t, sum)
}

// Expectations that contradict Istio fail exactly the steps that hold them,
// with red cells in report.html and a diagnostics folder per failure.
func TestContradictionsFailExactlyTheirSteps(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "testdata/contradicting.yaml")
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	want := []string{
		"[It] permissive-expected-strict expect legacy reset [Serial]",
		"[It] strict-expected-open expect legacy plaintext [Serial]",
	}
	if got := f.failedCases(); !slices.Equal(got, want) {
		t.Errorf("failed testcases %q, want %q", got, want)
	}
	if sum.Failed != len(want) {
		t.Errorf("summary %+v, want %d failed", sum, len(want))
	}
	for _, v := range f.verdicts {
		if v.Status != results.Failed {
			continue
		}
		if v.Diagnostics == "" {
			t.Errorf("failed step %s/%s has no diagnostics", v.Scenario, v.Step)
		} else if _, err := os.Stat(filepath.Join(r.Dir(), v.Diagnostics)); err != nil {
			t.Errorf("diagnostics of %s/%s: %v", v.Scenario, v.Step, err)
		}
	}
	if n := strings.Count(f.html, "cell cell-differs"); n != 2 {
		t.Errorf("report.html has %d red cells (expected differs from observed), want 2", n)
	}
	f.bannerTells(t, sum)
	f.labelled(t)
}

// A policy changed behind the harness's back between its steps is what
// the next expect step sees: the simulated data plane decides from the
// cluster, never from the file.
func TestPolicyChangedBehindTheHarnessFails(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "testdata/behind-the-back.yaml")
	ctx := t.Context()
	defer func() {
		if err := r.Teardown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
		leftNothing(t, c, r.ID())
	}()
	if err := r.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	sc := r.Scenarios()[0]
	if err := r.BeginScenario(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if err := r.RunStep(ctx, sc, 0); err != nil { // STRICT
		t.Fatal(err)
	}
	// Someone turns the namespace's policy to PERMISSIVE.
	changeMode(t, c, "rehearsal-behind", "PERMISSIVE")
	err := r.RunStep(ctx, sc, 1)
	if err == nil {
		t.Fatal("the expect step passed although the stored policy lets plaintext in")
	}
	if !strings.Contains(err.Error(), "plaintext") {
		t.Errorf("the step failed for another reason: %v", err)
	}
	if err := r.EndScenario(ctx, sc); err != nil {
		t.Error(err)
	}
}

// changeMode sets the mode of every PeerAuthentication in namespace, as a
// person with kubectl would.
func changeMode(t *testing.T, c *testCluster, namespace, mode string) {
	t.Helper()
	dyn := dynamic.NewForConfigOrDie(c.KubernetesRestConfig())
	pas := dyn.Resource(schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}).Namespace(namespace)
	list, err := pas.List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) == 0 {
		t.Fatalf("no PeerAuthentication in %s to change", namespace)
	}
	patch := fmt.Appendf(nil, `{"spec":{"mtls":{"mode":%q}}}`, mode)
	for _, pa := range list.Items {
		if _, err := pas.Patch(t.Context(), pa.GetName(), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
