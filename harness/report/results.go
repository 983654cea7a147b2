package report

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshproof/meshproof/harness/results"
)

var _ results.Recorder = (*Run)(nil)

// entry is one element of results.json: an observation or a verdict, each
// under its own key, so that one file holds both in the order they were
// recorded and a reader can tell them apart without guessing:
//
//	{"observation": {"time": ..., "from": "service-a", ...}}
//	{"verdict": {"scenario": "strict", "step": "on", "status": "passed", ...}}
type entry struct {
	Observation *results.Observation `json:"observation,omitempty"`
	Verdict     *results.Verdict     `json:"verdict,omitempty"`
}

// Record appends o to results.json. The element is written to the file
// before Record returns; it reaches the disk within syncInterval. Record
// never fails the run: a write failure is kept and reported by Err and
// Close.
func (r *Run) Record(o results.Observation) { r.results.record(entry{Observation: &o}) }

// RecordVerdict appends a step's (or the setup's) verdict to results.json,
// written and synced like the observations, so a run that is killed keeps
// the verdicts of the steps it finished.
func (r *Run) RecordVerdict(v results.Verdict) { r.results.record(entry{Verdict: &v}) }

func describeEntry(e entry) string {
	switch {
	case e.Observation != nil:
		o := e.Observation
		return fmt.Sprintf("observation %s -> %s:%d", o.From, o.To, o.Port)
	case e.Verdict != nil:
		return fmt.Sprintf("verdict of step %q", e.Verdict.Step)
	}
	return "empty entry"
}

// ReadResults reads a results.json: a closed JSON array, or one a killed
// run left without its closing bracket. An empty file (a run killed before
// its first write) holds nothing. It returns the observations and the
// verdicts, each in the order they were recorded. An element that is a bare
// observation, as results.json held before verdicts were added to it, is
// read as an observation.
//
// If the file ends inside an element, ReadResults returns the complete
// elements before it together with an error wrapping ErrIncomplete, so a
// caller can still show what the run saw.
func ReadResults(path string) ([]results.Observation, []results.Verdict, error) {
	raw, err := readArray[json.RawMessage](path, "results", "elements")
	var obs []results.Observation
	var verdicts []results.Verdict
	for i, m := range raw {
		var e entry
		if uerr := json.Unmarshal(m, &e); uerr != nil {
			return obs, verdicts, errors.Join(err, fmt.Errorf("read results %s: element %d: %w", path, i+1, uerr))
		}
		switch {
		case e.Observation != nil:
			obs = append(obs, *e.Observation)
		case e.Verdict != nil:
			verdicts = append(verdicts, *e.Verdict)
		default:
			var o results.Observation
			if uerr := json.Unmarshal(m, &o); uerr != nil {
				return obs, verdicts, errors.Join(err, fmt.Errorf("read results %s: element %d: %w", path, i+1, uerr))
			}
			obs = append(obs, o)
		}
	}
	return obs, verdicts, err
}
