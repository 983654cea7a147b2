package results

import (
	"slices"
	"testing"
)

func TestStepDataPlane(t *testing.T) {
	const sim, real = "rehearsal: data plane simulated; istiod v1", "rehearsal: data plane real (proxyless gRPC): pilot-agent and grpc-go, istiod v1"
	for _, c := range []struct {
		labels []string
		want   string
		split  []string
	}{
		{nil, "", nil},
		{[]string{"", ""}, "", nil},
		{[]string{sim, sim}, sim, []string{sim}},
		{[]string{sim, real, sim, real}, "mixed: " + sim + " | " + real, []string{sim, real}},
		{[]string{real, sim}, "mixed: " + real + " | " + sim, []string{real, sim}},
		{[]string{"", real}, "mixed: " + OwnDataPlane + " | " + real, []string{OwnDataPlane, real}},
	} {
		got := StepDataPlane(c.labels)
		if got != c.want {
			t.Errorf("StepDataPlane(%q) = %q, want %q", c.labels, got, c.want)
		}
		if split := DataPlanes(got); !slices.Equal(split, c.split) {
			t.Errorf("DataPlanes(%q) = %q, want %q", got, split, c.split)
		}
	}
}
