package report

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/results"
)

var _ results.Recorder = (*Run)(nil)

// RecordEvent appends e to events.json, written and synced like the
// observations in results.json.
func (r *Run) RecordEvent(e results.Event) { r.events.record(e) }

func describeEvent(e results.Event) string {
	return fmt.Sprintf("event %s of step %q", e.Kind, e.Step)
}

// ReadEvents reads an events.json, with the same tolerance as ReadResults
// for a file an interrupted run left behind.
func ReadEvents(path string) ([]results.Event, error) {
	return readArray[results.Event](path, "events", "events")
}
