package rehearsal

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/wire"
)

// The wire witness in a rehearsal: the real proxyless processes talk over
// loopback, so the proxylessRouter captures there around each real probe
// (wire.Loopback) and every result it passes on carries the verdict; the
// simulated data plane's answers crossed no wire, and carry not-captured
// (simulated data plane), never counted as encrypted.

// loopbackClients are the addresses a real probe's connections leave
// from: a local process dialling a 127.0.0.0/8 address gets 127.0.0.1 as
// its source (the loopback route's preferred source).
var loopbackClients = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

// judged ends watch and puts its verdicts on the real probe's results.
func judged(watch *wire.LoopbackWatch, out []byte) ([]byte, error) {
	results, err := echoapi.DecodeResults(bytes.NewReader(out))
	if err != nil {
		watch.Stop()
		return nil, fmt.Errorf("the real echo probe's output: %w", err)
	}
	wire.Stamp(results, watch.Judge(results))
	return encodeResults(results)
}

func encodeResults(results []echoapi.ProbeResult) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// unwitnessed is the rehearsal's pod transport seen from the engine: the
// results of an `echo probe` that no witness watched (the simulated data
// plane's) say so.
type unwitnessed struct{ probe.Execer }

func (u unwitnessed) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	stdout, stderr, err := u.Execer.Exec(ctx, cmd)
	if err != nil || !isProbe(cmd) {
		return stdout, stderr, err
	}
	results, derr := echoapi.DecodeResults(bytes.NewReader(stdout))
	if derr != nil {
		return stdout, stderr, nil // the engine says what is wrong with it
	}
	wire.StampUnavailable(results, wire.SimulatedDataPlane)
	out, eerr := encodeResults(results)
	if eerr != nil {
		return stdout, stderr, nil
	}
	return out, stderr, nil
}

// isProbe reports whether cmd runs `echo probe` in the app container.
func isProbe(cmd probe.Command) bool {
	return cmd.Container == manifests.ContainerName && len(cmd.Argv) == 2 && cmd.Argv[0] == image.BinaryPath && cmd.Argv[1] == "probe"
}
