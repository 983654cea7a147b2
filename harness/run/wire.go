package run

import (
	"context"
	"fmt"
	"time"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/wire"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// wireWitnessReady bounds the wait for the witness pods (the echo image is
// on the nodes already: they only start).
const wireWitnessReady = 2 * time.Minute

// wireWitness deploys the wire witness's pods on cluster c when its steps
// watch the wire (scenario.Suite.DeployWireWitness), through the ledger,
// and returns the engine's witness. Where admission refuses the witness's
// privileged pod, or its pods do not become ready, the run says so and
// every request carries not-captured, unless the suite requires the
// witness: then the setup fails with the refusal.
func (r *Run) wireWitness(ctx context.Context, c *scenario.Cluster, st *clusterState, echoImage string) (engine.WireWitness, error) {
	setting := r.suite.DeployWireWitness(c, false)
	cannot := func(err error) (engine.WireWitness, error) {
		if setting == scenario.WitnessRequired {
			return nil, fmt.Errorf("wireWitness is required, but %w", err)
		}
		r.log(c.Name).Warn("the wire witness cannot run: every request carries not-captured, and no verdict rests on the wire", "error", err)
		r.rec.RecordEvent(results.Event{Time: time.Now(), Step: results.SetupStep, Kind: results.EventSetupPhase,
			Detail: fmt.Sprintf("%s: the wire witness cannot run (every request carries not-captured): %v", c.Name, err)})
		return wire.Refused("the wire witness cannot run on this cluster: " + err.Error()), nil
	}
	objs, err := r.claimNamespaces(ctx, st, manifests.WireWitness(r.ID(), echoImage))
	if err != nil {
		return nil, fmt.Errorf("the wire witness's namespace: %w", err)
	}
	if err := wire.Admitted(ctx, st.kube, r.ID(), echoImage); err != nil {
		return cannot(err)
	}
	for _, o := range objs {
		if err := st.ledger.RecordObject(ctx, o); err != nil {
			return nil, err
		}
	}
	if err := apply.Objects(ctx, st.kube, objs...); err != nil {
		return nil, fmt.Errorf("deploying the wire witness: %w", err)
	}
	if err := wire.WaitReady(ctx, st.kube, wireWitnessReady); err != nil {
		return cannot(err)
	}
	return wire.NewNodes(st.kube, st.execer), nil
}
