package probe

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
)

const (
	serviceAID = "spiffe://cluster.local/ns/meshproof/sa/service-a"
	serviceBID = "spiffe://cluster.local/ns/meshproof/sa/service-b"
)

// probeTargets are three endpoints as the probe sees them: the echo server
// reached directly (plaintext), through a stand-in for its sidecar that
// terminated mTLS, and a port nothing listens on.
func probeTargets(t *testing.T) []echoapi.Target {
	serve := startEchoServe(t, "service-b-0")
	return []echoapi.Target{
		{Name: "direct", URL: "http://" + serve + "/"},
		{Name: "sidecar", URL: "http://" + startXFCCProxy(t, serve, serviceBID, serviceAID) + "/"},
		{Name: "closed", URL: "http://" + closedPort(t) + "/"},
	}
}

// checkProbeResults asserts what the real echo probe reports for
// probeTargets with two requests each.
func checkProbeResults(t *testing.T, results []echoapi.ProbeResult) {
	t.Helper()
	if len(results) != 6 {
		t.Fatalf("%d results, want 6: %+v", len(results), results)
	}
	for i, r := range results {
		if want := i % 2; r.Attempt != want {
			t.Errorf("result %d is attempt %d, want %d", i, r.Attempt, want)
		}
		switch r.Target {
		case "direct":
			if r.Result != echoapi.ResultPlaintext || r.StatusCode != 200 || r.ServerPod != "service-b-0" {
				t.Errorf("direct: %+v, want plaintext from service-b-0", r)
			}
		case "sidecar":
			if r.Result != echoapi.ResultMTLS || r.PeerURI != serviceAID || r.ProxyURI != serviceBID || r.ServerPod != "service-b-0" {
				t.Errorf("sidecar: %+v, want mtls from %s via %s", r, serviceAID, serviceBID)
			}
		case "closed":
			if r.Result != echoapi.ResultFail || r.Reason != echoapi.ReasonRefused {
				t.Errorf("closed: %+v, want fail/refused", r)
			}
		default:
			t.Errorf("result for unknown target %q", r.Target)
		}
	}
}

func TestProbeRunsRealEchoProbe(t *testing.T) {
	execer := &scriptedExecer{}
	spec := echoapi.ProbeSpec{
		Targets:           probeTargets(t),
		RequestsPerTarget: 2,
		Timeout:           echoapi.Duration(5 * time.Second),
		Deadline:          echoapi.Duration(30 * time.Second),
	}
	before := time.Now()
	results, err := NewProber(execer).Probe(t.Context(), clientPod, spec)
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	checkProbeResults(t, results)

	calls, deadlines := execer.recorded()
	if len(calls) != 1 {
		t.Fatalf("%d execs, want one per batch", len(calls))
	}
	cmd := calls[0]
	if cmd.Pod != clientPod || cmd.Container != "app" || !reflect.DeepEqual(cmd.Argv, []string{"/echo", "probe"}) {
		t.Errorf("exec %s, want /echo probe in the client pod's app container", cmd)
	}
	var sent echoapi.ProbeSpec
	if err := json.Unmarshal(cmd.Stdin, &sent); err != nil || !reflect.DeepEqual(sent, spec) {
		t.Errorf("stdin %s (%v), want the spec as JSON", cmd.Stdin, err)
	}
	// The exec may outlast the batch's own deadline by the slack, no more.
	want := time.Duration(spec.Deadline) + execSlack
	if d := deadlines[0]; d.Before(before.Add(want)) || d.After(after.Add(want)) {
		t.Errorf("exec deadline %v after the call, want %v", d.Sub(before), want)
	}
}

func TestProbeDefaultDeadline(t *testing.T) {
	line, _ := json.Marshal(echoapi.ProbeResult{Target: "b", Result: echoapi.ResultMTLS})
	execer := &scriptedExecer{run: answer(string(line)+"\n", nil)}
	before := time.Now()
	_, err := NewProber(execer).Probe(t.Context(), clientPod, echoapi.ProbeSpec{Targets: []echoapi.Target{{Name: "b", URL: "http://b/"}}})
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	_, deadlines := execer.recorded()
	want := echoDefaultDeadline + execSlack
	if d := deadlines[0]; d.Before(before.Add(want)) || d.After(after.Add(want)) {
		t.Errorf("exec deadline %v after the call, want echo's default deadline plus slack, %v", d.Sub(before), want)
	}
}

func TestProbeEchoRefusesSpec(t *testing.T) {
	execer := &scriptedExecer{}
	_, err := NewProber(execer).Probe(t.Context(), clientPod, echoapi.ProbeSpec{Targets: []echoapi.Target{{Name: "x", URL: "ftp://x/"}}})
	code, exited := ExitCode(err)
	if !exited || code != 2 {
		t.Fatalf("error %v: exit code %d (exited %v), want echo's usage exit 2", err, code, exited)
	}
	for _, want := range []string{clientPod.String(), "container app", "/echo probe", "exited 2", "must be http"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestProbeErrors(t *testing.T) {
	oneTarget := echoapi.ProbeSpec{Targets: []echoapi.Target{{Name: "b", URL: "http://b/"}}, RequestsPerTarget: 2}
	line, _ := json.Marshal(echoapi.ProbeResult{Target: "b", Result: echoapi.ResultMTLS})
	tests := []struct {
		name     string
		spec     echoapi.ProbeSpec
		run      func(context.Context, Command) ([]byte, []byte, error)
		want     []string
		wantExec bool
	}{
		{"exec fails", oneTarget, answer("", errors.New(`pods "service-a-7d9c-abcde" not found`)),
			[]string{clientPod.String(), "container app", "/echo probe", "not found"}, true},
		{"stray output", oneTarget, answer("Defaulted container \"app\" out of: app, istio-proxy\n", nil),
			[]string{clientPod.String(), "line 1 is not a result"}, true},
		{"results cut short", oneTarget, answer(string(line)+"\n", nil),
			[]string{"reported 1 results, want 2"}, true},
		{"no output", oneTarget, answer("", nil),
			[]string{"reported 0 results, want 2"}, true},
		{"no targets", echoapi.ProbeSpec{}, nil, []string{"no targets"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			execer := &scriptedExecer{run: tc.run}
			results, err := NewProber(execer).Probe(t.Context(), clientPod, tc.spec)
			if err == nil {
				t.Fatalf("want an error, got results %+v", results)
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
			if _, exited := ExitCode(err); exited {
				t.Errorf("error %v reads as a non-zero exit", err)
			}
			if calls, _ := execer.recorded(); (len(calls) == 1) != tc.wantExec {
				t.Errorf("%d execs, want exec %v", len(calls), tc.wantExec)
			}
		})
	}
}

func TestProbeHonoursCancellation(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	execer := &scriptedExecer{run: func(ctx context.Context, cmd Command) ([]byte, []byte, error) {
		cancel()
		<-ctx.Done()
		return nil, nil, newExecError(cmd, nil, ctx.Err())
	}}
	_, err := NewProber(execer).Probe(ctx, clientPod, echoapi.ProbeSpec{Targets: []echoapi.Target{{Name: "b", URL: "http://b/"}}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want the caller's cancellation", err)
	}
}
