package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// upgrade upgrades Istio while traffic flows, following Istio's documented
// procedures:
//
//   - in place (https://istio.io/latest/docs/setup/upgrade/in-place/): the
//     base and istiod releases are upgraded, then the workloads restarted
//     so that the injector gives them the new proxy;
//   - canary (https://istio.io/latest/docs/setup/upgrade/canary/): a second
//     istiod is installed as a revision, the namespaces are relabelled
//     istio.io/rev=<revision>, the workloads restarted onto it, and the old
//     control plane removed.
//
// Then it judges the traffic of the whole step against the oracle's
// prediction for the policies in force and checks that every in-mesh
// workload runs the new proxy. The expected proxy tag is the target
// version: an upgrade deploys the images of the version it upgrades to
// (the installer sets global.tag to it, so a hub override is kept but a
// tag override of the initial install is not carried over); a variant
// suffix such as 1.30.3-distroless is accepted.
func (e *Engine) upgrade(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	u := st.Upgrade
	mc := e.mesh.control
	if mc == nil {
		return fmt.Errorf("%s: the engine has no MeshControl (engine.WithMeshControl): upgrade steps cannot run", st.Source.At("upgrade"))
	}
	predictions, err := oracle.Predict(e.suite, sc, index)
	if err != nil {
		return fmt.Errorf("%s: predicting the traffic under the policies in force: %w", st.Source.At("upgrade"), err)
	}
	from, charts, workloads := mc.Version(), upgradeCharts(u), e.restartedByUpgrade()

	traffic := e.StartTraffic(ctx, sc, st, u.Traffic, Expecting(predictions))
	defer traffic.Stop()
	if err := waitObserved(ctx, traffic, u.Traffic, time.Time{}); err != nil {
		return fmt.Errorf("no baseline traffic before the upgrade: %w", err)
	}
	start := e.event(sc, st, results.EventUpgrade, "Istio %s to %s (%s)", from, u.To, u.Method)

	switch u.Method {
	case scenario.UpgradeCanary:
		old := mc.Revision()
		if err := mc.InstallCanary(ctx, u.Revision, u.To, charts); err != nil {
			return fmt.Errorf("canary upgrade to %s: installing revision %s: %w", u.To, u.Revision, err)
		}
		e.event(sc, st, results.EventCanaryInstalled, "istiod %s installed as revision %s next to revision %s", u.To, u.Revision, revisionName(old))
		if err := mc.WaitReady(ctx); err != nil {
			return fmt.Errorf("canary upgrade to %s: both control planes are installed but not ready (revision %s is still in use): %w", u.To, revisionName(old), err)
		}
		e.event(sc, st, results.EventControlPlaneReady, "both control planes serve and inject")
		namespaces := e.meshNamespaces()
		if err := mc.RelabelNamespaces(ctx, u.Revision, namespaces...); err != nil {
			return fmt.Errorf("canary upgrade to %s: %w", u.To, err)
		}
		e.event(sc, st, results.EventNamespacesRelabelled, "%s now select revision %s", strings.Join(namespaces, ", "), u.Revision)
		if err := e.restart(ctx, workloads); err != nil {
			return fmt.Errorf("canary upgrade to %s: restarting the workloads onto revision %s: %w", u.To, u.Revision, err)
		}
		e.event(sc, st, results.EventWorkloadsRestarted, "%s rolled out", strings.Join(workloads, ", "))
		if err := mc.RemoveRevision(ctx, old); err != nil {
			return fmt.Errorf("canary upgrade to %s: removing the old revision %s: %w", u.To, revisionName(old), err)
		}
		e.event(sc, st, results.EventRevisionRemoved, "revision %s uninstalled; %s is the control plane", revisionName(old), u.Revision)
	default:
		if err := mc.Upgrade(ctx, u.To, charts); err != nil {
			return fmt.Errorf("in-place upgrade to %s: %w", u.To, err)
		}
		releases := "base and istiod releases"
		if e.cluster.Ambient() {
			releases = "base, istiod, istio-cni and ztunnel releases"
		}
		e.event(sc, st, results.EventControlPlaneUpgraded, "%s upgraded to %s", releases, u.To)
		if err := mc.WaitReady(ctx); err != nil {
			return fmt.Errorf("in-place upgrade to %s: the upgraded control plane is not ready: %w", u.To, err)
		}
		e.event(sc, st, results.EventControlPlaneReady, "istiod %s serves and injects", u.To)
		if err := e.restart(ctx, workloads); err != nil {
			return fmt.Errorf("in-place upgrade to %s: restarting the workloads onto the new proxy: %w", u.To, err)
		}
		e.event(sc, st, results.EventWorkloadsRestarted, "%s rolled out", strings.Join(workloads, ", "))
	}

	// Every pair once more on the new proxies, so that the verdict covers
	// the mesh the upgrade left behind and not only the way there.
	if err := waitObserved(ctx, traffic, u.Traffic, e.now()); err != nil {
		return fmt.Errorf("no traffic observed after the upgrade: %w", err)
	}
	verdict := JudgeContinuous(traffic.Stop(), predictions)
	return errors.Join(verdict.Verify("the upgrade", u.Traffic.MaxFailures, start), traffic.Err(), e.checkProxyVersions(ctx, e.inMeshWorkloads(), u.To))
}

// restartedByUpgrade are the workloads an upgrade restarts onto the new
// proxy: those istiod injects (sidecar, proxyless). Ambient workloads have
// no proxy of their own: upgrading the ztunnel DaemonSet moves their
// traffic onto the new version without restarting them (Istio's ambient
// upgrade guide, https://istio.io/latest/docs/ambient/upgrade/helm/).
func (e *Engine) restartedByUpgrade() []string {
	var out []string
	for _, name := range e.inMeshWorkloads() {
		if !e.suite.Workload(name).Ambient() {
			out = append(out, name)
		}
	}
	return out
}

func revisionName(rev string) string {
	if rev == "" {
		return "default"
	}
	return rev
}

// waitObserved waits until every pair of t has been observed at or after
// since.
func waitObserved(ctx context.Context, traffic *Traffic, t scenario.Traffic, since time.Time) error {
	want := map[pair]bool{}
	for _, p := range t.Pairs {
		want[pair{p.From, p.To, p.Port}] = true
	}
	missing := len(want)
	err := wait.For(func(context.Context) (bool, error) {
		seen := map[pair]bool{}
		for _, o := range traffic.Observations() {
			if !o.Time.Before(since) && want[pair{o.From, o.To, o.Port}] {
				seen[pair{o.From, o.To, o.Port}] = true
			}
		}
		missing = len(want) - len(seen)
		if err := traffic.Err(); err != nil {
			return false, err // no point waiting for a client that cannot be observed
		}
		return missing == 0, nil
	}, wait.WithContext(ctx), wait.WithInterval(max(t.Every.Duration/2, 10*time.Millisecond)), wait.WithTimeout(timeLeft(ctx)))
	if err != nil {
		return fmt.Errorf("%d of %d pairs not observed: %w", missing, len(want), err)
	}
	return nil
}

// ContinuousVerdict judges the traffic of a step that changes the mesh
// while the policies stay as they are (an upgrade, a root rotation): the
// oracle's prediction for those policies holds throughout, except for the
// failures the step's budget allows.
type ContinuousVerdict struct {
	Total int
	// Failures are failed requests of pairs the policies do not predict to
	// fail: the outage the change caused.
	Failures []results.Observation
	// Plaintext are requests answered in plaintext where the policies
	// predict mTLS or a failure: a server that must be closed to
	// plaintext was open, if only for a moment.
	Plaintext []results.Observation
}

// JudgeContinuous sorts a step's observations against the predictions.
func JudgeContinuous(obs []results.Observation, predictions []oracle.Prediction) ContinuousVerdict {
	v := ContinuousVerdict{Total: len(obs)}
	for _, o := range obs {
		p, known := oracle.Find(predictions, o.From, o.To, o.Port)
		switch o.Result {
		case scenario.ResultFail:
			if !known || p.Result != scenario.ResultFail {
				v.Failures = append(v.Failures, o)
			}
		case scenario.ResultPlaintext:
			if known && p.Result != scenario.ResultPlaintext {
				v.Plaintext = append(v.Plaintext, o)
			}
		}
	}
	return v
}

// Verify returns every way the traffic falls short; start is when the
// change began, for the offsets in the message.
func (v ContinuousVerdict) Verify(what string, maxFailures int, start time.Time) error {
	var errs []error
	if v.Total == 0 {
		errs = append(errs, fmt.Errorf("no request ran during %s", what))
	}
	if len(v.Failures) > maxFailures {
		errs = append(errs, fmt.Errorf("%d of %d requests failed during %s (at most %d allowed), first: %s",
			len(v.Failures), v.Total, what, maxFailures, describeObservations(v.Failures, 3, start)))
	}
	if len(v.Plaintext) > 0 {
		errs = append(errs, fmt.Errorf("%d requests were answered in plaintext during %s by a server the policies close to plaintext: %s",
			len(v.Plaintext), what, describeObservations(v.Plaintext, 3, start)))
	}
	return errors.Join(errs...)
}

// checkProxyVersions checks that the ready pod of every workload runs an
// istio-proxy of version.
func (e *Engine) checkProxyVersions(ctx context.Context, workloads []string, version string) error {
	var errs []error
	for _, name := range workloads {
		p, err := e.readyPod(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var pod corev1.Pod
		if err := e.kube.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, &pod); err != nil {
			errs = append(errs, fmt.Errorf("reading pod %s: %w", p, err))
			continue
		}
		if e.suite.Workload(name).Ambient() {
			errs = append(errs, e.checkZtunnelVersion(ctx, name, &pod, version))
			continue
		}
		proxy := sidecar.Proxy(&pod)
		switch {
		case proxy == nil:
			errs = append(errs, fmt.Errorf("%s: pod %s has no %s container: it was not injected", name, p, sidecar.ContainerName))
		case !sidecar.TagIsVersion(sidecar.ImageTag(proxy.Image), version):
			errs = append(errs, fmt.Errorf("%s: pod %s runs %s, want the proxy of Istio %s", name, p, proxy.Image, version))
		default:
			e.log.Info("proxy version checked", "workload", name, "pod", p, "image", proxy.Image)
		}
	}
	return errors.Join(errs...)
}

// checkZtunnelVersion checks that the ztunnel carrying an ambient
// workload's traffic, the one on its pod's node, runs the given version.
func (e *Engine) checkZtunnelVersion(ctx context.Context, name string, pod *corev1.Pod, version string) error {
	ref, err := e.ztunnelOn(ctx, pod.Spec.NodeName)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var zpod corev1.Pod
	if err := e.kube.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &zpod); err != nil {
		return fmt.Errorf("%s: reading its ztunnel %s: %w", name, ref, err)
	}
	for _, c := range zpod.Spec.Containers {
		if c.Name != ztunnelContainer {
			continue
		}
		if !sidecar.TagIsVersion(sidecar.ImageTag(c.Image), version) {
			return fmt.Errorf("%s: its node's ztunnel %s runs %s, want the ztunnel of Istio %s", name, ref, c.Image, version)
		}
		e.log.Info("ztunnel version checked", "workload", name, "pod", pod.Namespace+"/"+pod.Name, "ztunnel", ref.String(), "image", c.Image)
		return nil
	}
	return fmt.Errorf("%s: its node's ztunnel %s has no %s container", name, ref, ztunnelContainer)
}
