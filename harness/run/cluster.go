package run

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/diagnose"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/kube"
	"github.com/meshproof/meshproof/harness/internal/lease"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// clusterState is what the run holds for one cluster. provider is set
// before the cluster is created; the clients only once it was reached.
type clusterState struct {
	spec       *scenario.Cluster
	provider   support.E2EClusterProvider
	kubeconfig string
	rest       *rest.Config
	kube       client.Client
	clientset  kubernetes.Interface
	discovery  *discovery.DiscoveryClient
	metadata   metadata.Interface
	execer     probe.Execer
	reached    bool // its API server answered: the clients can be used
	lease      *lease.Held
	ledger     *ledger.Ledger // what the run created on the cluster
	mesh       *mesh.Mesh     // set once the installer returned one, even partly installed
	engine     *engine.Engine
	image      string // the echo image's reference, for isolated scenarios' fixtures
	// serial says why every scenario on the cluster runs alone despite
	// WithParallel (a fixture namespace that was there before the run).
	serial string
	// lock is held shared by isolated scenarios and exclusively by those
	// that run alone.
	lock schedule.Lock
}

// ephemeral is implemented by providers whose Destroy removes the whole
// cluster (a kind cluster the run created, a rehearsal's local cluster):
// sweeping it first is wasted time.
type ephemeral interface{ Ephemeral() bool }

// remainer is an ephemeral provider that says itself what is left of its
// cluster when teardown could not finish, and how to remove it.
type remainer interface{ Remains() string }

// usedClusters are the clusters some selected scenario runs on.
func (r *Run) usedClusters() []*scenario.Cluster {
	var out []*scenario.Cluster
	for i := range r.suite.Clusters {
		c := &r.suite.Clusters[i]
		for _, sc := range r.Scenarios() {
			if sc.Cluster == c.Name {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// Setup sets up every cluster the selected scenarios use, bounded by the
// file's setupTimeout, and records the setup's verdict. On failure it
// collects diagnostics into diagnostics/setup/; everything created so far
// stays registered for Teardown.
func (r *Run) Setup(ctx context.Context) error {
	started := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.suite.Defaults.SetupTimeout.Duration)
	defer cancel()
	var err error
	for _, c := range r.usedClusters() {
		if err = r.setupCluster(ctx, c); err != nil {
			err = fmt.Errorf("cluster %s: %w", c.Name, err)
			break
		}
	}
	if err == nil {
		r.settleSchedule()
	}
	v := results.Verdict{Step: results.SetupStep, Kind: results.SetupStep, Status: results.Passed, Started: started, Duration: time.Since(started)}
	if err != nil {
		r.noteInterrupt(ctx)
		r.setupErr = err
		v.Status, v.Reason = results.Failed, err.Error()
		r.log().Error("setup failed", "took", v.Duration.Round(time.Second), "error", err)
		v.Diagnostics = r.diagnose(ctx, nil, results.SetupStep)
	} else {
		r.log().Info("setup done", "took", v.Duration.Round(time.Second))
	}
	r.rec.RecordVerdict(v)
	return err
}

// phase runs one setup phase with progress lines and a timeline event.
func (r *Run) phase(c *scenario.Cluster, what string, f func() error) error {
	start := time.Now()
	r.log(c.Name).Info(what + " ...")
	err := f()
	took := time.Since(start).Round(time.Millisecond)
	outcome := "done"
	if err != nil {
		outcome = "failed"
	}
	r.rec.RecordEvent(results.Event{Time: time.Now(), Step: results.SetupStep, Kind: results.EventSetupPhase,
		Detail: fmt.Sprintf("%s: %s %s in %s", c.Name, what, outcome, took)})
	r.log(c.Name).Info(what+" "+outcome, "took", took)
	return err
}

func (r *Run) setupCluster(ctx context.Context, c *scenario.Cluster) error {
	p, err := r.o.providers(c, r.kubeconfigDir(), r.o.logger.With("cluster", c.Name))
	if err != nil {
		return err
	}
	// Registered before it is created: Teardown destroys what Create made
	// even if Create fails or is interrupted half way.
	st := &clusterState{spec: c, provider: p}
	r.clusters[c.Name] = st
	r.order = append(r.order, c.Name)

	if err := r.phase(c, "cluster", func() error {
		kubeconfig, err := p.Create(ctx)
		if err != nil {
			return err
		}
		st.kubeconfig = kubeconfig
		if err := st.connect(r.o.transport); err != nil {
			return err
		}
		if err := st.reach(ctx, r.o.reachTimeout); err != nil {
			return err
		}
		st.reached = true
		return nil
	}); err != nil {
		return err
	}

	// One run per cluster at a time: holding the cluster's Lease proves
	// no other run is live on it, so what earlier runs left is theirs no
	// more and can be swept.
	if err := r.phase(c, "the cluster's lease", func() (err error) {
		// The Lease is renewed for as long as the run lives (until
		// Teardown releases it), not only while the setup runs; the
		// setup's ctx bounds only the wait for it.
		lctx, stop := context.WithCancel(r.life)
		detach := context.AfterFunc(ctx, stop)
		st.lease, err = lease.Acquire(lctx, st.clientset, r.ID(), lease.WithWait(r.o.leaseWait), lease.WithDuration(r.o.leaseDuration),
			lease.WithLogger(r.o.logger.With("cluster", c.Name)))
		detach()
		if err != nil {
			stop()
			return err
		}
		if st.lease.TookOverFrom() != "" {
			r.log(c.Name).Info("an earlier run stopped without releasing the cluster; its leftovers are swept", "earlierRun", st.lease.TookOverFrom())
		}
		// Everything the run creates from here on is written in its
		// ledger first; teardown removes only what the ledger lists.
		if st.ledger, err = ledger.Open(ctx, st.kube, r.ID(), r.folder.Dir, ledger.WithNamespace(st.lease.Namespace())); err != nil {
			return err
		}
		if st.lease.CreatedNamespace() {
			return st.ledger.RecordCreatedNamespace(ctx, st.lease.Namespace())
		}
		return nil
	}); err != nil {
		return err
	}
	if err := r.phase(c, "leftovers of earlier runs", func() error { return r.sweepLeftovers(ctx, st) }); err != nil {
		return err
	}

	if err := r.phase(c, "Istio "+c.Istio.Version, func() error {
		more, err := r.o.istioOptions(st.rest)
		if err != nil {
			return err
		}
		m, err := r.o.mesh(ctx, target{Kube: st.kube, REST: st.rest, Ledger: st.ledger}, c, r.log(c.Name), more)
		st.mesh = m
		return err
	}); err != nil {
		return err
	}

	var ref string
	if err := r.phase(c, "echo image", func() (err error) {
		ref, err = r.o.images.Deliver(ctx, p, c, r.log(c.Name))
		return err
	}); err != nil {
		return err
	}

	st.image = ref
	if r.o.parallel > 1 {
		mine, err := r.existingFixtureNamespaces(ctx, st)
		if err != nil {
			return err
		}
		if len(mine) > 0 {
			st.serial = fmt.Sprintf("namespace %s was there before the run (yours): copies of it would not be it, so every scenario runs in it, one at a time", strings.Join(mine, ", "))
			r.log(c.Name).Info("scenarios run one at a time", "why", st.serial)
		}
	}
	if !r.sharedFixtures(c.Name, st.serial) {
		r.log(c.Name).Info("fixtures deploy with each scenario, in namespaces of its own")
	} else if err := r.phase(c, "fixtures", func() error {
		objs, err := manifests.Render(plan.FixtureOptions(r.suite, c, r.ID(), ref))
		if err != nil {
			return err
		}
		objs, err = r.claimNamespaces(ctx, st, objs)
		if err != nil {
			return fmt.Errorf("deploying fixtures: %w", err)
		}
		if err := st.ledger.RecordObjects(ctx, objs...); err != nil {
			return err
		}
		if err := deploy.Fixtures(ctx, st.kube, objs, deploy.WithTerminatingTimeout(r.o.terminatingTimeout)); err != nil {
			return fmt.Errorf("deploying fixtures: %w", err)
		}
		return nil
	}); err != nil {
		return err
	}

	var witness engine.WireWitness
	if !r.o.transportWitness && r.suite.DeployWireWitness(c, false) != scenario.WitnessOff {
		if err := r.phase(c, "wire witness", func() (err error) {
			witness, err = r.wireWitness(ctx, c, st, ref)
			return err
		}); err != nil {
			return err
		}
	}

	opts := []engine.Option{engine.WithRecorder(r.rec), engine.WithCertReader(probe.NewCertReader(st.execer)),
		engine.WithConnectionWitness(probe.NewStatsReader(st.execer)), engine.WithLogger(r.log(c.Name))}
	if pods, ok := st.execer.(probe.PodPortGetter); ok {
		// ztunnel's metrics and config dump, through the transport's
		// port-forward: ztunnel's image has no shell to exec.
		opts = append(opts, engine.WithZtunnelWitness(probe.NewZtunnelReader(pods)))
	}
	if st.mesh != nil && st.mesh.Istio != nil {
		opts = append(opts, engine.WithMeshControl(st.mesh.Istio))
		if st.mesh.CA != nil {
			opts = append(opts, engine.WithPluggedCA(st.mesh.CA))
		}
	}
	switch {
	case r.o.transportWitness:
		opts = append(opts, engine.WithWireWitness(nil, true))
	case witness != nil:
		opts = append(opts, engine.WithWireWitness(witness, false))
	}
	st.engine, err = engine.New(r.suite, c.Name, st.kube, probe.NewProber(st.execer), r.ID(), opts...)
	return err
}

// claimNamespaces makes the fixtures' namespaces exist through the ledger
// and returns the other objects: a namespace the run creates carries the
// run's labels and goes at teardown; one that was there (the user's) only
// gets the labels the fixtures need (istio-injection), which teardown
// restores, and is never deleted. A namespace still terminating (an
// earlier run's, just swept) is waited for first.
func (r *Run) claimNamespaces(ctx context.Context, st *clusterState, objs []client.Object) ([]client.Object, error) {
	var rest []client.Object
	for _, o := range objs {
		if _, ok := o.(*corev1.Namespace); !ok {
			rest = append(rest, o)
			continue
		}
		if err := deploy.WaitNamespacesGone(ctx, st.kube, r.o.terminatingTimeout, o.GetName()); err != nil {
			return nil, err
		}
		labels := map[string]string{}
		for k, v := range o.GetLabels() {
			if k != ownership.ManagedByLabel && k != ownership.RunIDLabel {
				labels[k] = v
			}
		}
		created, err := st.ledger.EnsureNamespace(ctx, o.GetName(), labels)
		if err != nil {
			return nil, err
		}
		if !created {
			r.log(st.spec.Name).Info("namespace exists: using it, with labels for the run only; it stays after the run", "namespace", o.GetName(), "labels", labels)
		}
	}
	return rest, nil
}

// sweepLeftovers removes what earlier runs left on the cluster and waits
// until their namespaces are gone: the fixtures may be applied into a
// namespace of the same name, which refuses new objects while it
// terminates.
func (r *Run) sweepLeftovers(ctx context.Context, st *clusterState) error {
	live := func(ctx context.Context, runID string) (bool, error) {
		return lease.RunIsLive(ctx, st.clientset, runID)
	}
	uninstall, err := releaseUninstaller(st)
	if err != nil {
		return err
	}
	swept, err := ledger.Sweep(ctx, st.kube, r.ID(), live, uninstall, ledger.WithNamespace(st.lease.Namespace()))
	for _, id := range swept {
		r.log(st.spec.Name).Info("undid the ledger of an earlier run, which is over", "earlierRun", id)
	}
	if err != nil {
		return fmt.Errorf("undoing the ledgers of earlier runs: %w", err)
	}
	removed, err := deploy.Sweep(ctx, st.sweepTarget(), deploy.LeftoversSelector(r.ID()))
	var namespaces []string
	for _, o := range removed {
		if o.Terminating {
			r.log(st.spec.Name).Info("waiting for a leftover of an earlier run to finish terminating", "object", o)
		} else {
			r.log(st.spec.Name).Info("removing a leftover of an earlier run", "object", o)
		}
		if o.Resource.Group == "" && o.Resource.Resource == "namespaces" {
			namespaces = append(namespaces, o.Name)
		}
	}
	if err != nil {
		return fmt.Errorf("removing leftovers of earlier runs: %w", err)
	}
	return deploy.WaitNamespacesGone(ctx, st.kube, r.o.terminatingTimeout, namespaces...)
}

// connect builds the clients of a cluster from its kubeconfig.
func (st *clusterState) connect(transport TransportFunc) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", st.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading kubeconfig %s: %w", st.kubeconfig, err)
	}
	// Continuous traffic looks up every client's ready pod each round;
	// client-go's default 5 requests/s would throttle the steps' own waits.
	cfg.QPS, cfg.Burst = 50, 100
	st.rest = cfg
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	if st.kube, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	if st.clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if st.discovery, err = discovery.NewDiscoveryClientForConfig(cfg); err != nil {
		return err
	}
	if st.metadata, err = metadata.NewForConfig(cfg); err != nil {
		return err
	}
	st.execer, err = transport(cfg)
	return err
}

// reach waits, up to timeout, until the cluster's API server answers.
func (st *clusterState) reach(ctx context.Context, timeout time.Duration) error {
	var last error
	err := wait.For(func(ctx context.Context) (bool, error) {
		_, last = st.discovery.ServerVersion()
		return last == nil, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(time.Second), wait.WithTimeout(timeout))
	if err == nil {
		return nil
	}
	if last == nil {
		last = err
	}
	return fmt.Errorf("the API server at %s (%s) did not answer within %s: %w", st.rest.Host, st.kubeconfigName(), timeout, last)
}

// kubectlFlags are kubectl's flags that reach the cluster: the user's own
// kubeconfig and context for an existing cluster, else the provider's file.
func (st *clusterState) kubectlFlags() string {
	if st.spec.Provider != scenario.ProviderExisting {
		return "--kubeconfig " + st.kubeconfig
	}
	var flags []string
	if e := st.spec.Existing; e != nil && e.Kubeconfig != "" {
		flags = append(flags, "--kubeconfig "+e.Kubeconfig)
	}
	if e := st.spec.Existing; e != nil && e.Context != "" {
		flags = append(flags, "--context "+e.Context)
	}
	return strings.Join(flags, " ")
}

// kubeconfigName says which kubeconfig reaches the cluster, for messages:
// the user's own file and context for an existing cluster (the run's copy
// of it is gone after the run), else the file the provider wrote.
func (st *clusterState) kubeconfigName() string {
	if st.spec.Provider != scenario.ProviderExisting {
		return "kubeconfig " + st.kubeconfig
	}
	kubeconfig, context := "$KUBECONFIG or ~/.kube/config", "its current context"
	if e := st.spec.Existing; e != nil && e.Kubeconfig != "" {
		kubeconfig = e.Kubeconfig
	}
	if e := st.spec.Existing; e != nil && e.Context != "" {
		context = "context " + e.Context
	}
	return "kubeconfig " + kubeconfig + ", " + context
}

// Teardown leaves nothing of the run behind, unless WithKeep: on every
// cluster it registered, reached or not, the run's objects are swept by
// label, Istio is uninstalled where this run installed it on a cluster that
// stays, and the provider is destroyed (which deletes a kind cluster the
// run created; reused and existing clusters stay). Later calls do nothing.
func (r *Run) Teardown(ctx context.Context) error {
	if r.tornDown {
		return nil // once: a test framework's clean-up may call it again
	}
	r.tornDown = true
	if r.o.keep {
		for _, name := range r.order {
			r.keepMessage(name, r.clusters[name])
		}
		return nil
	}
	defer r.forgetKubeconfigs()
	var errs []error
	for i := len(r.order) - 1; i >= 0; i-- {
		name := r.order[i]
		st := r.clusters[name]
		if e, ok := st.provider.(ephemeral); !ok || !e.Ephemeral() {
			errs = append(errs, r.cleanUp(ctx, st))
		}
		if st.lease != nil {
			if err := st.lease.Release(ctx); err != nil {
				errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
			}
		}
		if err := st.provider.Destroy(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// kubeconfigDir is where providers write the kubeconfigs of the run's
// clusters: under meshproof's cache (<cache>/kubeconfigs/<run id>, mode
// 0700), never in the run folder. A kubeconfig holds credentials (a copy of
// the user's for an existing cluster, the admin certificate of a kind
// cluster), and users publish their reports folder to share JUnit.
func (r *Run) kubeconfigDir() string {
	if r.kubeconfigs == "" {
		root, err := binaries.CacheRoot()
		if err != nil {
			root = os.TempDir()
		}
		r.kubeconfigs = filepath.Join(root, "kubeconfigs", r.ID())
	}
	return r.kubeconfigs
}

// ownKubeconfig reports whether path is a kubeconfig a provider wrote for
// this run (in kubeconfigDir).
func (r *Run) ownKubeconfig(path string) bool {
	return r.kubeconfigs != "" && path != "" && strings.HasPrefix(path, r.kubeconfigs+string(filepath.Separator))
}

// forgetKubeconfigs removes the kubeconfigs written for the run.
func (r *Run) forgetKubeconfigs() {
	if r.kubeconfigs == "" {
		return
	}
	if err := os.RemoveAll(r.kubeconfigs); err != nil {
		r.log().Warn("could not remove the run's kubeconfigs", "dir", r.kubeconfigs, "error", err)
	}
}

// keepMessage says, under --keep, how to reach a cluster left as it is: an
// existing cluster through the user's own kubeconfig (the run's copy of it
// goes), a cluster the run made through the kubeconfig kept for it, said
// loudly since it holds the cluster's credentials.
func (r *Run) keepMessage(name string, st *clusterState) {
	switch {
	case st.spec.Provider == scenario.ProviderExisting:
		if r.ownKubeconfig(st.kubeconfig) {
			_ = os.Remove(st.kubeconfig)
		}
		r.log(name).Info("--keep: cluster left as it is; reach it with your own " + st.kubeconfigName())
	case r.ownKubeconfig(st.kubeconfig):
		r.log(name).Info("--keep: cluster left running. Its kubeconfig holds the cluster's admin credentials; it is kept outside the reports folder (so that publishing reports never publishes it): delete it with the cluster", "kubeconfig", st.kubeconfig)
	default:
		r.log(name).Info("--keep: cluster left as it is; reach it with kubectl --kubeconfig KUBECONFIG get pods -A", "kubeconfig", st.kubeconfig)
	}
}

// cleanUp removes the run's objects from a cluster that stays (by label:
// the policies steps applied, the fixtures), then undoes its ledger: the
// Istio releases and CRDs it installed, the namespaces it created, the
// labels it set on namespaces it found.
func (r *Run) cleanUp(ctx context.Context, st *clusterState) error {
	if !st.reached {
		return nil // never reached: nothing of this run is on it
	}
	var errs []error
	// The ledger first: the label sweep below would take its ConfigMap
	// (labelled with the run id) from under it.
	if st.ledger != nil {
		uninstall, err := releaseUninstaller(st)
		if err == nil {
			err = st.ledger.Undo(ctx, uninstall)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: undoing what the run created: %w", st.spec.Name, err))
		}
	}
	// What the ledger does not list: the policies steps applied.
	removed, err := deploy.Sweep(ctx, st.sweepTarget(), deploy.RunSelector(r.ID()))
	r.log(st.spec.Name).Info("removed more objects of this run", "count", len(removed))
	if err != nil {
		errs = append(errs, fmt.Errorf("cluster %s: removing this run's objects: %w", st.spec.Name, err))
	}
	return errors.Join(errs...)
}

// releaseUninstaller uninstalls the Helm releases a ledger lists: the run's
// own installer when it installed Istio, else one for Istio's namespace.
func releaseUninstaller(st *clusterState) (ledger.Uninstaller, error) {
	if st.mesh != nil && st.mesh.Istio != nil {
		return st.mesh.Istio.UninstallRelease, nil
	}
	in, err := istio.New(st.rest, istio.WithNamespace(scenario.IstioRootNamespace), istio.WithLedger(st.ledger))
	if err != nil {
		return nil, err
	}
	return in.UninstallRelease, nil
}

// Remains says what may be left of the run when Teardown could not finish
// (a second Ctrl-C): one line per cluster, with the command that removes
// it.
func (r *Run) Remains() []string {
	var out []string
	for _, name := range r.order {
		st := r.clusters[name]
		if e, ok := st.provider.(ephemeral); ok && e.Ephemeral() {
			if rm, ok := st.provider.(remainer); ok {
				out = append(out, rm.Remains())
			} else {
				out = append(out, fmt.Sprintf("kind cluster %s: kind delete cluster --name %s", name, name))
			}
			continue
		}
		if st.reached {
			out = append(out, fmt.Sprintf("objects of this run on cluster %s: the next run removes them, or: kubectl %s delete all,namespaces,peerauthentications.security.istio.io,destinationrules.networking.istio.io -A -l %s",
				name, st.kubectlFlags(), ownership.RunSelector(r.ID())))
		}
	}
	return out
}

// Kubeconfigs are the kubeconfig paths of the clusters set up so far.
func (r *Run) Kubeconfigs() map[string]string {
	out := map[string]string{}
	for name, st := range r.clusters {
		if st.kubeconfig != "" {
			out[name] = st.kubeconfig
		}
	}
	return out
}

// diagnose collects diagnostics of a failure into
// diagnostics/<scenario>/<step>/ (diagnostics/setup/ for the setup) and
// returns that folder relative to the run folder, or "" when nothing could
// be collected. It never fails the run: what it could not collect is said
// in the folder's index and the progress lines. After an interrupt it is
// bounded by what is left of the grace period.
func (r *Run) diagnose(ctx context.Context, sc *scenario.Scenario, step string) string {
	rel := filepath.Join("diagnostics", "setup")
	clusters := r.order
	namespaces := r.namespaces(nil)
	if sc != nil {
		rel = filepath.Join("diagnostics", ownership.LabelValue(sc.Name), ownership.LabelValue(step))
		clusters = []string{sc.Cluster}
		namespaces = r.namespaces(sc)
	}
	budget := diagnosticsTimeout
	if at := r.interrupted(); !at.IsZero() {
		// Leave half of what remains for the clean-up that follows.
		budget = (r.o.gracePeriod - time.Since(at)) / 2
		if budget <= time.Second {
			r.log().Info("diagnostics skipped: the run was interrupted and its grace period is spent")
			return ""
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	defer cancel()
	collected := false
	for _, name := range clusters {
		st := r.clusters[name]
		if st == nil || !st.reached {
			continue
		}
		// A provider that cannot export node logs says so with
		// errors.ErrUnsupported, which the index notes.
		opts := []diagnose.Option{diagnose.WithRunID(r.ID()), diagnose.WithExecer(st.execer), diagnose.WithNamespaces(namespaces...),
			diagnose.WithNodeLogs(func(dir string) error { return st.provider.ExportLogs(dctx, dir) })}
		dir := r.folder.Path(rel, name)
		summary, err := diagnose.New(st.kube, st.clientset, opts...).Collect(dctx, dir)
		if err != nil {
			r.log(name).Info("collecting diagnostics failed", "error", err)
			continue
		}
		collected = true
		r.log(name).Info("diagnostics written", "dir", dir, "collected", len(summary.Collected), "failed", len(summary.Failed))
	}
	if !collected {
		return ""
	}
	return rel
}

// namespaces are Istio's and the fixture namespaces a scenario runs in
// (its own copies when it is isolated), or those of every scenario that
// has begun besides the fixtures' own, for the setup (sc nil).
func (r *Run) namespaces(sc *scenario.Scenario) []string {
	out := []string{scenario.IstioRootNamespace}
	add := func(ns ...string) {
		for _, n := range ns {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	if sc != nil {
		if st := r.state(sc); st != nil && st.copy != nil {
			add(st.copy.CopyNamespaces()...)
			return out
		}
	}
	add(r.fixtureNamespaces()...)
	return out
}

// fixtureNamespaces are the namespaces of the file's fixtures, in file
// order.
func (r *Run) fixtureNamespaces() []string {
	var out []string
	for _, w := range r.suite.Fixtures.Workloads {
		if !slices.Contains(out, w.Namespace) {
			out = append(out, w.Namespace)
		}
	}
	return out
}

func expandHome(p string) string {
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(p, "~/") {
		return filepath.Join(home, p[2:])
	}
	return p
}
