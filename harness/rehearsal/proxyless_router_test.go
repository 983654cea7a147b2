package rehearsal

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
)

// The real and simulated parts of a split batch come back in the batch's
// target order, every attempt of a target together; the real ones with the
// batch's URL and ProxylessLabel, the simulated ones as they were.
func TestMergeResults(t *testing.T) {
	targets := []echoapi.Target{
		{Name: "sim-1", URL: "http://service-a.ns.svc.cluster.local:8080"},
		{Name: "real-1", URL: "grpc://grpc-b.ns.svc.cluster.local:7070"},
		{Name: "sim-2", URL: "tcp://service-a.ns.svc.cluster.local:9000"},
		{Name: "real-2", URL: "xds:///grpc-l.ns.svc.cluster.local:7070"},
	}
	local := []localTarget{
		{index: 1, original: targets[1], sent: echoapi.Target{Name: "real-1", URL: "grpc://127.9.9.2:7070"}},
		{index: 3, original: targets[3], sent: targets[3]},
	}
	lines := func(rs ...echoapi.ProbeResult) []byte {
		var b bytes.Buffer
		for _, r := range rs {
			if err := json.NewEncoder(&b).Encode(r); err != nil {
				t.Fatal(err)
			}
		}
		return b.Bytes()
	}
	// The real probe ran its targets concurrently: their lines interleave.
	localOut := lines(
		echoapi.ProbeResult{Target: "real-2", URL: targets[3].URL, Attempt: 0, Result: echoapi.ResultMTLS},
		echoapi.ProbeResult{Target: "real-1", URL: "grpc://127.9.9.2:7070", Attempt: 0, Result: echoapi.ResultPlaintext},
		echoapi.ProbeResult{Target: "real-1", URL: "grpc://127.9.9.2:7070", Attempt: 1, Result: echoapi.ResultPlaintext},
	)
	simOut := lines(
		echoapi.ProbeResult{Target: "sim-1", URL: targets[0].URL, Result: echoapi.ResultPlaintext},
		echoapi.ProbeResult{Target: "sim-2", URL: targets[2].URL, Result: echoapi.ResultFail, Reason: "reset"},
	)
	out, err := mergeResults(targets, local, localOut, simOut)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r echoapi.ProbeResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		real := r.DataPlane == ProxylessLabel()
		if real != strings.HasPrefix(r.Target, "real") || (real && r.URL != targets[map[string]int{"real-1": 1, "real-2": 3}[r.Target]].URL) {
			t.Errorf("result %+v: wrong label or URL", r)
		}
		got = append(got, r.Target)
	}
	if want := "sim-1 real-1 real-1 sim-2 real-2"; strings.Join(got, " ") != want {
		t.Errorf("targets in order %q, want %q", strings.Join(got, " "), want)
	}
	if _, err := mergeResults(targets, local, localOut[:0], simOut); err == nil {
		t.Error("a real target without results merged without error")
	}
}
