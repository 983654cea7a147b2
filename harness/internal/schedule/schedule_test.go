package schedule

import (
	"cmp"
	"context"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshproof/meshproof/harness/scenario"
)

const mixed = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 2s, consecutive: 3}
clusters: [{name: c, istio: {version: 1.30.3, workloadCertTTL: 1m}}]
fixtures:
  namespace: apps
  workloads:
  - {name: service-a}
  - {name: service-b}
  - {name: legacy, mesh: false}
  - {name: grpc-a, proxyless: true}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}], destinationRules: [{workload: service-b, mode: ISTIO_MUTUAL}]}
  - expect: [{from: service-a, to: service-b, result: mtls}]
- name: mesh-strict
  steps:
  - mtls: {peerAuthentications: [{scope: mesh, mode: STRICT}]}
  - expect: [{from: service-a, to: service-b, result: mtls}]
- name: mesh-dr
  steps:
  - mtls: {destinationRules: [{scope: mesh, mode: ISTIO_MUTUAL}]}
- name: auto
  steps:
  - mtls: {peerAuthentications: [{scope: workload, workload: service-b, mode: STRICT}]}
  - expect: auto
  - transition: {to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}, observe: 30s, traffic: {pairs: [{from: service-a, to: service-b}]}}
- name: rotation
  steps:
  - rotate: {workload: service-b, within: 2m}
- name: tls
  matrix: {tls: [DISABLE, ISTIO_MUTUAL]}
  steps:
  - mtls: {destinationRules: [{workload: service-b, mode: "${tls}"}]}
`

func load(t *testing.T, text string) *scenario.Suite {
	t.Helper()
	s, err := scenario.Load("mixed.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func scenarios(s *scenario.Suite) []*scenario.Scenario {
	out := make([]*scenario.Scenario, len(s.Scenarios))
	for i := range s.Scenarios {
		out[i] = &s.Scenarios[i]
	}
	return out
}

func TestPlaceSaysWhatIsShared(t *testing.T) {
	s := load(t, mixed)
	want := map[string]string{
		"strict":           "",
		"mesh-strict":      `step "1 mtls mesh STRICT" (mixed.yaml:19:5) applies a mesh-scope PeerAuthentication (mixed.yaml:19:34), which every namespace follows`,
		"mesh-dr":          "mesh-wide DestinationRule",
		"auto":             "",
		"rotation":         "",
		"tls[tls=DISABLE]": "",
	}
	for _, sc := range scenarios(s) {
		w, ok := want[sc.Name]
		if !ok {
			continue
		}
		p := Place(s, sc)
		if p.Isolated != (w == "") || !strings.Contains(p.Alone, w) {
			t.Errorf("%s: isolated %t, alone %q; want %q", sc.Name, p.Isolated, p.Alone, w)
		}
	}
}

func TestPlaceUpgradeAndRootRotationRunAlone(t *testing.T) {
	s := load(t, `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.29.6, pluggedCA: true}}]
scenarios:
- name: up
  steps: [{upgrade: {to: 1.30.3}}]
- name: root
  steps: [{rotateRoot: {}}]
`)
	for _, sc := range scenarios(s) {
		p := Place(s, sc)
		if p.Isolated || !strings.Contains(p.Alone, "istio") && !strings.Contains(p.Alone, "Istio") {
			t.Errorf("%s: %+v, want alone because of the control plane", sc.Name, p)
		}
	}
}

func TestNamespaceIsADNSLabelOfItsOwn(t *testing.T) {
	seen := map[string]string{}
	for _, sc := range []string{"strict", "client-tls-towards-strict[tls=DISABLE]", "client-tls-towards-strict[tls=disable]", strings.Repeat("long-", 30), "ü"} {
		for _, run := range []string{"20261207-113801-d3ec742e", "20261207-113801-aaaaaaaa"} {
			ns := Namespace(run, sc, "meshproof")
			if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
				t.Errorf("Namespace(%q, %q) = %q: %v", run, sc, ns, errs)
			}
			if prev, ok := seen[ns]; ok {
				t.Errorf("%q and %q/%q share namespace %s", prev, run, sc, ns)
			}
			seen[ns] = run + "/" + sc
		}
	}
	if ns := Namespace("r", "strict", "meshproof"); !strings.HasPrefix(ns, "meshproof-strict-") {
		t.Errorf("namespace %q does not read as the fixtures' namespace and the scenario", ns)
	}
}

func TestIsolateCopiesWhatTheScenarioUses(t *testing.T) {
	s := load(t, mixed)
	sc := &s.Scenarios[0] // strict: service-a, service-b
	c := Isolate(s, sc, "run1")
	ns := Namespace("run1", "strict", "apps")
	var names []string
	for _, w := range c.Suite.Fixtures.Workloads {
		names = append(names, w.Name)
		if w.Namespace != ns {
			t.Errorf("workload %s in %s, want %s", w.Name, w.Namespace, ns)
		}
	}
	if !slices.Equal(names, []string{"service-a", "service-b"}) {
		t.Errorf("copied workloads %v, want service-a and service-b", names)
	}
	if pa := c.Scenario.Steps[0].MTLS.PeerAuthentications[0]; pa.Namespace != ns {
		t.Errorf("the namespace policy goes to %s, want %s", pa.Namespace, ns)
	}
	if got := c.Suite.Workload("service-a").SPIFFEID("cluster.local"); got != "spiffe://cluster.local/ns/"+ns+"/sa/service-a" {
		t.Errorf("identity in the copy %s", got)
	}
	if c.Scenario.Name != sc.Name || c.Scenario.Steps[0].Name != sc.Steps[0].Name {
		t.Error("the copy must keep the scenario's and steps' names")
	}
	// The file's suite and scenario are untouched.
	if s.Workload("service-a").Namespace != "apps" || sc.Steps[0].MTLS.PeerAuthentications[0].Namespace != "apps" || len(s.Fixtures.Workloads) != 4 {
		t.Error("Isolate changed the file's suite")
	}
	if got := c.CopyNamespaces(); !slices.Equal(got, []string{ns}) {
		t.Errorf("copy namespaces %v", got)
	}
	// expect: auto asserts every pair: every workload is copied, and the
	// transition's target policies move too.
	auto := Isolate(s, &s.Scenarios[3], "run1")
	if len(auto.Suite.Fixtures.Workloads) != 4 {
		t.Errorf("expect auto copied %d workloads, want all 4", len(auto.Suite.Fixtures.Workloads))
	}
	if got := auto.Scenario.Steps[2].Transition.To.PeerAuthentications[0].Namespace; got != Namespace("run1", "auto", "apps") {
		t.Errorf("transition policy namespace %s", got)
	}
	// A rotation keeps the engine's observers: every non-proxyless workload.
	rot := Isolate(s, &s.Scenarios[4], "run1")
	names = nil
	for _, w := range rot.Suite.Fixtures.Workloads {
		names = append(names, w.Name)
	}
	if !slices.Equal(names, []string{"service-a", "service-b", "legacy"}) {
		t.Errorf("rotation copied %v", names)
	}
}

func TestBuildRunsIsolatedOnesLongestFirstThenTheRestAlone(t *testing.T) {
	s := load(t, mixed)
	sch := Build(s, scenarios(s), 4)
	var together, alone []string
	for _, p := range sch.Together {
		together = append(together, p.Scenario.Name)
	}
	for _, p := range sch.Alone {
		alone = append(alone, p.Scenario.Name)
	}
	if want := []string{"auto", "rotation", "strict", "tls[tls=DISABLE]", "tls[tls=ISTIO_MUTUAL]"}; !slices.Equal(together, want) {
		t.Errorf("together %v, want %v", together, want)
	}
	if want := []string{"mesh-strict", "mesh-dr"}; !slices.Equal(alone, want) {
		t.Errorf("alone %v, want %v", alone, want)
	}
	text := sch.String()
	t.Log("\n" + text)
	for _, want := range []string{"up to 4 at once", "then alone", "mesh-strict: step", "mesh-scope PeerAuthentication"} {
		if !strings.Contains(text, want) {
			t.Errorf("schedule text lacks %q", want)
		}
	}
	serial := Build(s, scenarios(s), 1)
	if len(serial.Together) != 0 || len(serial.Alone) != len(s.Scenarios) || !strings.Contains(serial.String(), "--parallel 1") {
		t.Errorf("--parallel 1: %s", serial)
	}
	for i, p := range serial.Alone {
		if p.Scenario != &s.Scenarios[i] {
			t.Errorf("--parallel 1 runs %s at %d, want file order", p.Scenario.Name, i)
		}
	}
	mine := Build(s, scenarios(s), 4, SerialOn("c", "namespace apps was there before the run"))
	if len(mine.Together) != 0 || !strings.Contains(mine.String(), "namespace apps was there") {
		t.Errorf("serial cluster: %s", mine)
	}
}

// The default scenarios: all isolated, so they run together.
func TestDefaultScenariosRunTogether(t *testing.T) {
	data, err := os.ReadFile("../../../scenarios.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := load(t, string(data))
	sch := Build(s, scenarios(s), 4)
	if len(sch.Alone) != 0 || len(sch.Together) != len(s.Scenarios) {
		t.Errorf("default scenarios:\n%s", sch)
	}
}

func TestShardsPartitionStablyAndBalanced(t *testing.T) {
	data, err := os.ReadFile("../../../scenarios.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := load(t, string(data))
	all := scenarios(s)
	for _, n := range []int{1, 2, 3, len(all) + 2} {
		seen := map[string]int{}
		for i := 1; i <= n; i++ {
			sh := Shard{Index: i, Count: n}
			picked := sh.Select(s, all)
			for _, sc := range picked {
				seen[sc.Name]++
			}
			// The same shard of the same scenarios in another order.
			shuffled := slices.Clone(all)
			rand.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
			var again []string
			for _, sc := range sh.Select(s, shuffled) {
				again = append(again, sc.Name)
			}
			var names []string
			for _, sc := range picked {
				names = append(names, sc.Name)
			}
			slices.Sort(names)
			slices.Sort(again)
			if !slices.Equal(names, again) {
				t.Errorf("shard %s: %v, reordered %v", sh, names, again)
			}
		}
		for _, sc := range all {
			if seen[sc.Name] != 1 {
				t.Errorf("%d shards: %s runs %d times", n, sc.Name, seen[sc.Name])
			}
		}
	}
	// The two scenarios estimated longest go to different shards of two
	// (which ones they are follows the file: scenarios.yaml's change).
	byEstimate := slices.Clone(all)
	slices.SortStableFunc(byEstimate, func(a, b *scenario.Scenario) int { return cmp.Compare(estimate(s, b), estimate(s, a)) })
	one := Shard{1, 2}.Select(s, all)
	var names []string
	for _, sc := range one {
		names = append(names, sc.Name)
	}
	if first, second := byEstimate[0].Name, byEstimate[1].Name; slices.Contains(names, first) == slices.Contains(names, second) {
		t.Errorf("shard 1/2 %v: the two longest scenarios, %s and %s, should be split", names, first, second)
	}
	for _, bad := range []string{"0/2", "3/2", "1", "a/b", "1/0"} {
		if _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
	if sh, err := ParseShard("2/3"); err != nil || sh != (Shard{2, 3}) {
		t.Errorf("ParseShard(2/3) = %v, %v", sh, err)
	}
}

func TestLockKeepsExclusiveHoldersAlone(t *testing.T) {
	var l Lock
	ctx := context.Background()
	var shared, exclusive atomic.Int32
	var wg sync.WaitGroup
	var overlaps atomic.Int32
	for i := range 40 {
		wg.Go(func() {
			if i%5 == 0 {
				release, err := l.Request(true).Wait(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				if exclusive.Add(1) != 1 || shared.Load() != 0 {
					overlaps.Add(1)
				}
				time.Sleep(time.Millisecond)
				exclusive.Add(-1)
				release()
				return
			}
			release, err := l.Request(false).Wait(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			shared.Add(1)
			if exclusive.Load() != 0 {
				overlaps.Add(1)
			}
			time.Sleep(time.Millisecond)
			shared.Add(-1)
			release()
		})
	}
	wg.Wait()
	if overlaps.Load() != 0 {
		t.Errorf("%d times an exclusive holder overlapped another", overlaps.Load())
	}
}

// granted reports whether r has been granted.
func granted(r *Request) bool {
	select {
	case <-r.granted:
		return true
	default:
		return false
	}
}

// Requests are granted in the order they were made, whichever goroutine
// waits first: shared ones made before an exclusive one hold the lock
// together at once (the schedule's isolated scenarios, then the one that
// runs alone); shared ones made after it wait until it has had the lock.
func TestLockGrantsInRequestOrder(t *testing.T) {
	var l Lock
	ctx := context.Background()
	s1, s2, s3 := l.Request(false), l.Request(false), l.Request(false)
	x := l.Request(true)
	s4 := l.Request(false)
	if !granted(s1) || !granted(s2) || !granted(s3) {
		t.Fatal("shared requests made before the exclusive one are not all granted at once")
	}
	if granted(x) || granted(s4) {
		t.Fatal("the exclusive request, or a shared one behind it, was granted while shared holders hold the lock")
	}
	var releases []func()
	for _, r := range []*Request{s1, s2, s3} {
		release, err := r.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		releases = append(releases, release)
	}
	releases[0]()
	releases[0]() // giving back twice counts once
	releases[1]()
	if granted(x) {
		t.Fatal("the exclusive request was granted while a shared holder holds the lock")
	}
	releases[2]()
	if !granted(x) || granted(s4) {
		t.Fatalf("after the shared holders: exclusive granted %t, the shared one behind it %t; want only the exclusive", granted(x), granted(s4))
	}
	release, _ := x.Wait(ctx)
	release()
	if !granted(s4) {
		t.Fatal("the shared request behind the exclusive one was not granted after it")
	}
	release, _ = s4.Wait(ctx)
	release()
}

// A wait ends with its context and gives way to no one: a cancelled
// exclusive request leaves the queue, and the shared ones behind it go in.
func TestLockWaitEndsWithItsContext(t *testing.T) {
	var l Lock
	ctx := context.Background()
	hold, _ := l.Request(false).Wait(ctx)
	x := l.Request(true)
	behind := l.Request(false)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := x.Wait(cctx); err == nil {
		t.Error("the exclusive wait returned while a shared holder held the lock")
	}
	if !granted(behind) {
		t.Error("a cancelled exclusive request still holds back the shared request behind it")
	}
	release, _ := behind.Wait(ctx)
	release()
	hold()
	// With no one left, an exclusive request is granted at once.
	x2 := l.Request(true)
	if !granted(x2) {
		t.Error("an exclusive request on a free lock is not granted")
	}
	// Cancelled after it was granted, it gives the lock back.
	done, stop := context.WithCancel(ctx)
	stop()
	<-done.Done()
	if release, err := x2.Wait(done); err == nil {
		release()
	}
	if r := l.Request(false); !granted(r) {
		t.Error("the lock was not given back")
	}
}
