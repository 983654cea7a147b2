package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/meshproof/meshproof/harness/results"
)

// A run records what the engine gives it and, on Close, renders exactly
// the page HTML makes of its closed files.
func TestCloseRendersTheReport(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	c := syntheticRun()
	obs, events := c.Observations, c.Events
	for _, v := range c.Verdicts {
		r.RecordVerdict(v)
	}
	// Observations and events arrive from several goroutines, as from the
	// engine's continuous traffic.
	var wg sync.WaitGroup
	for half := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := half; i < len(obs); i += 2 {
				r.Record(obs[i])
			}
			for i := half; i < len(events); i += 2 {
				r.RecordEvent(events[i])
			}
		}()
	}
	wg.Wait()
	if _, err := os.Stat(r.HTMLPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("report.html exists before Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	gotEvents, err := ReadEvents(r.EventsPath())
	if err != nil || len(gotEvents) != len(events) {
		t.Fatalf("events.json holds %d events (%v), want %d", len(gotEvents), err, len(events))
	}
	var want bytes.Buffer
	if err := HTML(&want, c, WithTitle("meshproof run run-1"), WithLinks(r.Dir, r.Dir)); err != nil {
		t.Fatal(err)
	}
	page, err := os.ReadFile(r.HTMLPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(page, want.Bytes()) {
		t.Error("report.html is not the page rendered from the recorded observations, events and verdicts")
	}
	// Only the three files: no temporary page left behind.
	entries, err := os.ReadDir(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "events.json report.html results.json" {
		t.Errorf("run folder holds %v", names)
	}
}

// A page that cannot be written fails Close, but the JSON files are still
// complete and closed.
func TestCloseRenderFailureKeepsTheData(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	r.Record(observation(1))
	r.RecordEvent(results.Event{Scenario: "s", Step: "step-1", Kind: "policy-change", Detail: "x"})
	// A directory where the page goes: the rename over it fails.
	if err := os.MkdirAll(filepath.Join(r.HTMLPath(), "occupied"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := r.Close()
	if err == nil || !strings.Contains(err.Error(), HTMLFile) {
		t.Fatalf("Close = %v, want an error about %s", err, HTMLFile)
	}
	if again := r.Close(); again == nil || again.Error() != err.Error() {
		t.Errorf("second Close = %v, want the first call's error", again)
	}
	for _, path := range []string{r.ResultsPath(), r.EventsPath()} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var elems []json.RawMessage
		if err := json.Unmarshal(data, &elems); err != nil || len(elems) != 1 {
			t.Errorf("%s after a failed render: %d elements, %v; want a closed array of 1", filepath.Base(path), len(elems), err)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(r.Dir, ".report.html-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary pages left behind: %v", leftovers)
	}
}

// The events file a killed run leaves reads back like its results.
func TestReadEventsUnterminated(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	events := syntheticRun().Events
	for _, e := range events {
		r.RecordEvent(e)
	}
	data, err := os.ReadFile(r.EventsPath())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cut := filepath.Join(dir, EventsFile)
	if err := os.WriteFile(cut, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEvents(cut)
	if err != nil || len(got) != len(events) {
		t.Fatalf("unterminated events.json: %d events, %v; want %d", len(got), err, len(events))
	}
	if !reflect.DeepEqual(got[2], events[2]) {
		t.Errorf("event round trip: got %+v, want %+v", got[2], events[2])
	}
	inside := filepath.Join(dir, "inside.json")
	if err := os.WriteFile(inside, data[:len(data)-5], 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = ReadEvents(inside)
	if !errors.Is(err, ErrIncomplete) || len(got) != len(events)-1 || !strings.Contains(err.Error(), "events") {
		t.Errorf("events.json cut inside an element: %d events, %v; want %d and ErrIncomplete", len(got), err, len(events)-1)
	}
}

func TestEventAfterCloseIsReported(t *testing.T) {
	r := open(t, t.TempDir(), "run-1")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.RecordEvent(results.Event{Scenario: "s", Step: "rotate", Kind: "serial", Detail: "x"})
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), `event serial of step "rotate" recorded after`) {
		t.Errorf("Err after a late event = %v", err)
	}
}

// events.json, like results.json, names one run.
func TestOpenRefusesAnExistingEventsFile(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "run-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "run-1", EventsFile), []byte("[\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(root, "run-1")
	if err == nil || !strings.Contains(err.Error(), "events.json already exists") {
		t.Fatalf("Open = %v, want events.json refused", err)
	}
}
