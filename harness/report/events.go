package report

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/engine"
)

var _ engine.EventRecorder = (*Run)(nil)

// RecordEvent appends e to events.json, written and synced like the
// observations in results.json.
func (r *Run) RecordEvent(e engine.Event) { r.events.record(e) }

func describeEvent(e engine.Event) string {
	return fmt.Sprintf("event %s of step %q", e.Kind, e.Step)
}

// ReadEvents reads an events.json, with the same tolerance as ReadResults
// for a file an interrupted run left behind.
func ReadEvents(path string) ([]engine.Event, error) {
	return readArray[engine.Event](path, "events", "events")
}
