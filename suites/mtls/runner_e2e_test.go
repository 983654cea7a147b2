//go:build e2e

package mtls

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/cluster"
	"github.com/meshproof/meshproof/harness/deploy"
	"github.com/meshproof/meshproof/harness/diagnose"
	"github.com/meshproof/meshproof/harness/engine"
	"github.com/meshproof/meshproof/harness/image"
	"github.com/meshproof/meshproof/harness/istio"
	"github.com/meshproof/meshproof/harness/mesh"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/probe"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

const e2eBuild = true

// e2eRunner runs scenarios on real clusters.
type e2eRunner struct {
	suite    *scenario.Suite
	run      *report.Run
	keep     bool
	clusters map[string]*clusterState
}

// clusterState is what the runner holds for one cluster.
type clusterState struct {
	spec       *scenario.Cluster
	provider   support.E2EClusterProvider
	kind       *cluster.Kind // nil for existing clusters
	kubeconfig string
	rest       *rest.Config
	kube       client.Client
	clientset  kubernetes.Interface
	istio      *istio.Installer
	mesh       *mesh.Mesh
	installed  bool // Istio installed by this run
	engine     *engine.Engine
	execer     probe.Execer
	discovery  *discovery.DiscoveryClient
	metadata   metadata.Interface
}

func (st *clusterState) sweepTarget() deploy.Cluster {
	return deploy.Cluster{Discovery: st.discovery, Metadata: st.metadata}
}

// setupResult is what process 1's Setup hands every process.
type setupResult struct {
	RunID       string            `json:"runId"`
	Kubeconfigs map[string]string `json:"kubeconfigs"`
}

func newRunner(t *testing.T, s *scenario.Suite) (spec.Runner, string) {
	run, err := report.Open(*reportsDir, ownership.NewRunID(time.Now()))
	if err != nil {
		t.Fatalf("opening the report folder: %v", err)
	}
	fmt.Fprintf(GinkgoWriter, "run %s: reports in %s\n", run.ID, run.Dir)
	return &e2eRunner{suite: s, run: run, keep: *keep, clusters: map[string]*clusterState{}}, run.JUnitPath()
}

func (r *e2eRunner) logf(format string, args ...any) {
	GinkgoWriter.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// usedClusters are the clusters some scenario runs on.
func (r *e2eRunner) usedClusters() []*scenario.Cluster {
	var out []*scenario.Cluster
	for i := range r.suite.Clusters {
		c := &r.suite.Clusters[i]
		for _, sc := range r.suite.Scenarios {
			if sc.Cluster == c.Name {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

func (r *e2eRunner) Setup(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, r.suite.Defaults.SetupTimeout.Duration)
	defer cancel()
	res := setupResult{RunID: r.run.ID, Kubeconfigs: map[string]string{}}
	for _, c := range r.usedClusters() {
		st, err := r.setupCluster(ctx, c)
		if st != nil {
			r.clusters[c.Name] = st // known to Teardown even when setup failed half way
		}
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
		res.Kubeconfigs[c.Name] = st.kubeconfig
	}
	return json.Marshal(res)
}

func (r *e2eRunner) setupCluster(ctx context.Context, c *scenario.Cluster) (*clusterState, error) {
	st := &clusterState{spec: c}
	kubeconfigDir := r.run.Path("kubeconfig")
	logger := slog.New(slog.NewTextHandler(GinkgoWriter, nil))
	step := func(what string) func() {
		start := time.Now()
		r.logf("%s: %s ...", c.Name, what)
		return func() { r.logf("%s: %s done (%s)", c.Name, what, time.Since(start).Round(time.Second)) }
	}

	done := step("cluster")
	switch c.Provider {
	case scenario.ProviderKind:
		opts := []cluster.Option{cluster.WithReuse(c.Kind.Reuse), cluster.WithKubeconfigDir(kubeconfigDir), cluster.WithLogger(logger)}
		if c.Kind.NodeImage != "" {
			opts = append(opts, cluster.WithNodeImage(c.Kind.NodeImage))
		}
		switch {
		case c.Kind.ConfigFile != "":
			opts = append(opts, cluster.WithConfigFile(c.Kind.ConfigFile))
		case c.Kind.Config != "":
			opts = append(opts, cluster.WithConfig([]byte(c.Kind.Config)))
		}
		k, err := cluster.NewKind(c.Name, opts...)
		if err != nil {
			return nil, err
		}
		st.kind, st.provider = k, k
	case scenario.ProviderExisting:
		path, context := "", ""
		if c.Existing != nil {
			path, context = expandHome(c.Existing.Kubeconfig), c.Existing.Context
		}
		e, err := cluster.NewExisting(path, context, cluster.WithKubeconfigDir(kubeconfigDir), cluster.WithLogger(logger))
		if err != nil {
			return nil, err
		}
		st.provider = e
	}
	kubeconfig, err := st.provider.Create(ctx)
	if err != nil {
		return st, err
	}
	st.kubeconfig = kubeconfig
	if err := st.connect(); err != nil {
		return st, err
	}
	done()

	removed, err := deploy.Sweep(ctx, st.sweepTarget(), deploy.LeftoversSelector(r.run.ID))
	for _, o := range removed {
		r.logf("%s: removed a leftover of an earlier run: %s", c.Name, o)
	}
	if err != nil {
		return st, fmt.Errorf("removing leftovers of earlier runs: %w", err)
	}

	done = step("Istio " + c.Istio.Version)
	m, err := mesh.Install(ctx, st.kube, st.rest, c, r.logf)
	if m != nil {
		st.istio, st.mesh, st.installed = m.Istio, m, true
	}
	if err != nil {
		return st, err
	}
	if err := m.Ready(ctx); err != nil {
		return st, fmt.Errorf("waiting for Istio: %w", err)
	}
	done()

	done = step("echo image")
	img, err := image.Build(ctx, image.WithArch(runtime.GOARCH))
	if err != nil {
		return st, err
	}
	if st.kind != nil {
		if err := st.kind.LoadImageArchive(ctx, img.TarballPath); err != nil {
			return st, fmt.Errorf("loading %s into the kind nodes: %w", img.Ref, err)
		}
	} else {
		r.logf("%s: an existing cluster must be able to pull %s (push %s to a registry it reaches)", c.Name, img.Ref, img.TarballPath)
	}
	done()

	done = step("fixtures")
	objs, err := manifests.Render(plan.FixtureOptions(r.suite, c, r.run.ID, img.Ref))
	if err != nil {
		return st, err
	}
	if err := deploy.Fixtures(ctx, st.kube, objs); err != nil {
		return st, fmt.Errorf("deploying fixtures: %w", err)
	}
	done()
	return st, nil
}

func expandHome(p string) string {
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(p, "~/") {
		return filepath.Join(home, p[2:])
	}
	return p
}

// connect builds the clients of a cluster from its kubeconfig.
func (st *clusterState) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", st.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading kubeconfig %s: %w", st.kubeconfig, err)
	}
	// Continuous traffic looks up every client's ready pod each round;
	// client-go's default 5 requests/s would throttle the steps' own waits.
	cfg.QPS, cfg.Burst = 50, 100
	st.rest = cfg
	scheme, err := engine.NewScheme()
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
	st.execer, err = probe.NewKubeExecer(cfg)
	return err
}

func (r *e2eRunner) Connect(ctx context.Context, data []byte) error {
	var res setupResult
	if err := json.Unmarshal(data, &res); err != nil {
		return err
	}
	for name, kubeconfig := range res.Kubeconfigs {
		st := r.clusters[name]
		if st == nil { // another Ginkgo process ran the setup
			st = &clusterState{spec: r.suite.Cluster(name), kubeconfig: kubeconfig}
			if err := st.connect(); err != nil {
				return err
			}
			r.clusters[name] = st
		}
		opts := []engine.Option{engine.WithRecorder(r.run), engine.WithCertReader(probe.NewCertReader(st.execer)), engine.WithLogger(r.logf)}
		if st.mesh != nil { // the process that installed the mesh can upgrade and rotate it
			opts = append(opts, engine.WithMeshControl(st.mesh.Istio))
			if st.mesh.CA != nil {
				opts = append(opts, engine.WithPluggedCA(st.mesh.CA))
			}
		}
		e, err := engine.New(r.suite, name, st.kube, probe.NewProber(st.execer), res.RunID, opts...)
		if err != nil {
			return err
		}
		st.engine = e
	}
	return nil
}

func (r *e2eRunner) BeginScenario(ctx context.Context, sc *scenario.Scenario) error {
	return r.clusters[sc.Cluster].engine.RemovePolicies(ctx)
}

func (r *e2eRunner) RunStep(ctx context.Context, sc *scenario.Scenario, index int) error {
	return r.clusters[sc.Cluster].engine.RunStep(ctx, sc, index)
}

func (r *e2eRunner) EndScenario(ctx context.Context, sc *scenario.Scenario) error {
	if st := r.clusters[sc.Cluster]; st != nil && st.engine != nil {
		return st.engine.RemovePolicies(ctx)
	}
	return nil
}

func (r *e2eRunner) Diagnose(ctx context.Context, sc *scenario.Scenario, step string) error {
	dir := r.run.Path("diagnostics", "setup")
	clusters := r.clusters
	if sc != nil {
		dir = r.run.Path("diagnostics", ownership.LabelValue(sc.Name), ownership.LabelValue(step))
		clusters = map[string]*clusterState{sc.Cluster: r.clusters[sc.Cluster]}
	}
	var errs []error
	for name, st := range clusters {
		if st == nil || st.kube == nil {
			continue
		}
		opts := []diagnose.Option{diagnose.WithRunID(r.run.ID), diagnose.WithExecer(st.execer), diagnose.WithNamespaces(r.namespaces()...)}
		if st.kind != nil {
			opts = append(opts, diagnose.WithNodeLogs(func(dir string) error { return st.kind.ExportLogs(ctx, dir) }))
		}
		summary, err := diagnose.New(st.kube, st.clientset, opts...).Collect(ctx, filepath.Join(dir, name))
		r.logf("%s: diagnostics in %s: %s", name, filepath.Join(dir, name), summary)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// namespaces are the fixture namespaces and Istio's.
func (r *e2eRunner) namespaces() []string {
	seen := map[string]bool{scenario.IstioRootNamespace: true}
	out := []string{scenario.IstioRootNamespace}
	for _, w := range r.suite.Fixtures.Workloads {
		if !seen[w.Namespace] {
			seen[w.Namespace] = true
			out = append(out, w.Namespace)
		}
	}
	return out
}

// Teardown leaves nothing of the run behind, unless --keep: the run's
// objects are swept by label, Istio is uninstalled where this run installed
// it on a cluster that stays, and kind clusters this run created are
// deleted (reused and existing clusters stay).
func (r *e2eRunner) Teardown(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, r.run.Close()) }() // Close renders report.html
	if r.keep {
		for name, st := range r.clusters {
			r.logf("--keep: cluster %s left as it is; reach it with: kubectl --kubeconfig %s get pods -A", name, st.kubeconfig)
		}
		return nil
	}
	var errs []error
	for name, st := range r.clusters {
		if st.kube == nil {
			continue
		}
		if st.kind != nil && !st.kind.Reused() {
			r.logf("%s: deleting the kind cluster this run created", name)
			errs = append(errs, st.provider.Destroy(ctx))
			continue
		}
		removed, err := deploy.Sweep(ctx, st.sweepTarget(), deploy.RunSelector(r.run.ID))
		r.logf("%s: removed %d objects of this run", name, len(removed))
		errs = append(errs, err)
		if st.installed && st.spec.Provider == scenario.ProviderExisting {
			errs = append(errs, st.istio.Uninstall(ctx, true))
		}
		errs = append(errs, st.provider.Destroy(ctx)) // kind reused / existing: keeps the cluster
	}
	return errors.Join(errs...)
}
