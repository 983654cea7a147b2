package report

import (
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/results"
)

// A step answered by two data planes (a rehearsal's simulated sidecars and
// its real proxyless processes) has a mixed verdict label; the page's
// notes name each data plane once, never the mixed label itself.
func TestHTMLMixedVerdictDataPlaneNotes(t *testing.T) {
	const (
		simulated = "rehearsal: data plane simulated; istiod v0.0.0-x"
		real      = "rehearsal: data plane real (proxyless gRPC): pilot-agent and grpc-go, istiod v0.0.0-x"
	)
	sim := probe("s", "look", 0, "service-a", "service-b", 8080, mtls, "", "mtls")
	sim.DataPlane = simulated
	grpc := probe("s", "look", 0, "grpc-a", "grpc-b", 7070, mtls, "", "mtls")
	grpc.DataPlane = real
	v := results.Verdict{Scenario: "s", Step: "look", Kind: "expect", Status: results.Passed, DataPlane: results.StepDataPlane([]string{simulated, real})}
	doc := parse(t, render(t, Contents{Observations: []results.Observation{sim, grpc}, Verdicts: []results.Verdict{v}}))
	notes := texts(findAll(doc, byTagClass("p", "note")))
	if len(notes) != 2 || !strings.Contains(notes[0], simulated) || !strings.Contains(notes[1], real) {
		t.Errorf("notes %q, want one for each data plane", notes)
	}
	for _, n := range notes {
		if strings.Contains(n, "mixed") {
			t.Errorf("note %q shows the mixed label", n)
		}
	}
}
