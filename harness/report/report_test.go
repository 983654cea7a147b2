package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// observation returns a distinct observation with every field set.
func observation(i int) results.Observation {
	return results.Observation{
		Time:     time.Date(2026, 11, 26, 23, 49, 4, 123456789+i, time.UTC),
		Scenario: "strict-mesh",
		Step:     fmt.Sprintf("step-%d", i),
		From:     "service-a",
		To:       "service-b",
		Port:     8080 + i,
		Pod:      "service-a-7d9f8c-x2x4z",
		Result:   scenario.ResultFail,
		Expected: "fail (any reason)",
		Reason:   "reset",
		Status:   503,
		Latency:  time.Duration(i)*time.Millisecond + 17,
		ClientID: "spiffe://cluster.local/ns/mp-a/sa/service-a",
		ServerID: "spiffe://cluster.local/ns/mp-b/sa/service-b",
		Error:    "read: connection reset by peer \"quoted\"\n",
		// Not what a reset looks like on a real data plane; only the
		// round trip matters here.
		DataPlane: "rehearsal: data plane simulated",
	}
}

func open(t *testing.T, root, id string) *Run {
	t.Helper()
	r, err := Open(root, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestOpenTwicePointsLatestAtTheSecond(t *testing.T) {
	root := filepath.Join(t.TempDir(), "reports")
	first := open(t, root, "20261126-100000-aaaaaaaa")
	if got, err := os.Readlink(filepath.Join(root, LatestLink)); err != nil || got != first.ID {
		t.Fatalf("after the first run latest -> %q (%v), want %q", got, err, first.ID)
	}
	second := open(t, root, "20261126-110000-bbbbbbbb")

	link := filepath.Join(root, LatestLink)
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if target != second.ID {
		t.Errorf("latest -> %q, want the relative name %q", target, second.ID)
	}
	// Resolving the link reaches the second run's folder.
	if _, err := os.Stat(filepath.Join(link, ResultsFile)); err != nil {
		t.Errorf("latest does not lead to the run's results: %v", err)
	}
	if second.Dir != filepath.Join(root, second.ID) {
		t.Errorf("Dir = %q", second.Dir)
	}
	if got, want := second.JUnitPath(), filepath.Join(root, second.ID, "junit.xml"); got != want {
		t.Errorf("JUnitPath = %q, want %q", got, want)
	}
	if got, want := second.Path("diagnostics", "s", "step"), filepath.Join(root, second.ID, "diagnostics", "s", "step"); got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	// No temporary links are left behind.
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{first.ID, second.ID, LatestLink}; !slices.Equal(names, want) {
		t.Errorf("root holds %v, want %v", names, want)
	}
}

func TestOpenRefusesAReusedRunID(t *testing.T) {
	root := t.TempDir()
	r := open(t, root, "run-1")
	r.Record(observation(1))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(root, "run-1")
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Open with the same id = %v, want an error saying results exist", err)
	}
	// The first run's results are untouched.
	got, _, err := ReadResults(r.ResultsPath())
	if err != nil || len(got) != 1 {
		t.Errorf("first run's results after the refused reopen: %d observations, %v", len(got), err)
	}
}

func TestOpenAcceptsAnExistingRunFolder(t *testing.T) {
	root := t.TempDir()
	// A cluster provider may have written the kubeconfig into the folder first.
	if err := os.MkdirAll(filepath.Join(root, "run-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "run-1", "kubeconfig"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := open(t, root, "run-1")
	if _, err := os.Stat(r.Path("kubeconfig")); err != nil {
		t.Error(err)
	}
}

func TestOpenRefusesALatestThatIsNotALink(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, LatestLink), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Open(root, "run-1")
	if err == nil || !strings.Contains(err.Error(), "is not a symlink") {
		t.Fatalf("Open = %v, want an error about latest not being a symlink", err)
	}
}

func TestRunIDValidation(t *testing.T) {
	root := t.TempDir()
	for _, id := range []string{"", "a/b", `a\b`, "/abs", "..", ".", ".hidden", LatestLink, "a\x00b"} {
		if _, err := Open(root, id); err == nil {
			t.Errorf("Open(%q) succeeded, want the run id refused", id)
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("refused run ids created %d entries in the root", len(entries))
	}
	if err := ValidateRunID("20261126-234904-1a2b3c4d"); err != nil {
		t.Errorf("a run id from ownership.NewRunID was refused: %v", err)
	}
}

func TestConcurrentRecordsAllLand(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r.Record(observation(w*each + i))
			}
		}()
	}
	wg.Wait()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadResults(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != writers*each {
		t.Fatalf("read %d observations, want %d", len(got), writers*each)
	}
	seen := map[string]bool{}
	for _, o := range got {
		seen[o.Step] = true
	}
	for i := range writers * each {
		if !seen[fmt.Sprintf("step-%d", i)] {
			t.Fatalf("observation %d is missing", i)
		}
	}
	// The closed file is plain JSON, one element per line.
	data, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	var plain []map[string]json.RawMessage
	if err := json.Unmarshal(data, &plain); err != nil {
		t.Fatalf("closed results.json is not valid JSON: %v", err)
	}
	for i, e := range plain {
		if _, ok := e["observation"]; !ok || len(e) != 1 {
			t.Fatalf("element %d is not an observation envelope: %v", i, e)
		}
	}
	if lines := bytes.Count(data, []byte("\n")); lines != writers*each+2 {
		t.Errorf("results.json has %d lines, want one per observation plus the brackets", lines)
	}
}

func TestRoundTripEveryField(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	want := observation(3)
	want.Canary = "meshproof-canary-0123456789abcdef0123456789abcdef"
	want.Wire = &results.Wire{Verdict: results.WireNotCaptured, Detail: "simulated data plane", Packet: "10.0.0.1:1 > 10.0.0.2:2: Flags [P.]", Node: "n1", Unavailable: true}
	want.DecidedBy = "client sidecar: listener 0.0.0.0_8080, cluster outbound|8080||b.ns.svc.cluster.local; server sidecar: listener virtualInbound, filter chain 0.0.0.0_8080"
	decided := time.Date(2026, 11, 26, 23, 49, 1, 0, time.UTC)
	want.DecidedAt = &decided
	want.Ztunnel = &results.ZtunnelEvidence{Pod: "istio-system/ztunnel-x", Node: "n1", Reporter: "destination", SecurityPolicy: "mutual_tls",
		SourcePrincipal: "spiffe://cluster.local/ns/a/sa/a", DestinationPrincipal: "spiffe://cluster.local/ns/b/sa/b", Opened: 1, Bytes: 42}
	// Every field must be set, or the round trip would not prove it is kept.
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("test observation leaves field %s unset", v.Type().Field(i).Name)
		}
	}
	r.Record(want)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadResults(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("read %d observations, want 1", len(got))
	}
	if !got[0].Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", got[0].Time, want.Time)
	}
	got[0].Time = want.Time
	if !reflect.DeepEqual(got[0], want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got[0], want)
	}
}

// A verdict with every field set comes back whole, next to the
// observations, in its envelope.
func TestRoundTripVerdict(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	at := time.Date(2026, 11, 26, 23, 49, 4, 5, time.UTC)
	want := results.Verdict{Scenario: "s", Step: "rotate", Kind: "rotate", Status: results.Failed, Reason: "no new serial\nsecond line",
		Started: at, Duration: 3 * time.Second, Source: "scenarios.yaml:3:7",
		Table:       []results.Row{{From: "a", To: "b", Port: 1, Expected: "mtls", LastObserved: "plaintext x1", OverTheWait: "plaintext x3", Why: "got plaintext", Wire: "plaintext x3"}},
		Deadlines:   []results.Deadline{{Name: "new serial within 1s", At: at.Add(time.Second), Detail: "b still serves serial 1f"}},
		Diagnostics: "diagnostics/s/rotate", DataPlane: "rehearsal: data plane simulated", Failure: results.FailureWirePlaintext,
		EnforcedAfter: []results.Enforcement{{Policies: "1 mtls", From: "a", To: "b", Port: 1, After: 112 * time.Millisecond, By: results.EnforcedByPush}}}
	v := reflect.ValueOf(want)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("test verdict leaves field %s unset", v.Type().Field(i).Name)
		}
	}
	r.Record(observation(1))
	r.RecordVerdict(want)
	r.Record(observation(2))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	obs, verdicts, err := ReadResults(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	if len(obs) != 2 || len(verdicts) != 1 {
		t.Fatalf("read %d observations and %d verdicts, want 2 and 1", len(obs), len(verdicts))
	}
	if !reflect.DeepEqual(normalized(verdicts[0]), normalized(want)) {
		t.Errorf("round trip:\n got %+v\nwant %+v", verdicts[0], want)
	}
	data, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(string(data), "\n"); len(lines) < 3 || !strings.HasPrefix(lines[2], `,{"verdict":{"scenario":"s","step":"rotate"`) && !strings.HasPrefix(lines[2], `{"verdict":{"scenario":"s","step":"rotate"`) {
		t.Errorf("the verdict's line reads %q", lines[2])
	}
}

// normalized drops the monotonic clock readings, which JSON does not keep.
func normalized(v results.Verdict) results.Verdict {
	v.Started = v.Started.Round(0).UTC()
	for i := range v.Deadlines {
		v.Deadlines[i].At = v.Deadlines[i].At.Round(0).UTC()
	}
	return v
}

// A results.json from before verdicts, a bare array of observations, still
// reads.
func TestReadBareObservations(t *testing.T) {
	want := []results.Observation{observation(1), observation(2)}
	data, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), ResultsFile)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	obs, verdicts, err := ReadResults(p)
	if err != nil || len(obs) != 2 || len(verdicts) != 0 || obs[1].Port != want[1].Port {
		t.Errorf("read %d observations, %d verdicts, %v", len(obs), len(verdicts), err)
	}
}

// The file a killed run leaves (no Close) reads back with every element.
func TestReadUnterminated(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	for i := range 5 {
		r.Record(observation(i))
	}
	// Copy the file as it is now, before the cleanup closes the run.
	data, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("]")) {
		t.Fatalf("an open results file already holds a closing bracket:\n%s", data)
	}
	cut := filepath.Join(t.TempDir(), ResultsFile)
	if err := os.WriteFile(cut, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _, err := ReadResults(cut)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || got[4].Step != "step-4" {
		t.Errorf("read %d observations from the unterminated file, want 5", len(got))
	}
}

// A closed file truncated right after its last complete element (a crash
// between writes) and one cut inside an element (a crash during a write).
func TestReadTruncated(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	for i := range 3 {
		r.Record(observation(i))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(r.ResultsPath())
	if err != nil {
		t.Fatal(err)
	}
	lastEnd := bytes.LastIndexByte(data, '}') + 1
	secondEnd := bytes.Index(data, []byte("},\n")) + 1
	secondEnd += bytes.Index(data[secondEnd:], []byte("},\n")) + 1

	dir := t.TempDir()
	read := func(name string, content []byte) ([]results.Observation, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		obs, _, err := ReadResults(p)
		return obs, err
	}

	got, err := read("after-last", data[:lastEnd])
	if err != nil || len(got) != 3 {
		t.Errorf("cut after the last element: %d observations, %v; want 3, no error", len(got), err)
	}
	got, err = read("after-separator", data[:secondEnd+1])
	if !errors.Is(err, ErrIncomplete) || len(got) != 2 {
		t.Errorf("cut after a separator: %d observations, %v; want 2 and ErrIncomplete", len(got), err)
	}
	got, err = read("mid-element", data[:lastEnd-10])
	if !errors.Is(err, ErrIncomplete) || len(got) != 2 {
		t.Errorf("cut inside the last element: %d observations, %v; want 2 and ErrIncomplete", len(got), err)
	}
	got, err = read("empty", nil)
	if err != nil || len(got) != 0 {
		t.Errorf("empty file: %d observations, %v", len(got), err)
	}
	got, err = read("no-records", []byte("[\n"))
	if err != nil || len(got) != 0 {
		t.Errorf("opened run with no records: %d observations, %v", len(got), err)
	}
	if _, err := read("not-array", []byte(`{"time":"x"}`)); err == nil {
		t.Error("a file that is not an array was accepted")
	}
	if _, err := read("trailing", append(slices.Clone(data), []byte("[]")...)); err == nil {
		t.Error("data after the closing bracket was accepted")
	}
}

func TestCloseIsIdempotentAndLateRecordsAreReported(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	got, _, err := ReadResults(r.ResultsPath())
	if err != nil || len(got) != 0 {
		t.Errorf("empty closed run reads %d observations, %v", len(got), err)
	}
	data, _ := os.ReadFile(r.ResultsPath())
	if string(data) != "[\n]\n" {
		t.Errorf("empty closed results.json = %q", data)
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err before a late record = %v", err)
	}
	r.Record(observation(1))
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "after") {
		t.Errorf("Err after a late record = %v, want it reported", err)
	}
}

// The pending fsync scheduled by a Record must not outlive Close.
func TestCloseStopsThePendingSync(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	r.Record(observation(1))
	r.results.mu.Lock()
	pending := r.results.syncTimer != nil
	r.results.mu.Unlock()
	if !pending {
		t.Fatal("a Record did not schedule a sync")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.results.mu.Lock()
	defer r.results.mu.Unlock()
	if r.results.syncTimer != nil {
		t.Error("Close left the sync timer set")
	}
}

func BenchmarkRecord(b *testing.B) {
	r, err := Open(b.TempDir(), "run-1")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	o := observation(1)
	b.ReportAllocs()
	for b.Loop() {
		r.Record(o)
	}
}
