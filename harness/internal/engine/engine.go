// Package engine runs scenario steps against a cluster, one RunStep call per
// step: mtls applies a step's policies (the new set in force before the old
// goes); expect probes traffic from inside the client pods until the
// expected results hold, or times out with a table of what was seen;
// transition applies new policies while traffic flows and judges the
// timeline of what was seen; rotate waits for and checks workload
// certificate rotation; upgrade moves the control plane to another Istio
// version (in place or canary) and rotateRoot replaces the mesh's root CA,
// both while traffic flows and through MeshControl; moveDataPlane moves
// workloads between sidecars and ambient while traffic flows (move.go);
// restart restarts workloads and wait waits for their rollout or for a
// duration. Every
// observation, timeline event and certificate serial goes to a
// results.Recorder (WithRecorder), and Verdict turns a step's error into its
// results.Verdict. It is independent of Ginkgo: the suites drive it, and so
// can any Go program.
//
// Over a tcp port no X-Forwarded-Client-Cert exists, so mtls is proven by
// the server sidecar's own count of the connections it accepted, read
// around each TCP probe through a ConnectionWitness (tcp.go says how, and
// how it refuses to guess).
//
// A grpc port is probed with a gRPC call (target): xds:/// from a proxyless
// client, so that grpc-go's xDS client applies istiod's configuration,
// grpc:// from any other. mTLS to a sidecar server is proven by its XFCC as
// for HTTP; a proxyless server terminates mTLS in grpc-go and reports the
// client certificate it saw, whose identity an mtls row checks (no proxy
// identity exists there to check). What the engine cannot yet run with
// proxyless workloads, Unsupported says.
//
// The engine talks to the API server through a controller-runtime client, to
// pods through small interfaces (Prober, CertReader, ConnectionWitness),
// and to Istio's installation through MeshControl, so that its step logic
// is tested against a real API server with only the in-pod transport
// scripted.
//
// Continuous traffic (transition, rotate, upgrade, rotateRoot) counts only
// requests that ran as requests. When the harness itself cannot probe (no
// ready client pod to exec into, an exec or API error) the round is
// retried within its period and, failing that, lost: a harness-error
// event, never a failed request, so that a kubelet hiccup does not count
// against maxFailures. A client pod being replaced during an upgrade or a
// restart is such a gap: Istio promises that requests sent keep working
// through an upgrade, not that a client with no pod sends any. What the
// mesh does is still judged: failed requests from the pods that exist
// count as failures, and a new pod that never becomes ready fails the
// rollout. A step fails for a gap only when a client could not be
// observed for longer than the gap limit (30s, at least three probing
// periods; WithObservationGapLimit): "could not observe service-a for 47s
// (limit 30s): last error: ...", because then the step has no evidence
// either way for that time.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Prober runs one probe batch inside a client pod: one exec per client per
// round, all its targets at once.
type Prober interface {
	Probe(ctx context.Context, client results.Pod, spec echoapi.ProbeSpec) ([]echoapi.ProbeResult, error)
}

// Engine runs the steps of a suite's scenarios on one cluster.
type Engine struct {
	suite   *scenario.Suite
	cluster *scenario.Cluster
	kube    client.Client
	prober  Prober
	certs   CertReader
	runID   string
	rec     results.Recorder
	log     *slog.Logger
	now     func() time.Time
	// mesh is shared by every engine For derives: an upgrade or a root
	// rotation changes it for all of them (meshcontrol.go).
	mesh *meshState
	// policyScope, when set, limits the policies RemovePolicies and an
	// mtls step's clean-up remove to those with these labels (For: one
	// scenario's), so that scenarios running at once never remove each
	// other's.
	policyScope map[string]string
	// gapLimit bounds how long continuous traffic may not observe a
	// client (traffic.go); 0 means defaultGapLimit.
	gapLimit time.Duration
	// witness proves how TCP connections arrived; tcpLocks keeps one
	// witness window per server workload at a time (tcp.go).
	witness ConnectionWitness
	// ztunnel proves pairs with an ambient side (ambient.go).
	ztunnel  ZtunnelWitness
	tcpLocks keyedLocks
	// xdsLocks keeps one probe at a time in a proxyless client's pod
	// (proxyless.go).
	xdsLocks keyedLocks
	// wire watches probe batches' packets (wire.go); wireSet says the run
	// turned the witness on at all, rehearsal how auto resolves.
	wire      WireWitness
	wireSet   bool
	rehearsal bool
	// moving are the workloads a moveDataPlane step is moving: their pods
	// are of two data planes until the rollout ends, so each probe reads
	// the data plane of the pods it meets (move.go).
	moving map[string]bool
	// enforcement is what expect steps measured of the mtls steps before
	// them (enforce.go); shared by the engines For derives, since the run
	// reads it by scenario and step.
	enforcement *enforcement
}

// Option configures an Engine.
type Option func(*Engine)

// WithRecorder sends every observation to r.
func WithRecorder(r results.Recorder) Option { return func(e *Engine) { e.rec = r } }

// WithLogger receives the engine's progress (default: none).
func WithLogger(l *slog.Logger) Option { return func(e *Engine) { e.log = l } }

// WithCertReader reads served certificates for rotate steps.
func WithCertReader(c CertReader) Option { return func(e *Engine) { e.certs = c } }

// New returns an engine for the scenarios that run on cluster clusterName.
func New(suite *scenario.Suite, clusterName string, kube client.Client, prober Prober, runID string, opts ...Option) (*Engine, error) {
	c := suite.Cluster(clusterName)
	if c == nil {
		return nil, fmt.Errorf("engine: no cluster named %q in the suite", clusterName)
	}
	if err := Unsupported(suite); err != nil {
		return nil, err
	}
	e := &Engine{suite: suite, cluster: c, kube: kube, prober: prober, runID: runID,
		rec: results.Discard{}, log: slog.New(slog.DiscardHandler), now: time.Now, mesh: &meshState{}, enforcement: &enforcement{}}
	for _, o := range opts {
		o(e)
	}
	return e, nil
}

// For returns an engine for one scenario, sc, that runs against suite —
// the file's, or an isolated copy of it whose fixtures live in the
// scenario's own namespaces — on the same cluster, with the same
// transports, recorder and mesh state. Its policy clean-up removes only
// sc's policies, so that scenarios running at once never touch each
// other's.
func (e *Engine) For(suite *scenario.Suite, sc *scenario.Scenario) *Engine {
	d := e.withSuite(suite)
	d.log = e.log.With("scenario", sc.Name)
	d.policyScope = map[string]string{ownership.ScenarioLabel: ownership.LabelValue(sc.Name)}
	if c := suite.Cluster(e.cluster.Name); c != nil {
		d.cluster = c
	}
	return d
}

// withSuite is an engine like e that runs against suite: the same
// transports, witnesses, recorder, clock, mesh state, logger and policy
// scope, with lock sets of its own.
func (e *Engine) withSuite(suite *scenario.Suite) *Engine {
	return &Engine{suite: suite, cluster: e.cluster, kube: e.kube, prober: e.prober, certs: e.certs, runID: e.runID,
		rec: e.rec, log: e.log, now: e.now, mesh: e.mesh, gapLimit: e.gapLimit,
		witness: e.witness, ztunnel: e.ztunnel, wire: e.wire, wireSet: e.wireSet, rehearsal: e.rehearsal,
		enforcement: e.enforcement, policyScope: e.policyScope}
}

// at is the engine step index of sc runs with: e, seeing the workloads on
// the data planes that sc's moveDataPlane steps before index left them on
// (scenario.Suite.AtStep). e.suite must be the scenario's suite as the file
// (or its isolated copy) gives it.
func (e *Engine) at(sc *scenario.Scenario, index int) *Engine {
	view := e.suite.AtStep(sc, index-1)
	if view == e.suite {
		return e
	}
	return e.withSuite(view)
}

// RunStep runs step index of a scenario.
func (e *Engine) RunStep(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	ctx, cancel := context.WithTimeout(ctx, st.Timeout.Duration)
	defer cancel()
	run, ok := stepRunners[st.Kind()]
	if !ok {
		return fmt.Errorf("step %q: no step kind the engine knows (%q)", st.Name, st.Kind())
	}
	// The workloads as the step finds them: a moveDataPlane step before it
	// moved some (a move step itself sees them before its own move).
	e = e.at(sc, index)
	if probesTraffic[st.Kind()] && e.suite.AmbientWorkloads() {
		// Before any expectation: every ambient pod really is enrolled.
		if err := e.checkEnrolment(ctx); err != nil {
			return err
		}
	}
	return run(e, ctx, sc, index)
}

// probesTraffic are the kinds of step that send requests between the
// fixtures.
var probesTraffic = map[string]bool{scenario.KindExpect: true, scenario.KindTransition: true, scenario.KindUpgrade: true,
	scenario.KindRotate: true, scenario.KindRotateRoot: true, scenario.KindMove: true}

// stepRunner runs step index of a scenario, of the kind it is keyed by.
type stepRunner func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error

// stepRunners runs each kind of step; a test holds it to scenario's table
// of step kinds, so that a new kind cannot reach a run unhandled.
var stepRunners = map[string]stepRunner{
	scenario.KindMTLS: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.applyPolicies(ctx, sc, index, sc.Steps[index].MTLS)
	},
	scenario.KindTransition: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.transition(ctx, sc, index)
	},
	scenario.KindExpect: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.expect(ctx, sc, index)
	},
	scenario.KindRotate: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.rotate(ctx, sc, &sc.Steps[index])
	},
	scenario.KindUpgrade: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.upgrade(ctx, sc, index)
	},
	scenario.KindRotateRoot: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.rotateRoot(ctx, sc, index)
	},
	scenario.KindMove: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.moveDataPlane(ctx, sc, index)
	},
	scenario.KindRestart: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		return e.restart(ctx, sc.Steps[index].Restart.Workloads)
	},
	scenario.KindWait: func(e *Engine, ctx context.Context, sc *scenario.Scenario, index int) error {
		w := sc.Steps[index].Wait
		if len(w.Workloads) > 0 {
			return e.waitRolledOut(ctx, w.Workloads)
		}
		select {
		case <-time.After(w.Duration.Duration):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	},
}

// applyPolicies applies an mtls step's policies and then removes every other
// policy of this run: the new policies are in force before the old ones go,
// so the mesh never passes through "no policy at all".
func (e *Engine) applyPolicies(ctx context.Context, sc *scenario.Scenario, index int, m *scenario.MTLSStep) error {
	objs, err := policy.ForMTLS(e.suite, m, policy.Step{RunID: e.runID, Scenario: sc.Name, Index: index})
	if err != nil {
		return err
	}
	if err := apply.Policies(ctx, e.kube, objs...); err != nil {
		return err
	}
	e.noteApplied(sc, sc.Steps[index].Name, e.now())
	keep := map[string]bool{}
	for _, o := range objs {
		keep[apply.Describe(o.Object)] = true
	}
	removed, err := e.removePolicies(ctx, keep)
	for _, r := range removed {
		e.log.Info("policy removed", "object", r)
	}
	return err
}

// RemovePolicies removes every policy this run applied; the suites call it
// between scenarios so that each starts from Istio's defaults.
func (e *Engine) RemovePolicies(ctx context.Context) error {
	removed, err := e.removePolicies(ctx, nil)
	for _, r := range removed {
		e.log.Info("policy removed", "object", r)
	}
	return err
}

func (e *Engine) removePolicies(ctx context.Context, keep map[string]bool) ([]string, error) {
	labels := ownership.Labels(e.runID)
	maps.Copy(labels, e.policyScope)
	sel := client.MatchingLabels(labels)
	var pas securityv1.PeerAuthenticationList
	if err := e.kube.List(ctx, &pas, sel); err != nil {
		return nil, fmt.Errorf("listing this run's PeerAuthentications: %w", err)
	}
	var drs networkingv1.DestinationRuleList
	if err := e.kube.List(ctx, &drs, sel); err != nil {
		return nil, fmt.Errorf("listing this run's DestinationRules: %w", err)
	}
	var objs []client.Object
	for _, p := range pas.Items {
		p.Kind = "PeerAuthentication"
		objs = append(objs, p)
	}
	for _, d := range drs.Items {
		d.Kind = "DestinationRule"
		objs = append(objs, d)
	}
	var removed []string
	var errs []error
	for _, o := range objs {
		name := apply.Describe(o)
		if keep[name] {
			continue
		}
		if err := e.kube.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// readyPod returns the newest ready, running pod of a workload.
func (e *Engine) readyPod(ctx context.Context, workload string) (results.Pod, error) {
	return e.newestReady(ctx, workload, client.MatchingLabels{manifests.AppLabel: workload})
}

// newestReady returns the newest ready, running pod of a workload among
// those selector picks.
func (e *Engine) newestReady(ctx context.Context, workload string, selector client.MatchingLabels) (results.Pod, error) {
	w := e.suite.Workload(workload)
	if w == nil {
		return results.Pod{}, fmt.Errorf("no workload named %q", workload)
	}
	var pods corev1.PodList
	if err := e.kube.List(ctx, &pods, client.InNamespace(w.Namespace), selector); err != nil {
		return results.Pod{}, fmt.Errorf("listing pods of %s: %w", w.Name, err)
	}
	var best *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !podReady(p) {
			continue
		}
		if best == nil || p.CreationTimestamp.After(best.CreationTimestamp.Time) {
			best = p
		}
	}
	if best == nil {
		return results.Pod{}, fmt.Errorf("workload %s has no ready pod (%d pods)", w.Name, len(pods.Items))
	}
	return results.Pod{Namespace: best.Namespace, Name: best.Name, IP: best.Status.PodIP}, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// restart does what `kubectl rollout restart` does, then waits for the
// rollout.
func (e *Engine) restart(ctx context.Context, workloads []string) error {
	stamp := e.now().UTC().Format(time.RFC3339Nano)
	for _, name := range workloads {
		w := e.suite.Workload(name)
		var d appsv1.Deployment
		if err := e.kube.Get(ctx, client.ObjectKey{Namespace: w.Namespace, Name: w.Name}, &d); err != nil {
			return fmt.Errorf("restarting %s: %w", name, err)
		}
		patch := client.MergeFrom(d.DeepCopy())
		if d.Spec.Template.Annotations == nil {
			d.Spec.Template.Annotations = map[string]string{}
		}
		d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = stamp
		if err := e.kube.Patch(ctx, &d, patch); err != nil {
			return fmt.Errorf("restarting %s: %w", name, err)
		}
		e.log.Info("workload restarted", "namespace", w.Namespace, "workload", w.Name)
	}
	return e.waitRolledOut(ctx, workloads)
}

// waitRolledOut waits for the workloads' Deployments to roll out.
func (e *Engine) waitRolledOut(ctx context.Context, workloads []string) error {
	keys := make([]client.ObjectKey, len(workloads))
	for i, name := range workloads {
		w := e.suite.Workload(name)
		keys[i] = client.ObjectKey{Namespace: w.Namespace, Name: w.Name}
	}
	return deploy.WaitRolledOut(ctx, e.kube, keys...)
}

// timeLeft is the time until ctx's deadline, for waits bounded by the step.
func timeLeft(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 10 * time.Minute
}
