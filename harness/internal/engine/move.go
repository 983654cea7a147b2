package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// How a workload moves between data planes.
//
// Istio's "Migrate from sidecars to ambient" guide moves a workload by
// labelling its pods istio.io/dataplane-mode=ambient, stopping their
// injection (label sidecar.istio.io/inject=false) and restarting them.
// The engine patches exactly those keys of the fixture Deployment's pod
// template (manifests.AmbientPodMetadata, what a fixture declared ambient
// gets), which rolls its pods; moving back removes them, and the
// namespace's injection gives the new pods a sidecar again. While the pods
// roll, a moved workload has pods of both data planes behind its Service,
// so the engine reads each probed pod's data plane from the pod itself
// (podPlane) to choose its witness: ztunnel's counts for an ambient side,
// the server sidecar's X-Forwarded-Client-Cert between two sidecars.

// moveDataPlane moves a step's workloads under continuous traffic and
// judges the traffic as a transition's: against the outcomes predicted for
// the data planes before the move until the Deployments are patched, then
// for those after it. e sees the workloads before the move.
func (e *Engine) moveDataPlane(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	m := st.MoveDataPlane
	policies, err := oracle.PolicyAt(sc, index)
	if err != nil {
		return err
	}
	before, err := oracle.PredictPolicies(e.suite, policies)
	if err != nil {
		return fmt.Errorf("%s: predicting the traffic before the move: %w", st.Source.At("moveDataPlane"), err)
	}
	after := e.withSuite(e.suite.AtStep(sc, index))
	afterPredictions, err := oracle.PredictPolicies(after.suite, policies)
	if err != nil {
		return fmt.Errorf("%s: predicting the traffic after the move: %w", st.Source.At("moveDataPlane"), err)
	}
	// The traffic runs on the data planes after the move, with the moved
	// workloads' planes read from their pods while they roll.
	after.moving = map[string]bool{}
	for _, name := range m.Workloads {
		after.moving[name] = true
	}
	traffic := after.StartTraffic(ctx, sc, st, m.Traffic, Expecting(before))
	defer traffic.Stop()
	if err := wait.For(func(context.Context) (bool, error) {
		if err := traffic.Err(); err != nil {
			return false, err
		}
		return len(traffic.Observations()) >= len(m.Traffic.Pairs), nil
	}, wait.WithContext(ctx), wait.WithInterval(m.Traffic.Every.Duration/2), wait.WithTimeout(timeLeft(ctx))); err != nil {
		return fmt.Errorf("no baseline traffic before the move: %w", err)
	}

	changed := e.now()
	traffic.expectFrom(changed, afterPredictions)
	var moves []string
	for _, name := range m.Workloads {
		moves = append(moves, fmt.Sprintf("%s (%s -> %s)", name, e.suite.Workload(name).Plane(), m.To))
	}
	e.eventAt(changed, sc, st, results.EventDataPlaneMove, "moving %s: pod template labels patched", strings.Join(moves, ", "))
	moveCtx, cancel := context.WithTimeout(ctx, m.Within.Duration)
	defer cancel()
	if err := after.patchDataPlanes(moveCtx, m.Workloads, m.To); err != nil {
		return err
	}
	moveErr := after.awaitMoved(moveCtx, m.Workloads, m.To)
	moved := e.now()
	met := results.Deadline{Name: "moved within " + m.Within.String(), At: changed.Add(m.Within.Duration), Met: moveErr == nil,
		Detail: fmt.Sprintf("every pod of %s on %s %s after the patch", strings.Join(m.Workloads, ", "), m.To, moved.Sub(changed).Round(time.Millisecond))}
	if moveErr != nil {
		met.Detail = moveErr.Error()
		return &DeadlineError{Deadlines: []results.Deadline{e.deadline(sc, st, met)}, Err: fmt.Errorf("moving %s to %s: %w", strings.Join(m.Workloads, ", "), m.To, moveErr)}
	}
	e.eventAt(moved, sc, st, results.EventDataPlaneMoved, "%s rolled out on %s in %s; keeping traffic for %s", strings.Join(m.Workloads, ", "), m.To, moved.Sub(changed).Round(time.Millisecond), m.Observe)
	select {
	case <-time.After(m.Observe.Duration):
	case <-ctx.Done():
		return fmt.Errorf("the step's timeout ended the %s observation after the move: %w", m.Observe, ctx.Err())
	}
	obs := traffic.Stop()
	report := AnalyzeTransition(obs, changed, afterPredictions, 0)
	deadlines := []results.Deadline{e.deadline(sc, st, met)}
	for _, d := range report.Deadlines(0, e.now()) {
		deadlines = append(deadlines, e.deadline(sc, st, d))
	}
	errs := []error{report.Verify(m.Traffic.MaxFailures), traffic.Err()}
	if unseen := unobservedSince(obs, m.Traffic.Pairs, moved); len(unseen) > 0 {
		errs = append(errs, fmt.Errorf("not observed once the move was done, so nothing shows them on the new data planes: %s", strings.Join(unseen, ", ")))
	}
	if err := errors.Join(errs...); err != nil {
		return &DeadlineError{Deadlines: deadlines, Err: err}
	}
	return nil
}

// unobservedSince lists the pairs with no observation at or after t.
func unobservedSince(obs []results.Observation, pairs []scenario.Pair, t time.Time) []string {
	seen := map[pair]bool{}
	for _, o := range obs {
		if !o.Time.Before(t) {
			seen[pair{o.From, o.To, o.Port}] = true
		}
	}
	var out []string
	for _, p := range pairs {
		if !seen[pair{p.From, p.To, p.Port}] {
			out = append(out, fmt.Sprintf("%s -> %s:%d", p.From, p.To, p.Port))
		}
	}
	return out
}

// patchDataPlanes puts the workloads' pod templates on data plane to:
// the keys manifests.AmbientPodMetadata names set (ambient) or removed
// (sidecar), with a merge patch that leaves every other key as it is.
func (e *Engine) patchDataPlanes(ctx context.Context, workloads []string, to scenario.DataPlane) error {
	labels, annotations := manifests.AmbientPodMetadata()
	value := func(v string) any {
		if to == scenario.DataPlaneAmbient {
			return v
		}
		return nil // removed
	}
	metadata := map[string]map[string]any{"labels": {}, "annotations": {}}
	for k, v := range labels {
		metadata["labels"][k] = value(v)
	}
	for k, v := range annotations {
		metadata["annotations"][k] = value(v)
	}
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": metadata}}})
	if err != nil {
		return err
	}
	for _, name := range workloads {
		w := e.suite.Workload(name)
		d := &appsv1.Deployment{}
		d.Namespace, d.Name = w.Namespace, w.Name
		if err := e.kube.Patch(ctx, d, client.RawPatch("application/merge-patch+json", body)); err != nil {
			return fmt.Errorf("moving %s to %s: patching Deployment %s/%s: %w", name, to, w.Namespace, w.Name, err)
		}
		e.log.Info("workload moving", "namespace", w.Namespace, "workload", w.Name, "to", to)
	}
	return nil
}

// awaitMoved waits for the moved workloads' rollout and then until each of
// their running pods is on data plane to: an ambient pod enrolled by
// istio-cni (checkEnrolment, as before every step that probes) and
// without an istio-proxy container; a sidecar pod with one and not
// enrolled. e sees the workloads after the move.
func (e *Engine) awaitMoved(ctx context.Context, workloads []string, to scenario.DataPlane) error {
	if err := e.waitRolledOut(ctx, workloads); err != nil {
		return err
	}
	if to == scenario.DataPlaneAmbient {
		if err := e.checkEnrolment(ctx); err != nil {
			return err
		}
	}
	var wrong []string
	err := wait.For(func(ctx context.Context) (bool, error) {
		wrong = wrong[:0]
		for _, name := range workloads {
			w := e.suite.Workload(name)
			var pods corev1.PodList
			if err := e.kube.List(ctx, &pods, client.InNamespace(w.Namespace), client.MatchingLabels{manifests.AppLabel: w.Name}); err != nil {
				return false, fmt.Errorf("listing pods of %s: %w", w.Name, err)
			}
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
					continue
				}
				if got := podPlane(p); got != to {
					wrong = append(wrong, fmt.Sprintf("pod %s/%s of %s is on %s", p.Namespace, p.Name, w.Name, got))
				}
			}
		}
		return len(wrong) == 0, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(250*time.Millisecond), wait.WithTimeout(timeLeft(ctx)))
	if len(wrong) > 0 {
		return fmt.Errorf("rolled out, but not every pod is on %s: %s", to, strings.Join(wrong, "; "))
	}
	return err
}

// podPlane is the data plane a pod of the fixtures is on, read from the
// pod: an istio-proxy container is a sidecar; without one, the ambient
// label and istio-cni's enrolment are ambient; anything else carries its
// own plaintext (none), e.g. an ambient-labelled pod istio-cni has not
// enrolled yet.
func podPlane(p *corev1.Pod) scenario.DataPlane {
	switch {
	case sidecar.Proxy(p) != nil:
		return scenario.DataPlaneSidecar
	case p.Labels[manifests.DataplaneModeLabel] == manifests.DataplaneModeAmbient &&
		p.Annotations[manifests.AmbientRedirectionAnnotation] == manifests.AmbientRedirectionEnabled:
		return scenario.DataPlaneAmbient
	}
	return scenario.DataPlaneNone
}

// RestoreDataPlanes moves every workload that sc's moveDataPlane steps
// moved back to the data plane the suite gives it, and waits for the
// rollout: the run calls it at the end of a scenario that ran on the
// fixtures' own namespaces, so that the next scenario finds them as the
// file declares them. A workload already there is left alone.
func (e *Engine) RestoreDataPlanes(ctx context.Context, sc *scenario.Scenario) error {
	var errs []error
	byPlane := map[scenario.DataPlane][]string{}
	for _, name := range sc.Moved() {
		w := e.suite.Workload(name)
		if w == nil {
			continue
		}
		var d appsv1.Deployment
		if err := e.kube.Get(ctx, client.ObjectKey{Namespace: w.Namespace, Name: w.Name}, &d); err != nil {
			errs = append(errs, fmt.Errorf("reading Deployment %s/%s: %w", w.Namespace, w.Name, err))
			continue
		}
		ambient := d.Spec.Template.Labels[manifests.DataplaneModeLabel] == manifests.DataplaneModeAmbient
		if ambient != w.Ambient() {
			byPlane[w.Plane()] = append(byPlane[w.Plane()], name)
		}
	}
	for _, to := range slices.Sorted(maps.Keys(byPlane)) {
		names := byPlane[to]
		if err := e.patchDataPlanes(ctx, names, to); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := e.awaitMoved(ctx, names, to); err != nil {
			errs = append(errs, fmt.Errorf("moving %s back to %s: %w", strings.Join(names, ", "), to, err))
			continue
		}
		e.log.Info("workloads moved back", "workloads", strings.Join(names, ","), "to", to)
	}
	return errors.Join(errs...)
}
