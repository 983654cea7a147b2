package engine

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// recordingProber answers every target and records the batches it got and
// how many ran at once.
type recordingProber struct {
	mu              sync.Mutex
	batches         [][]string
	running, maxRun atomic.Int32
}

func (p *recordingProber) Probe(_ context.Context, _ results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	n := p.running.Add(1)
	defer p.running.Add(-1)
	for {
		m := p.maxRun.Load()
		if n <= m || p.maxRun.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(5 * time.Millisecond)
	var urls []string
	var out []echoapi.ProbeResult
	for _, t := range spec.Targets {
		urls = append(urls, t.URL)
		out = append(out, echoapi.ProbeResult{Target: t.Name, URL: t.URL, Result: echoapi.ResultPlaintext})
	}
	p.mu.Lock()
	p.batches = append(p.batches, urls)
	p.mu.Unlock()
	return out, nil
}

// From a proxyless client every xds:/// target is a batch of its own, its
// other targets share one, and its batches never overlap, even from
// concurrent callers; a sidecar client's batch goes whole.
func TestProxylessClientBatches(t *testing.T) {
	suite := &scenario.Suite{Fixtures: scenario.Fixtures{Workloads: []scenario.Workload{
		{Name: "grpc-a", Namespace: "ns", Proxyless: true},
		{Name: "service-a", Namespace: "ns"},
	}}}
	p := &recordingProber{}
	e := &Engine{suite: suite, prober: p}
	spec := echoapi.ProbeSpec{Deadline: echoapi.Duration(7 * time.Second), Targets: []echoapi.Target{
		{Name: "grpc-b:7070", URL: "xds:///grpc-b.ns.svc.cluster.local:7070"},
		{Name: "service-b:8080", URL: "http://service-b.ns.svc.cluster.local:8080/"},
		{Name: "grpc-c:7070", URL: "xds:///grpc-c.ns.svc.cluster.local:7070"},
	}}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			got, err := e.probe(t.Context(), "grpc-a", results.Pod{Namespace: "ns", Name: "grpc-a-xds-client-0"}, spec)
			if err != nil {
				t.Error(err)
			}
			if len(got) != len(spec.Targets) {
				t.Errorf("%d results, want one per target", len(got))
			}
		})
	}
	wg.Wait()
	if m := p.maxRun.Load(); m != 1 {
		t.Errorf("%d batches of the proxyless client ran at once, want 1", m)
	}
	if len(p.batches) != 12 {
		t.Fatalf("%d batches, want 3 per call: %q", len(p.batches), p.batches)
	}
	for _, b := range p.batches {
		xds := slices.IndexFunc(b, func(u string) bool { return u[:4] == "xds:" }) >= 0
		if xds && len(b) != 1 {
			t.Errorf("batch %q has an xds:/// target beside others", b)
		}
	}
	p.batches = nil
	if _, err := e.probe(t.Context(), "service-a", results.Pod{Namespace: "ns", Name: "service-a-0"}, spec); err != nil {
		t.Fatal(err)
	}
	if len(p.batches) != 1 || len(p.batches[0]) != 3 {
		t.Errorf("a sidecar client's batch was split: %q", p.batches)
	}
}
