package report

import (
	"fmt"

	"github.com/meshproof/meshproof/harness/results"
)

var _ results.Recorder = (*Run)(nil)

// Record appends o to results.json. The element is written to the file
// before Record returns; it reaches the disk within syncInterval. Record
// never fails the run: a write failure is kept and reported by Err and
// Close.
func (r *Run) Record(o results.Observation) { r.results.record(o) }

// RecordVerdict keeps a step's verdict.
func (r *Run) RecordVerdict(v results.Verdict) {
	r.verdictsMu.Lock()
	defer r.verdictsMu.Unlock()
	r.verdicts = append(r.verdicts, v)
}

func describeObservation(o results.Observation) string {
	return fmt.Sprintf("observation %s -> %s:%d", o.From, o.To, o.Port)
}

// ReadResults reads a results.json: a closed JSON array, or one a killed
// run left without its closing bracket. An empty file (a run killed before
// its first write) holds no observations.
//
// If the file ends inside an element, ReadResults returns the complete
// observations before it together with an error wrapping ErrIncomplete,
// so a caller can still show what the run saw.
func ReadResults(path string) ([]results.Observation, error) {
	return readArray[results.Observation](path, "results", "observations")
}
