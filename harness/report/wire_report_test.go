package report_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

const wireSuite = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 3s, requestTimeout: 200ms}
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: %s
  workloads: [{name: service-a}, {name: service-b}, {name: legacy, mesh: false}]
scenarios:
- name: ordinary-failure
  steps:
  - name: legacy-blocked
    expect: [{from: legacy, to: service-b, result: fail, reason: reset}]
- name: leak
  steps:
  - name: mtls-holds
    expect: [{from: service-a, to: service-b, result: mtls}]
`

// meshThatLies answers service-a's requests with mTLS (XFCC and all) and
// legacy's with plaintext; its wire witness saw service-a's port 8080
// canaries in cleartext on the wire.
type meshThatLies struct{ ns string }

func (m meshThatLies) Probe(_ context.Context, c results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	var out []echoapi.ProbeResult
	for _, tgt := range spec.Targets {
		for i := range spec.RequestsPerTarget {
			r := echoapi.ProbeResult{Target: tgt.Name, URL: tgt.URL, Attempt: i, StatusCode: 200, Result: echoapi.ResultPlaintext, Canary: echoapi.NewCanary()}
			if strings.HasPrefix(c.Name, "service-a") {
				r.Result = echoapi.ResultMTLS
				r.XFCC = []echoapi.XFCCElement{{By: "spiffe://cluster.local/ns/" + m.ns + "/sa/service-b", URI: "spiffe://cluster.local/ns/" + m.ns + "/sa/service-a"}}
			}
			out = append(out, r)
		}
	}
	return out, nil
}

func (meshThatLies) Watch(_ context.Context, c results.Pod, _ []results.Pod) (func(context.Context, []echoapi.ProbeResult), error) {
	return func(_ context.Context, rs []echoapi.ProbeResult) {
		for i := range rs {
			a := echoapi.WitnessAnswer{ID: fmt.Sprint(i), Verdict: echoapi.WitnessPlaintext, Detail: "canary seen in cleartext",
				Packet: &echoapi.PacketHeader{Src: c.IP + ":41000", Dst: "10.0.0.2:8080", Flags: "P.", Length: 210}}
			rs[i].Witness = &a
		}
	}, nil
}

// The page and the JUnit of a run whose mesh claims mTLS while the wire
// witness saw the canaries in cleartext, from the engine's own verdicts:
// that failure, of its own kind, comes first in both, although its step
// ran after an ordinary failure; the matrix marks the cell.
func TestReportOfAWireLeak_ScriptedTransport(t *testing.T) {
	env := kube.Get(t)
	ns := env.NewNamespace(t, "report-wire-leak")
	env.EnsureNamespace(t, scenario.IstioRootNamespace)
	s, err := scenario.Load("scenarios.yaml", []byte(fmt.Sprintf(wireSuite, ns)))
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"service-a", "service-b", "legacy"} {
		readyPod(t, env.Client, ns, w, fmt.Sprintf("10.0.0.%d", i+1))
	}
	run, err := report.Open(filepath.Join(t.TempDir(), "reports"), "wire-run")
	if err != nil {
		t.Fatal(err)
	}
	mesh := meshThatLies{ns: ns}
	e, err := engine.New(s, "c", env.Client, mesh, "wire-run", engine.WithRecorder(run), engine.WithWireWitness(mesh, false), engine.WithLogger(testsupport.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	var verdicts []results.Verdict
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		started := time.Now()
		err := e.RunStep(t.Context(), sc, 0)
		v := engine.Verdict(sc, 0, started, time.Since(started), err)
		run.RecordVerdict(v)
		verdicts = append(verdicts, v)
	}
	if err := os.WriteFile(run.JUnitPath(), []byte("<testsuites/>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	if verdicts[0].Status != results.Failed || verdicts[0].Failure != "" || verdicts[1].Failure != results.FailureWirePlaintext {
		t.Fatalf("verdicts %+v", verdicts)
	}

	page, err := os.ReadFile(run.HTMLPath())
	if err != nil {
		t.Fatal(err)
	}
	doc := report.ParsePage(t, page)
	find, text, by := report.FindAll, report.Text, report.ByTagClass
	failures := find(doc, by("div", "failure"))
	if len(failures) != 2 || !strings.Contains(text(failures[0]), "leak / mtls-holds") || len(find(failures[0], by("span", "failure-kind"))) != 1 ||
		!strings.Contains(text(failures[0]), "10.0.0.1:41000 > 10.0.0.2:8080") {
		t.Errorf("failures, in order: %q", report.Texts(failures))
	}
	leaks := find(doc, by("span", "wire-leak"))
	if len(leaks) != 1 || !strings.Contains(text(leaks[0]), "wire: plaintext") {
		t.Errorf("cells marked as leaks: %q", report.Texts(leaks))
	}

	rep := junit.FromVerdicts("s", []*scenario.Scenario{&s.Scenarios[0], &s.Scenarios[1]}, verdicts, time.Now(), time.Second)
	if rep.Cases[0].Failure != results.FailureWirePlaintext || !strings.Contains(rep.Cases[0].Name, "leak mtls-holds") {
		t.Errorf("JUnit's first case: %+v", rep.Cases[0])
	}
}
