package engine

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// WireWitness watches the packets of probe batches (harness/internal/wire
// on a cluster's nodes): Watch starts a capture between the client pod and
// the server pods, and the judge it returns ends it and sets each result's
// Witness (echoapi.ProbeResult.Witness). A witness that cannot watch says
// so in the answers (echoapi.UnavailableWitness), not as an error.
type WireWitness interface {
	Watch(ctx context.Context, client results.Pod, servers []results.Pod) (judge func(context.Context, []echoapi.ProbeResult), err error)
}

// WithWireWitness turns the wire witness on for the steps whose
// wireWitness setting (scenario.Suite.StepWireWitness) is on or required;
// rehearsal resolves auto as a rehearsal does. w watches each probe batch;
// it is nil where the transport sets the results' Witness itself (a
// rehearsal's, for its real proxyless pods). Without this option no step
// is judged on the wire.
func WithWireWitness(w WireWitness, rehearsal bool) Option {
	return func(e *Engine) { e.wire, e.wireSet, e.rehearsal = w, true, rehearsal }
}

// wireOn reports whether step st is judged on the wire.
func (e *Engine) wireOn(st *scenario.Step) bool {
	return e.wireSet && e.suite.StepWireWitness(e.cluster, st, e.rehearsal) != scenario.WitnessOff
}

// observe is observation for step st: without the witness on for the
// step, the observation carries no wire verdict, whatever the transport
// set.
func (e *Engine) observe(o results.Observation, st *scenario.Step) results.Observation {
	if !e.wireOn(st) {
		o.Wire = nil
	}
	return o
}

// watched runs probe under the step's wire witness, when it has one that
// watches batches: the capture starts before the batch and judges its
// results after it.
func (e *Engine) watched(ctx context.Context, st *scenario.Step, client results.Pod, spec echoapi.ProbeSpec, probe func() ([]echoapi.ProbeResult, error)) ([]echoapi.ProbeResult, error) {
	if e.wire == nil || !e.wireOn(st) {
		return probe()
	}
	servers, err := e.targetPods(ctx, spec)
	var judge func(context.Context, []echoapi.ProbeResult)
	if err == nil {
		judge, err = e.wire.Watch(ctx, client, servers)
	}
	answers, perr := probe()
	if perr != nil {
		if judge != nil {
			judge(ctx, nil) // ends the capture
		}
		return nil, perr
	}
	if err != nil {
		for i := range answers {
			a := echoapi.UnavailableWitness(fmt.Sprint(i), "the wire witness could not watch: "+err.Error())
			answers[i].Witness = &a
		}
		return answers, nil
	}
	judge(ctx, answers)
	return answers, nil
}

// targetPods are the running pods of the workloads a batch's targets name
// (targetName: "workload:port"): the servers a capture watches.
func (e *Engine) targetPods(ctx context.Context, spec echoapi.ProbeSpec) ([]results.Pod, error) {
	seen := map[string]bool{}
	var out []results.Pod
	for _, t := range spec.Targets {
		name := t.Name
		if i := strings.LastIndexByte(name, ':'); i > 0 {
			name = name[:i]
		}
		w := e.suite.Workload(name)
		if w == nil || seen[name] {
			continue
		}
		seen[name] = true
		pods, err := e.runningPods(ctx, w)
		if err != nil {
			return nil, err
		}
		out = append(out, pods...)
	}
	return out, nil
}

// runningPods are every running pod of a workload with an address.
func (e *Engine) runningPods(ctx context.Context, w *scenario.Workload) ([]results.Pod, error) {
	var list corev1.PodList
	if err := e.kube.List(ctx, &list, client.InNamespace(w.Namespace), client.MatchingLabels{manifests.AppLabel: w.Name}); err != nil {
		return nil, fmt.Errorf("listing pods of %s: %w", w.Name, err)
	}
	var out []results.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			out = append(out, results.Pod{Namespace: p.Namespace, Name: p.Name, IP: p.Status.PodIP})
		}
	}
	return out, nil
}

// WireLeakError fails a step of continuous traffic at whose first request
// the mesh reported as mTLS while its canary crossed in cleartext
// (results.FailureWirePlaintext); Verdict names the failure's kind.
type WireLeakError struct{ Leak string }

func (e *WireLeakError) Error() string { return e.Leak }
