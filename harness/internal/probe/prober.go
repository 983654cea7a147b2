package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/results"
)

// echoDefaultDeadline is what `echo probe` uses when the spec sets no
// deadline (fixtures/echo, defaultDeadline).
const echoDefaultDeadline = 60 * time.Second

// execSlack is how much longer than the probe batch's own deadline the exec
// may take: connection setup through the API server and kubelet, process
// start, and the transfer of the results after the batch ends.
const execSlack = 20 * time.Second

// Prober runs `echo probe` in client pods. It implements engine.Prober.
type Prober struct {
	execer Execer
}

// NewProber returns a Prober that execs through e.
func NewProber(e Execer) *Prober { return &Prober{execer: e} }

// Probe runs one batch in the client pod's echo container with one exec:
// the spec goes to `/echo probe` as JSON on stdin and comes back as one
// result per request. The exec is bounded by the spec's deadline plus a
// margin for the exec itself (and by ctx, if that ends sooner). Output that
// is not exactly one result per request is an error: a missing line would
// otherwise read as a request that never happened.
func (p *Prober) Probe(ctx context.Context, client results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	if len(spec.Targets) == 0 {
		return nil, fmt.Errorf("probe from %s: the spec has no targets", client)
	}
	input, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("probe from %s: encoding the spec: %w", client, err)
	}
	deadline := time.Duration(spec.Deadline)
	if deadline <= 0 {
		deadline = echoDefaultDeadline
	}
	ctx, cancel := context.WithTimeout(ctx, deadline+execSlack)
	defer cancel()

	cmd := Command{
		Pod:       client,
		Container: manifests.ContainerName,
		Argv:      []string{image.BinaryPath, "probe"},
		Stdin:     input,
	}
	stdout, _, err := p.execer.Exec(ctx, cmd)
	if err != nil {
		if code, exited := ExitCode(err); exited {
			// echo probe exits 0 whenever it ran; anything else means it
			// refused the spec (2) or could not write its results (1).
			return nil, fmt.Errorf("probe from %s: echo probe exited %d, refusing the batch or unable to report it: %w", client, code, err)
		}
		return nil, fmt.Errorf("probe from %s: %w", client, err)
	}
	results, err := echoapi.DecodeResults(bytes.NewReader(stdout))
	if err != nil {
		return nil, fmt.Errorf("probe from %s: %w", client, err)
	}
	if want := expectedResults(spec); len(results) != want {
		return nil, fmt.Errorf("probe from %s: echo probe reported %d results, want %d (%d targets x %d requests); its output was cut short or it is a different echo version",
			client, len(results), want, len(spec.Targets), want/len(spec.Targets))
	}
	return results, nil
}

// expectedResults is how many lines echo probe prints for spec: one per
// request, RequestsPerTarget defaulting to 1.
func expectedResults(spec echoapi.ProbeSpec) int {
	return len(spec.Targets) * max(spec.RequestsPerTarget, 1)
}
