// Package cluster runs a Kubernetes cluster of real parts as local
// processes, for rehearsing meshproof without Docker or kind: etcd and
// kube-apiserver (package controlplane), kube-controller-manager and kube-scheduler
// (real Deployments, ReplicaSets, scheduling, rollouts, namespace termination
// and garbage collection), and kwok, which plays the kubelet of fake nodes
// (pods become Running and Ready with pod IPs; no container runs). With
// WithIstiod, the real istiod runs beside them as a local process for each
// istiod Deployment Istio's charts install (see Istiod).
//
// Every part is built from source on first use and cached (package binaries),
// listens on 127.0.0.1 only, and ends with the program that started it (package
// proc). Cluster is an e2e-framework cluster provider, so the run library can
// use it like kind.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

var _ support.E2EClusterProvider = (*Cluster)(nil)

const (
	// FakeNodeAnnotation marks the nodes kwok manages.
	FakeNodeAnnotation = "kwok.x-k8s.io/node"
	// PodCIDR is where kwok hands out pod IPs.
	PodCIDR = "10.244.0.0/16"

	defaultStartTimeout = 3 * time.Minute
	// partStopTimeout bounds each part's stop after SIGTERM before SIGKILL.
	partStopTimeout = 15 * time.Second
)

// Cluster is a local cluster of real parts. Create starts it, Destroy stops it.
type Cluster struct {
	name         string
	nodes        int
	logger       *slog.Logger
	buildLog     io.Writer
	startTimeout time.Duration
	withIstiod   bool
	// echoBinaryPath is WithEchoBinary's.
	echoBinaryPath string

	dir       string
	env       *controlplane.Env
	stopPlane func() error
	// parts run in start order; Destroy stops them newest first.
	parts []*proc.Process
	// istiod supervises the istiod processes (nil without WithIstiod).
	istiod *Istiod
	// proxyless supervises proxyless gRPC pods (nil without WithIstiod).
	proxyless *Proxyless
	// slices writes the EndpointSlices (nil without WithIstiod).
	slices *sliceWriter
	// sidecars runs the Envoy sidecars' xDS clients (nil without
	// WithIstiod).
	sidecars *Sidecars
	// ambient plays ambient mode's node agents (nil without WithIstiod).
	ambient *Ambient
	// world caches the cluster's objects for the simulated data plane (nil
	// without WithIstiod).
	world *world

	mu sync.Mutex
	// images are the tags of the image archives loaded (LoadImageArchive).
	images []string
	// echoBinaries are the echo binaries extracted from them, by tag.
	echoBinaries map[string]string
}

// Option configures New.
type Option func(*Cluster)

// WithName names the cluster (as it appears in logs and the run folder).
func WithName(name string) Option { return func(c *Cluster) { c.name = name } }

// WithLogger sets where progress goes (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *Cluster) { c.logger = l } }

// WithBuildLog sets where the output of first-use builds goes (default os.Stderr).
func WithBuildLog(w io.Writer) Option { return func(c *Cluster) { c.buildLog = w } }

// WithIstiod also runs the real istiod (pilot-discovery) for every istiod
// Deployment installed in istio-system, the real pilot-agent and echo of
// every pod istiod injects with the grpc-agent template (proxyless gRPC),
// an xDS client in place of the Envoy of every pod injected with a sidecar,
// and the EndpointSlices of every Service: Create builds them on first use
// and starts their supervisors (see Istiod, Proxyless, Sidecars and
// endpointslices.go), Destroy stops them before any other part, the
// sidecars' clients and proxyless pods first. Install Istio's charts with
// Istiod().PostRenderer().
func WithIstiod() Option { return func(c *Cluster) { c.withIstiod = true } }

// WithEchoBinary is the echo binary proxyless pods (and out-of-mesh pods
// serving gRPC, which WorkloadEntries stand for) run when no image archive
// loaded (LoadImageArchive) is their app container's image (default: none;
// such a pod then does not start). Tests without image delivery use it.
func WithEchoBinary(path string) Option { return func(c *Cluster) { c.echoBinaryPath = path } }

// New returns a cluster that Create starts.
func New(opts ...Option) *Cluster {
	c := &Cluster{name: "meshproof-local", nodes: 1, logger: slog.Default(), buildLog: os.Stderr, startTimeout: defaultStartTimeout, echoBinaries: map[string]string{}}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// Create builds what is missing, starts etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kwok, registers the fake nodes
// and waits until they are Ready. It returns the kubeconfig's path. args must be
// empty. On failure nothing is left running.
func (c *Cluster) Create(ctx context.Context, args ...string) (_ string, err error) {
	if len(args) > 0 {
		return "", fmt.Errorf("local cluster: Create takes no arguments (got %q)", args)
	}
	if c.env != nil {
		return c.env.Kubeconfig, nil
	}
	bins, err := c.ensureBinaries(ctx)
	if err != nil {
		return "", err
	}
	start := time.Now()
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Destroy(context.Background()))
		}
	}()
	if c.dir, err = proc.TempDir("localcluster-"); err != nil {
		return "", err
	}
	c.logger.Info("starting kube-apiserver and etcd", "cluster", c.name)
	env, stopPlane, err := controlplane.StartEnv(ctx, controlplane.WithoutIstioCRDs(), controlplane.WithServiceAccountAdmission())
	if err != nil {
		return "", fmt.Errorf("local cluster %s: %w", c.name, err)
	}
	c.env, c.stopPlane = env, stopPlane
	kubeconfig := env.Kubeconfig
	clientFlags := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		// No serving port: nothing of theirs listens at all.
		"--secure-port=0",
	}
	c.logger.Info("starting kube-controller-manager, kube-scheduler and kwok", "cluster", c.name)
	controllers := "*"
	if c.withIstiod {
		// No EndpointSlice, EndpointSlice mirroring or Endpoints
		// controller: a proxyless pod's endpoint is the WorkloadEntry at its
		// loopback address (see Proxyless), and its kwok pod IP, which the
		// EndpointSlice controller would publish, reaches nothing, yet
		// istiod would hand it to grpc-go as a second endpoint. The local
		// cluster writes the EndpointSlices itself, without the proxyless
		// pods (endpointslices.go), so that istiod's EDS gives sidecars
		// their endpoints; nothing reads Endpoints.
		controllers = "*,-endpointslice-controller,-endpointslice-mirroring-controller,-endpoints-controller"
	}
	if err := c.startPart("kube-controller-manager", bins.controllerManager, append(clientFlags,
		"--controllers="+controllers,
		"--service-account-private-key-file="+env.ServiceAccountKeyFile,
		"--root-ca-file="+env.ServingCAFile,
		"--use-service-account-credentials=false",
	)); err != nil {
		return "", err
	}
	if err := c.startPart("kube-scheduler", bins.scheduler, clientFlags); err != nil {
		return "", err
	}
	stages := filepath.Join(c.dir, "kwok-stages.yaml")
	if err := writeStages(ctx, bins.kwokStages, stages); err != nil {
		return "", err
	}
	if c.withIstiod {
		if err := gateReadiness(stages, istiodGate, proxylessGate, ambientGate); err != nil {
			return "", err
		}
		if err := gateSidecars(stages); err != nil {
			return "", err
		}
		if err := delayInjectedDeletion(stages); err != nil {
			return "", err
		}
	}
	if err := c.startPart("kwok", bins.kwok, []string{
		"--kubeconfig=" + kubeconfig,
		"--config=" + stages,
		"--manage-nodes-with-annotation-selector=" + FakeNodeAnnotation + "=fake",
		"--cidr=" + PodCIDR,
		"--node-ip=127.0.0.1",
		// No kubelet API server: it would listen on every address.
		"--node-port=0",
		// Renew each node's Lease as a kubelet does: without it the node
		// lifecycle controller finds the node unhealthy after its grace
		// period (50s) and marks every pod on it not ready.
		"--node-lease-duration-seconds=40",
	}); err != nil {
		return "", err
	}
	if err := c.registerNodes(ctx); err != nil {
		return "", err
	}
	if err := c.WaitForControlPlane(ctx, nil); err != nil {
		return "", err
	}
	if c.withIstiod {
		if err := c.startIstiod(ctx, bins.pilotDiscovery); err != nil {
			return "", err
		}
		if err := c.startProxyless(ctx, bins.pilotAgent); err != nil {
			return "", err
		}
		if err := c.startSlices(ctx); err != nil {
			return "", err
		}
		if err := c.startSidecars(ctx); err != nil {
			return "", err
		}
		if err := c.startAmbient(ctx); err != nil {
			return "", err
		}
		if err := c.startWorld(ctx); err != nil {
			return "", err
		}
	}
	c.logger.Info("local cluster ready", "cluster", c.name, "kubernetes", env.ServerVersion.GitVersion, "nodes", c.nodes, "took", time.Since(start).Round(100*time.Millisecond))
	return kubeconfig, nil
}

type binaryPaths struct {
	controllerManager, scheduler, kwok, kwokStages string
	pilotDiscovery, pilotAgent                     string // "" without WithIstiod
}

// ensureBinaries builds what the cache lacks (minutes each on a cold
// machine), numbered and timed on the build log.
func (c *Cluster) ensureBinaries(ctx context.Context) (binaryPaths, error) {
	var paths binaryPaths
	tools := []binaries.Tool{binaries.KubeControllerManager, binaries.KubeScheduler, binaries.Kwok, binaries.KwokStages}
	into := []*string{&paths.controllerManager, &paths.scheduler, &paths.kwok, &paths.kwokStages}
	if c.withIstiod {
		tools = append(tools, binaries.PilotDiscovery, binaries.PilotAgent)
		into = append(into, &paths.pilotDiscovery, &paths.pilotAgent)
	}
	_, built, err := binaries.EnsureAll(ctx, c.buildLog, tools...)
	if err != nil {
		return binaryPaths{}, fmt.Errorf("local cluster: %w", err)
	}
	for i, p := range built {
		*into[i] = p
	}
	return paths, nil
}

// startPart starts one part with its output in <dir>/<name>.log.
func (c *Cluster) startPart(name, path string, args []string) error {
	logFile, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return err
	}
	p, err := proc.Start(name, path, args, proc.WithOutput(logFile), proc.WithStopTimeout(partStopTimeout))
	if err != nil {
		logFile.Close()
		return fmt.Errorf("local cluster %s: %w", c.name, err)
	}
	go func() { <-p.Done(); logFile.Close() }()
	c.parts = append(c.parts, p)
	return nil
}

// writeStages writes the kwok release's Stage objects for kwok's --config.
func writeStages(ctx context.Context, program, file string) error {
	out, err := exec.CommandContext(ctx, program).Output()
	if err != nil {
		return fmt.Errorf("local cluster: reading kwok's stages with %s: %w", program, err)
	}
	if !strings.Contains(string(out), "kind: Stage") {
		return fmt.Errorf("local cluster: %s printed no kwok Stage", program)
	}
	return os.WriteFile(file, out, 0o600)
}

// registerNodes creates the fake nodes: kwok manages nodes, it does not create
// them. Their status is set on create, as a kubelet registering would.
func (c *Cluster) registerNodes(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("32"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	for i := range c.nodes {
		name := fmt.Sprintf("%s-node-%d", c.name, i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{FakeNodeAnnotation: "fake"},
				Labels: map[string]string{
					"kubernetes.io/hostname": name,
					"kubernetes.io/os":       "linux",
					"kubernetes.io/arch":     "amd64",
					"type":                   "kwok",
				},
			},
			Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
		}
		if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("local cluster: registering node %s: %w", name, err)
		}
	}
	return nil
}

// WaitForControlPlane waits until every node is Ready and every part still
// runs. client is unused: the cluster has its own.
func (c *Cluster) WaitForControlPlane(ctx context.Context, _ klient.Client) error {
	if c.env == nil {
		return errors.New("local cluster: not created")
	}
	cs, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	var notReady []string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, c.startTimeout, true, func(ctx context.Context) (bool, error) {
		if err := c.partsRunning(); err != nil {
			return false, err
		}
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		notReady = notReady[:0]
		for _, n := range nodes.Items {
			if !nodeReady(&n) {
				notReady = append(notReady, n.Name)
			}
		}
		return len(nodes.Items) == c.nodes && len(notReady) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("local cluster %s: nodes not Ready within %s (not ready: %v): %w", c.name, c.startTimeout, notReady, err)
	}
	return nil
}

// partsRunning fails with a part's last output when it has exited.
func (c *Cluster) partsRunning() error {
	for _, p := range c.parts {
		if err := p.ExitError(); err != nil {
			return fmt.Errorf("%w; its last output:\n%s", err, p.Tail())
		}
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Destroy stops the proxyless pods' processes and istiod first (while the
// API server still answers them), then
// the parts in the reverse of their start order (kwok, kube-scheduler,
// kube-controller-manager), then kube-apiserver, then etcd, each escalated to
// SIGKILL after a bound, and removes the cluster's directory.
func (c *Cluster) Destroy(context.Context) error {
	var errs []error
	if c.world != nil {
		c.world.stop()
		c.world = nil
	}
	if c.ambient != nil {
		c.ambient.stop()
		c.ambient = nil
	}
	if c.sidecars != nil {
		c.sidecars.stop()
		c.sidecars = nil
	}
	if c.slices != nil {
		c.slices.stop()
		c.slices = nil
	}
	if c.proxyless != nil {
		errs = append(errs, c.proxyless.stop())
		c.proxyless = nil
	}
	if c.istiod != nil {
		errs = append(errs, c.istiod.stop())
		c.istiod = nil
	}
	for i := len(c.parts) - 1; i >= 0; i-- {
		errs = append(errs, c.parts[i].Stop())
	}
	c.parts = nil
	if c.stopPlane != nil {
		errs = append(errs, c.stopPlane())
		c.stopPlane = nil
	}
	c.env = nil
	if c.dir != "" {
		errs = append(errs, os.RemoveAll(c.dir))
		c.dir = ""
	}
	return errors.Join(errs...)
}

// Istiod is the istiod supervisor (nil without WithIstiod or before Create).
func (c *Cluster) Istiod() *Istiod { return c.istiod }

// startIstiod starts the istiod supervisor; istiod processes start once
// Istio's charts have made istiod pods.
func (c *Cluster) startIstiod(ctx context.Context, binary string) error {
	kube, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	s := newIstiod(binary, c.env.Kubeconfig, c.dir, kube, c.logger.With("cluster", c.name))
	// The supervisor lives as long as the cluster, not as Create's ctx.
	if err := s.run(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("local cluster %s: starting the istiod supervisor: %w", c.name, err)
	}
	c.istiod = s
	c.logger.Info("istiod supervisor watching istiod pods", "cluster", c.name, "namespace", IstioNamespace, "istio module", s.Module())
	return nil
}

// Proxyless is the proxyless gRPC pods' supervisor (nil without WithIstiod
// or before Create).
func (c *Cluster) Proxyless() *Proxyless { return c.proxyless }

// startSlices starts writing the EndpointSlices of every Service, without
// the pods whose WorkloadEntries stand for them.
func (c *Cluster) startSlices(ctx context.Context) error {
	kube, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	w := newSliceWriter(kube, servedByWorkloadEntry, c.logger.With("cluster", c.name))
	if err := w.start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("local cluster %s: starting the EndpointSlice writer: %w", c.name, err)
	}
	c.slices = w
	return nil
}

// Sidecars runs the xDS clients that stand in for the Envoy sidecars (nil
// without WithIstiod or before Create).
func (c *Cluster) Sidecars() *Sidecars { return c.sidecars }

// startSidecars starts the Envoy sidecars' xDS clients' supervisor.
func (c *Cluster) startSidecars(ctx context.Context) error {
	kube, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	s := newSidecars(c.istiod, kube, c.logger.With("cluster", c.name))
	if err := s.run(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("local cluster %s: starting the sidecars' xDS clients: %w", c.name, err)
	}
	c.sidecars = s
	return nil
}

// Ambient plays ambient mode's ztunnels and istio-cni's enrolment (nil
// without WithIstiod or before Create).
func (c *Cluster) Ambient() *Ambient { return c.ambient }

// startAmbient starts ambient mode's supervisor.
func (c *Cluster) startAmbient(ctx context.Context) error {
	kube, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	a := newAmbient(c.istiod, kube, c.logger.With("cluster", c.name))
	if err := a.run(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("local cluster %s: starting ambient mode's node agents: %w", c.name, err)
	}
	c.ambient = a
	return nil
}

// startProxyless starts the proxyless pods' supervisor.
func (c *Cluster) startProxyless(ctx context.Context, agentBinary string) error {
	kube, err := kubernetes.NewForConfig(c.env.Config)
	if err != nil {
		return err
	}
	s := newProxyless(agentBinary, c.dir, kube, c.env.Istio, c.istiod, c.echoBinary, c.logger.With("cluster", c.name))
	if err := s.run(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("local cluster %s: starting the proxyless supervisor: %w", c.name, err)
	}
	c.proxyless = s
	c.logger.Info("proxyless supervisor watching pods injected with grpc-agent", "cluster", c.name, "addresses", s.AddressPrefix()+"0/24")
	return nil
}

// Env is the running control plane with its clients (nil before Create).
func (c *Cluster) Env() *controlplane.Env { return c.env }

// Pids are the running parts' process ids by name, kube-apiserver and etcd
// included, and with WithIstiod each running istiod as istiod-<revision>
// and each proxyless pod's processes as pilot-agent-<namespace>-<pod> and
// echo-<namespace>-<pod>.
func (c *Cluster) Pids() map[string]int {
	pids := map[string]int{}
	if c.istiod != nil {
		maps.Copy(pids, c.istiod.pids())
	}
	if c.proxyless != nil {
		maps.Copy(pids, c.proxyless.pids())
	}
	for _, p := range c.parts {
		pids[p.Name()] = p.Pid()
	}
	if c.env != nil {
		etcd, apiServer := c.env.ProcessIDs()
		pids["etcd"], pids["kube-apiserver"] = etcd, apiServer
	}
	return pids
}

// ExportLogs copies every part's log into dest.
func (c *Cluster) ExportLogs(_ context.Context, dest string) error {
	if c.dir == "" {
		return errors.New("local cluster: not created")
	}
	logs, err := filepath.Glob(filepath.Join(c.dir, "*.log"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, log := range logs {
		data, err := os.ReadFile(log)
		if err == nil {
			err = os.WriteFile(filepath.Join(dest, filepath.Base(log)), data, 0o644)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// CreateWithConfig is Create; the local cluster has no configuration file.
func (c *Cluster) CreateWithConfig(ctx context.Context, configFile string) (string, error) {
	if configFile != "" {
		return "", fmt.Errorf("local cluster: a configuration file (%s) has no meaning here", configFile)
	}
	return c.Create(ctx)
}

// GetKubeconfig is the path of the cluster's kubeconfig ("" before Create).
func (c *Cluster) GetKubeconfig() string {
	if c.env == nil {
		return ""
	}
	return c.env.Kubeconfig
}

// GenerateKubeconfig returns the kubeconfig's path; args must be empty.
func (c *Cluster) GenerateKubeconfig(args ...string) (string, error) {
	if len(args) > 0 {
		return "", fmt.Errorf("local cluster: GenerateKubeconfig takes no arguments (got %q)", args)
	}
	if c.env == nil {
		return "", errors.New("local cluster: not created")
	}
	return c.env.Kubeconfig, nil
}

// GetKubectlContext is the kubeconfig's only context.
func (c *Cluster) GetKubectlContext() string { return controlplane.KubeconfigContext }

// KubernetesRestConfig is the admin REST config (nil before Create).
func (c *Cluster) KubernetesRestConfig() *rest.Config {
	if c.env == nil {
		return nil
	}
	return rest.CopyConfig(c.env.Config)
}

// SetDefaults has nothing to default: New does.
func (c *Cluster) SetDefaults() support.E2EClusterProvider { return c }

// WithName names the cluster.
func (c *Cluster) WithName(name string) support.E2EClusterProvider {
	c.name = name
	return c
}

// WithVersion has no effect: the parts are the pinned releases of package
// binaries (Kubernetes binaries.KubernetesVersion).
func (c *Cluster) WithVersion(string) support.E2EClusterProvider { return c }

// WithPath has no effect: the binaries come from package binaries.
func (c *Cluster) WithPath(string) support.E2EClusterProvider { return c }

// WithOpts applies e2e-framework cluster options.
func (c *Cluster) WithOpts(opts ...support.ClusterOpts) support.E2EClusterProvider {
	for _, o := range opts {
		o(c)
	}
	return c
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }
