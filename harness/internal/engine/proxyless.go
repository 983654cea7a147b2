package engine

import (
	"context"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/results"
)

// clientPod is the pod a workload's requests are sent from: its own, or
// for a proxyless workload its client Deployment's, whose pods carry the
// workload's ServiceAccount (so its identity) and run nothing that speaks
// xDS (manifests.ProxylessClientSuffix says why).
func (e *Engine) clientPod(ctx context.Context, workload string) (results.Pod, error) {
	if w := e.suite.Workload(workload); w != nil && w.Proxyless {
		return e.newestReady(ctx, workload, client.MatchingLabels{manifests.ClientOfLabel: workload})
	}
	return e.readyPod(ctx, workload)
}

// probe runs spec from a client's pod. From a proxyless client each xds:///
// target is a batch of its own and the client's batches run one at a time:
// grpc-go opens an xDS stream per dial target, and the pod's pilot-agent
// serves one stream at a time, closing the older (istio-agent's
// registerStream), so two at once would cut each other's configuration.
func (e *Engine) probe(ctx context.Context, from string, pod results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error) {
	w := e.suite.Workload(from)
	if w == nil || !w.Proxyless {
		return e.prober.Probe(ctx, pod, spec)
	}
	lock := e.xdsLocks.of(from)
	lock.Lock()
	defer lock.Unlock()
	var batches [][]echoapi.Target
	var rest []echoapi.Target
	for _, t := range spec.Targets {
		if strings.HasPrefix(t.URL, "xds:") {
			batches = append(batches, []echoapi.Target{t})
		} else {
			rest = append(rest, t)
		}
	}
	if len(rest) > 0 {
		batches = append(batches, rest)
	}
	var out []echoapi.ProbeResult
	for _, targets := range batches {
		part := spec
		part.Targets = targets
		// The batch's deadline was sized for all targets; each part gets
		// its share, plus the second every batch has for its start.
		if spec.Deadline > 0 {
			share := (time.Duration(spec.Deadline)-time.Second)*time.Duration(len(targets))/time.Duration(len(spec.Targets)) + time.Second
			part.Deadline = echoapi.Duration(share)
		}
		answers, err := e.prober.Probe(ctx, pod, part)
		if err != nil {
			return nil, err
		}
		out = append(out, answers...)
	}
	return out, nil
}
