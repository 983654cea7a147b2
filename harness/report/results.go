package report

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/engine"
)

var _ engine.Recorder = (*Run)(nil)

// Record appends o to results.json. The element is written to the file
// before Record returns; it reaches the disk within syncInterval. Record
// never fails the run: a write failure is kept and reported by Err and
// Close.
func (r *Run) Record(o engine.Observation) { r.results.record(o) }

func describeObservation(o engine.Observation) string {
	return fmt.Sprintf("observation %s -> %s:%d", o.From, o.To, o.Port)
}

// ReadResults reads a results.json: a closed JSON array, or one a killed
// run left without its closing bracket. An empty file (a run killed before
// its first write) holds no observations.
//
// If the file ends inside an element, ReadResults returns the complete
// observations before it together with an error wrapping ErrIncomplete,
// so a caller can still show what the run saw.
func ReadResults(path string) ([]engine.Observation, error) {
	return readArray[engine.Observation](path, "results", "observations")
}
