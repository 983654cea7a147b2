// Package rehearsal runs meshproof's main job without Docker: the same run
// library as `meshproof run` and `make e2e` (harness/run), on local
// clusters of real parts (harness/internal/local/cluster: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kwok for nodes and a real
// istiod per Istio revision), with only the data plane simulated
// (harness/internal/local/dataplane).
//
// What is real: the cluster's API and controllers (Deployments, rollouts,
// namespace termination, garbage collection), Istio's charts installed
// with the Helm SDK, istiod's injection of every fixture pod, its
// validation of every policy meshproof applies, the Envoy configuration it
// computes and pushes for every sidecar (the local cluster runs an xDS
// client in each sidecar's place), and every workload certificate, issued
// by istiod's CA from the plugged root; proxyless gRPC pods run the real
// pilot-agent and grpc-go. What is simulated: the kubelet (kwok: pods
// become Running and Ready, no container runs) and Envoy itself, whose
// answers the simulated data plane decides by evaluating what Envoy does
// with the configuration istiod served (EnvoyLabel). A rehearsal therefore
// proves the harness and Istio's own decisions; only a run on real
// sidecars (make e2e) proves that Envoy's runtime applies them. Every
// report of a rehearsal says so (Label, EnvoyLabel).
package rehearsal

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"helm.sh/helm/v4/pkg/postrenderer"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/kube"
	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/wire"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Label is what every observation, verdict and report of a rehearsal says
// (results.Observation.DataPlane): the data plane is simulated, and which
// istiod build issued the identities and injected the sidecars. One istiod
// build serves every Istio version a file names: the charts of each
// version are installed as they are, but the control plane that reads them
// is always this one.
func Label() string {
	return dataplane.Label + "; istiod " + binaries.IstioVersion + " (one build for every Istio version the file names)"
}

// EnvoyLabel is what the observations of requests between pods with an
// Envoy sidecar or none say (results.Observation.DataPlane): no Envoy ran,
// but each request was decided by evaluating what Envoy does with the
// configuration the real istiod served the sidecars on its way (the local
// cluster's xDS client per sidecar, package envoy).
func EnvoyLabel() string {
	return "rehearsal: Envoy simulated on the configuration istiod " + binaries.IstioVersion + " served"
}

// AmbientLabel is what every probe result a simulated ztunnel decided says
// (a pair with an ambient side): ztunnel's decisions were taken, by this
// package's simulation, from the workloads and authorizations the real
// istiod served it; no HBONE or istio-cni redirection ran.
func AmbientLabel() string { return dataplane.AmbientLabel(binaries.IstioVersion) }

// Rehearsal makes runs into rehearsals: its RunOptions give a run local
// clusters, Istio installed on them with a real istiod serving it, and the
// simulated data plane as the pod transport.
type Rehearsal struct {
	logger *slog.Logger
	// witness captures on loopback around the real proxyless pods'
	// probes (proxylessRouter); it says once when it cannot.
	witness      *wire.Loopback
	buildLog     io.Writer
	borrowed     *cluster.Cluster
	readyTimeout time.Duration

	mu sync.Mutex
	// clusters are the rehearsal's local clusters by their API server's
	// address, which is what the run's seams are handed.
	clusters map[string]*cluster.Cluster
}

// Option configures a Rehearsal.
type Option func(*Rehearsal)

// WithLogger receives the local clusters' progress (default: none).
func WithLogger(l *slog.Logger) Option { return func(r *Rehearsal) { r.logger = l } }

// WithBuildLog receives the output of first-use builds of the clusters'
// binaries (default os.Stderr).
func WithBuildLog(w io.Writer) Option { return func(r *Rehearsal) { r.buildLog = w } }

// WithCluster runs every run on c, a local cluster the caller created
// (NewCluster, e.g. through an e2e-framework environment), instead of a new
// local cluster per run; the runs leave it running, as they leave an
// existing cluster, and remove from it only what their ledgers list.
// Successive runs on one cluster show what a rerun meets: the earlier
// run's namespaces still terminating, its Lease. The file must use one
// cluster.
func WithCluster(c *Cluster) Option { return func(r *Rehearsal) { r.borrowed = c.local } }

// WithIstioReadyTimeout bounds the wait for istiod to serve and inject
// after Istio is installed (default: the installer's).
func WithIstioReadyTimeout(d time.Duration) Option {
	return func(r *Rehearsal) { r.readyTimeout = d }
}

// New returns a Rehearsal.
func New(opts ...Option) *Rehearsal {
	r := &Rehearsal{logger: slog.New(slog.DiscardHandler), buildLog: os.Stderr, clusters: map[string]*cluster.Cluster{}}
	for _, o := range opts {
		o(r)
	}
	r.witness = wire.NewLoopback(wire.WithLogger(r.logger))
	return r
}

// RunOptions are the run options of a rehearsal. Give them to run.New after
// the caller's own, so that they win.
func (r *Rehearsal) RunOptions() []run.Option {
	return []run.Option{
		run.WithProviders(r.provider),
		run.WithHelmPostRenderer(r.postRenderer),
		run.WithIstioReadyTimeout(r.readyTimeout),
		run.WithTransport(r.transport),
		run.WithDataPlane(Label()),
		run.WithTransportWitness(),
	}
}

// Refuse says why a file cannot be rehearsed, before anything starts: a
// rehearsal installs Istio itself on a new cluster, so there is no Istio
// of the user's to use; and no Envoy runs, so a sidecar's gRPC port cannot
// answer proxyless clients.
func Refuse(suite *scenario.Suite) error {
	var errs []error
	for i := range suite.Clusters {
		c := &suite.Clusters[i]
		if c.Istio.Mode == scenario.IstioUseExisting {
			errs = append(errs, fmt.Errorf("%s: cluster %s: istio.mode use-existing cannot be rehearsed: a rehearsal installs Istio %s itself on a local cluster (use mode install, or run it with meshproof run)",
				c.Source.Position, c.Name, c.Istio.Version))
		}
	}
	// A proxyless client's gRPC goes through istiod to the server's own
	// address: a sidecar server's is a pod IP nothing listens on here
	// (the simulated sidecar answers exec'd commands, not connections).
	proxyless := ""
	for _, w := range suite.Fixtures.Workloads {
		if w.Proxyless {
			proxyless = w.Name
			break
		}
	}
	for i := range suite.Fixtures.Workloads {
		w := &suite.Fixtures.Workloads[i]
		if proxyless == "" || w.Proxyless || !w.InMesh() {
			continue
		}
		for _, p := range w.Ports {
			if p.Protocol == scenario.ProtocolGRPC {
				behind, what := "a sidecar", "Envoy"
				if w.Ambient() {
					behind, what = "ztunnel (ambient)", "pod network"
				}
				errs = append(errs, fmt.Errorf("%s: port %s (%d) of workload %s is gRPC behind %s, and proxyless workloads (%s) would call it: a rehearsal has no %s to answer a proxyless client's gRPC (make e2e has); give the gRPC port to a proxyless or out-of-mesh workload, or rehearse without the proxyless workloads",
					p.Source.Position, p.Name, p.Number, w.Name, behind, proxyless, what))
			}
		}
	}
	return errors.Join(errs...)
}

// provider gives every scenario cluster a local cluster, whatever its
// provider says (kind or existing): the rehearsal never touches a real
// cluster.
func (r *Rehearsal) provider(c *scenario.Cluster, _ string, logger *slog.Logger) (support.E2EClusterProvider, error) {
	if c.Istio.Mode == scenario.IstioUseExisting {
		return nil, Refuse(&scenario.Suite{Clusters: []scenario.Cluster{*c}})
	}
	if r.borrowed != nil {
		return borrowedCluster{Cluster: r.borrowed, register: r.register}, nil
	}
	logger.Info("rehearsal: a local cluster stands in for the file's cluster", "provider", c.Provider)
	return &ownCluster{
		// The rehearsal's logger: the cluster's own lines name the cluster.
		Cluster:  cluster.New(cluster.WithName(c.Name), cluster.WithIstiod(), cluster.WithLogger(r.logger), cluster.WithBuildLog(r.buildLog)),
		register: r.register,
	}, nil
}

// register remembers a created local cluster by its API server's address.
func (r *Rehearsal) register(lc *cluster.Cluster) {
	cfg := lc.KubernetesRestConfig()
	if cfg == nil {
		return
	}
	r.mu.Lock()
	r.clusters[cfg.Host] = lc
	r.mu.Unlock()
}

// cluster is the local cluster whose API server cfg addresses.
func (r *Rehearsal) localCluster(cfg *rest.Config) (*cluster.Cluster, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lc := r.clusters[cfg.Host]
	if lc == nil {
		return nil, fmt.Errorf("rehearsal: %s is none of the rehearsal's local clusters", cfg.Host)
	}
	if lc.Istiod() == nil {
		return nil, fmt.Errorf("rehearsal: local cluster %s runs no istiod (create it with cluster.WithIstiod)", lc.Name())
	}
	return lc, nil
}

// ownCluster is a local cluster a run creates and destroys.
type ownCluster struct {
	*cluster.Cluster
	register func(*cluster.Cluster)
}

// Ephemeral: Destroy stops every process of the local cluster, which takes
// all of the run's objects with it, so the run does not sweep them first.
func (c *ownCluster) Ephemeral() bool { return true }

// Remains: the local cluster's processes end with meshproof's.
func (c *ownCluster) Remains() string {
	return fmt.Sprintf("local cluster %s: its processes end with meshproof's; nothing else is left", c.Name())
}

func (c *ownCluster) Create(ctx context.Context, args ...string) (string, error) {
	kubeconfig, err := c.Cluster.Create(ctx, args...)
	if err == nil {
		c.register(c.Cluster)
	}
	return kubeconfig, err
}

// borrowedCluster is a local cluster the caller runs: a run uses it and
// leaves it running.
type borrowedCluster struct {
	*cluster.Cluster
	register func(*cluster.Cluster)
}

func (c borrowedCluster) Create(context.Context, ...string) (string, error) {
	kubeconfig := c.GetKubeconfig()
	if kubeconfig == "" {
		return "", errors.New("rehearsal: the local cluster given WithCluster is not created")
	}
	c.register(c.Cluster)
	return kubeconfig, nil
}

func (borrowedCluster) Destroy(context.Context) error { return nil }

// postRenderer points the charts' webhooks at the local istiod's address
// instead of its Service (the API server must not look istiod's Service
// name up in the machine's DNS).
func (r *Rehearsal) postRenderer(cfg *rest.Config) (postrenderer.PostRenderer, error) {
	lc, err := r.localCluster(cfg)
	if err != nil {
		return nil, err
	}
	return lc.Istiod().PostRenderer(), nil
}

// transport is the simulated data plane, with every sidecar's certificates
// from the istiod of the revision that injected it, behind a router that
// gives the local cluster's real proxyless gRPC pods what they can answer
// (proxylessRouter).
func (r *Rehearsal) transport(cfg *rest.Config) (probe.Execer, error) {
	lc, err := r.localCluster(cfg)
	if err != nil {
		return nil, err
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return nil, err
	}
	kube, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("rehearsal: a client for cluster %s: %w", lc.Name(), err)
	}
	certs := &revisionCA{kube: kube, istiod: lc.Istiod(), byAddr: map[string]*istiodClient{}}
	opts := []dataplane.Option{dataplane.WithLogger(r.logger.With("cluster", lc.Name()))}
	if w := lc.World(); w != nil {
		opts = append(opts, dataplane.WithWorld(w))
	}
	if lc.Ambient() != nil {
		opts = append(opts, dataplane.WithZtunnels(lc.Ambient(), certs))
	}
	if lc.Sidecars() != nil {
		opts = append(opts, dataplane.WithSidecars(lc.Sidecars(), EnvoyLabel()))
	}
	simulated := dataplane.New(kube, certs, opts...)
	if lc.Sidecars() != nil {
		// A sidecar pod turns Ready once its simulated istio-agent holds
		// certificates from istiod, as a real one's readiness waits for
		// Envoy's SDS secrets.
		lc.Sidecars().CertifyWith(simulated.IssueSidecarCertificates)
	}
	if lc.Proxyless() == nil {
		return withPorts{unwitnessed{simulated}, simulated}, nil
	}
	return withPorts{unwitnessed{&proxylessRouter{simulated: simulated, local: lc.Proxyless(), kube: kube, witness: r.witness}}, simulated}, nil
}

// withPorts is the rehearsal's transport with the simulated ztunnels'
// ports (their metrics and config dump) reachable as a port-forward would
// reach a real ztunnel's.
type withPorts struct {
	probe.Execer
	ports probe.PodPortGetter
}

func (w withPorts) GetPodPort(ctx context.Context, pod results.Pod, port int, path string) ([]byte, error) {
	return w.ports.GetPodPort(ctx, pod, port, path)
}

var _ probe.PodPortGetter = withPorts{}

// revisionCA issues a simulated sidecar's certificates as its istio-agent
// would get them: from the istiod of the revision that injected the pod,
// verified against the root the pod's namespace was given (the
// istio-ca-root-cert ConfigMap, which istiod keeps current, also across a
// root rotation).
type revisionCA struct {
	kube   client.Client
	istiod *cluster.Istiod

	mu     sync.Mutex
	byAddr map[string]*istiodClient
}

// istiodClient is a connection to one istiod and the roots it trusts.
type istiodClient struct {
	roots string
	ca    *dataplane.IstiodCA
}

var _ dataplane.CertSource = (*revisionCA)(nil)

// rootCertConfigMap is the ConfigMap istiod writes the mesh's roots into
// in every namespace, as pods mount it.
const rootCertConfigMap = "istio-ca-root-cert"

func (c *revisionCA) Issue(ctx context.Context, pod *corev1.Pod, ttl time.Duration) (*dataplane.Certs, error) {
	rev := injectedRevision(pod)
	addr, err := c.istiod.CAAddress(rev)
	if err != nil {
		return nil, fmt.Errorf("the istiod of revision %s that injected %s/%s: %w", rev, pod.Namespace, pod.Name, err)
	}
	var roots corev1.ConfigMap
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: rootCertConfigMap}, &roots); err != nil {
		return nil, fmt.Errorf("the mesh's roots for %s/%s (ConfigMap %s): %w", pod.Namespace, pod.Name, rootCertConfigMap, err)
	}
	pemRoots := roots.Data["root-cert.pem"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemRoots)) {
		return nil, fmt.Errorf("ConfigMap %s/%s holds no root certificate", pod.Namespace, rootCertConfigMap)
	}
	ca, err := c.client(addr, pemRoots, pool)
	if err != nil {
		return nil, err
	}
	return ca.Issue(ctx, pod, ttl)
}

// IssueFor issues a ztunnel's certificate for a workload of its node as
// ztunnel asks it: from the istiod of the default revision (the ztunnel
// chart's CA_ADDRESS), verified against the roots istiod gave ztunnel's
// namespace, with the ztunnel pod's token impersonating the workload.
func (c *revisionCA) IssueFor(ctx context.Context, ztunnelPod, workload *corev1.Pod, ttl time.Duration) (*dataplane.Certs, error) {
	addr, err := c.istiod.CAAddress("")
	if err != nil {
		return nil, fmt.Errorf("the istiod ztunnel asks for certificates: %w", err)
	}
	var roots corev1.ConfigMap
	if err := c.kube.Get(ctx, client.ObjectKey{Namespace: ztunnelPod.Namespace, Name: rootCertConfigMap}, &roots); err != nil {
		return nil, fmt.Errorf("the mesh's roots for ztunnel %s/%s (ConfigMap %s): %w", ztunnelPod.Namespace, ztunnelPod.Name, rootCertConfigMap, err)
	}
	pemRoots := roots.Data["root-cert.pem"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(pemRoots)) {
		return nil, fmt.Errorf("ConfigMap %s/%s holds no root certificate", ztunnelPod.Namespace, rootCertConfigMap)
	}
	ca, err := c.client(addr, pemRoots, pool)
	if err != nil {
		return nil, err
	}
	return ca.IssueFor(ctx, ztunnelPod, workload, ttl)
}

// client is the connection to the istiod at addr trusting roots; one made
// with other roots (before a root rotation) is closed.
func (c *revisionCA) client(addr, roots string, pool *x509.CertPool) (*dataplane.IstiodCA, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.byAddr[addr]; cl != nil {
		if cl.roots == roots {
			return cl.ca, nil
		}
		_ = cl.ca.Close()
		delete(c.byAddr, addr)
	}
	ca, err := dataplane.NewIstiodCA(c.kube, addr, pool)
	if err != nil {
		return nil, err
	}
	c.byAddr[addr] = &istiodClient{roots: roots, ca: ca}
	return ca, nil
}

// injectedRevision is the revision the injector recorded in the pod's
// sidecar.istio.io/status annotation ("default" when it names none).
func injectedRevision(pod *corev1.Pod) string {
	var status struct {
		Revision string `json:"revision"`
	}
	if s := pod.Annotations["sidecar.istio.io/status"]; s != "" && json.Unmarshal([]byte(s), &status) == nil && status.Revision != "" {
		return status.Revision
	}
	if rev := pod.Labels["istio.io/rev"]; rev != "" {
		return rev
	}
	return "default"
}
