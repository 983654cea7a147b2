package run

import (
	"slices"
	"testing"

	"github.com/meshproof/meshproof/harness/results"
)

// A verdict says the data planes that answered its step's requests: the
// run's label where they carried none, a transport's own label where it
// set one, both when they differ; a step without requests gets the run's
// label; a run without a label leaves unlabelled verdicts unlabelled.
func TestVerdictDataPlaneFromItsObservations(t *testing.T) {
	const sim, real = "rehearsal: data plane simulated; istiod v1", "rehearsal: data plane real (proxyless gRPC): pilot-agent and grpc-go, istiod v1"
	rec := &recorder{to: results.Discard{}, dataPlane: sim}
	for _, o := range []results.Observation{
		{Scenario: "s", Step: "mixed", DataPlane: ""},
		{Scenario: "s", Step: "mixed", DataPlane: real},
		{Scenario: "s", Step: "mixed", DataPlane: ""},
		{Scenario: "s", Step: "simulated", DataPlane: ""},
		{Scenario: "s", Step: "real", DataPlane: real},
		{Scenario: "other", Step: "mixed", DataPlane: real},
	} {
		rec.Record(o)
	}
	for _, step := range []string{"mixed", "simulated", "real", "apply"} {
		rec.RecordVerdict(results.Verdict{Scenario: "s", Step: step, Status: results.Passed})
	}
	want := map[string]string{"mixed": "mixed: " + sim + " | " + real, "simulated": sim, "real": real, "apply": sim}
	for _, v := range rec.verdictList() {
		if v.DataPlane != want[v.Step] {
			t.Errorf("verdict of %s: data plane %q, want %q", v.Step, v.DataPlane, want[v.Step])
		}
		if v.Step == "mixed" && !slices.Equal(results.DataPlanes(v.DataPlane), []string{sim, real}) {
			t.Errorf("the mixed verdict's labels %q, want both", results.DataPlanes(v.DataPlane))
		}
	}

	own := &recorder{to: results.Discard{}}
	own.Record(results.Observation{Scenario: "s", Step: "e"})
	own.RecordVerdict(results.Verdict{Scenario: "s", Step: "e"})
	if v := own.verdictList()[0]; v.DataPlane != "" {
		t.Errorf("a run on the cluster's own data plane labelled a verdict %q", v.DataPlane)
	}
}
