package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// flakyExec is a Prober whose exec fails where execFails says so (call n,
// from 0, of one client workload), and otherwise answers like next: the
// harness's transport failing, not the mesh.
type flakyExec struct {
	next      Prober
	mu        sync.Mutex
	calls     map[string]int
	execFails func(workload string, call int) bool
}

func (f *flakyExec) Probe(ctx context.Context, c results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	workload := c.Name[:strings.LastIndex(c.Name, "-")]
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	n := f.calls[workload]
	f.calls[workload]++
	f.mu.Unlock()
	if f.execFails(workload, n) {
		return nil, errors.New("exec: error dialing backend: EOF")
	}
	return f.next.Probe(ctx, c, spec)
}

// recreatingNodes are fakeNodes that replace a workload's pods the way a
// Recreate rollout (or a single replica without surge) does: the old pod
// is gone before the new one is ready, so for a while the client has no
// ready pod at all, on the real API server.
func recreatingNodes(t *testing.T, ns string, mc *recordingMesh, gap time.Duration) {
	t.Helper()
	f := &fakeNodes{t: t, appNS: ns, proxyImage: mc.injector, podStarted: func(ctx context.Context, workload, pod string) {
		var pods corev1.PodList
		if err := kubeFast().List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{"app": workload}); err != nil {
			return
		}
		for i := range pods.Items {
			if p := &pods.Items[i]; p.Name != pod {
				if err := kubeFast().Delete(ctx, p); err != nil && !apierrors.IsNotFound(err) {
					t.Logf("deleting %s: %v", p.Name, err)
				}
			}
		}
		select {
		case <-time.After(gap):
		case <-ctx.Done():
		}
	}}
	f.start()
	startWorkloads(t, ns)
}

func eventsOf(rec *recordedEvents, kind results.EventKind) []string {
	rec.emu.Lock()
	defer rec.emu.Unlock()
	var out []string
	for _, e := range rec.events {
		if e.Kind == kind {
			out = append(out, e.Detail)
		}
	}
	return out
}

func TestTrafficHarnessErrorsAreNotFailedRequests_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - upgrade: {to: 1.30.3, charts: `+chartsDir(t)+`, traffic: {every: 30ms, maxFailures: 0}}
`)
	mc := &recordingMesh{proxy: "docker.io/istio/proxyv2:1.29.6", upgrade: "docker.io/istio/proxyv2:1.30.3"}
	// Each restarted client has no ready pod for 200ms.
	recreatingNodes(t, ns, mc, 200*time.Millisecond)
	p := &flakyExec{next: meshTraffic(ns, nil), execFails: func(workload string, call int) bool {
		switch workload {
		case "service-a": // every third exec fails; the retry observes
			return call%3 == 1
		case "service-b": // two whole rounds (three attempts each) lost
			return call >= 4 && call < 10
		}
		return false
	}}
	var rec recordedEvents
	e := newMeshEngine(t, s, p, WithMeshControl(mc), WithRecorder(&rec))
	sc := &s.Scenarios[0]
	if err := e.RunStep(context.Background(), sc, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.RunStep(context.Background(), sc, 1); err != nil {
		t.Fatalf("harness hiccups failed the upgrade: %v", err)
	}
	for _, o := range rec.all() {
		if o.Result == scenario.ResultFail {
			t.Errorf("a harness error was recorded as a failed request: %+v", o)
		}
	}
	harness := strings.Join(eventsOf(&rec, results.EventHarnessError), "\n")
	t.Logf("harness-error events:\n%s", harness)
	for _, want := range []string{
		"probing from service-a failed and was retried (observed on attempt 2): probing from pod " + ns + "/service-a-",
		"exec: error dialing backend: EOF",
		"cannot observe service-b (3 attempts)",
		"its requests are not counted until it is observed again (limit 30s)",
		"service-b observed again after",
		"workload service-a has no ready pod", // the rollout's gap, read from the API server
	} {
		if !strings.Contains(harness, want) {
			t.Errorf("harness-error events lack %q", want)
		}
	}
	if strings.Contains(harness, "could not observe") {
		t.Error("a gap within the limit was reported as over it")
	}
}

func TestTrafficUnobservableClientBeyondTheLimitFailsTheStep_ScriptedTransport(t *testing.T) {
	s, ns := suiteIn(t, `  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - upgrade: {to: 1.30.3, charts: `+chartsDir(t)+`, traffic: {every: 30ms, maxFailures: 0}}
`)
	mc := &recordingMesh{proxy: "docker.io/istio/proxyv2:1.29.6", upgrade: "docker.io/istio/proxyv2:1.30.3"}
	upgradeFixture(t, ns, "", mc.injector)
	// service-b's exec fails from its second round on, for good.
	p := &flakyExec{next: meshTraffic(ns, nil), execFails: func(workload string, call int) bool {
		return workload == "service-b" && call >= 1
	}}
	var rec recordedEvents
	e := newMeshEngine(t, s, p, WithMeshControl(mc), WithRecorder(&rec), WithObservationGapLimit(300*time.Millisecond))
	sc := &s.Scenarios[0]
	if err := e.RunStep(context.Background(), sc, 0); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := e.RunStep(context.Background(), sc, 1)
	t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
	for _, want := range []string{"could not observe service-b for ", "(limit 300ms): last error: probing from pod " + ns + "/service-b-", "exec: error dialing backend: EOF"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want an error saying %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "requests failed") {
		t.Errorf("the harness's failures were counted as failed requests: %v", err)
	}
	for _, o := range rec.all() {
		if o.Result == scenario.ResultFail {
			t.Errorf("a harness error was recorded as a failed request: %+v", o)
		}
	}
	if ev := strings.Join(eventsOf(&rec, results.EventHarnessError), "\n"); !strings.Contains(ev, "could not observe service-b for ") {
		t.Errorf("no harness-error event says the limit was passed:\n%s", ev)
	}
}
