// Package dataplane is a simulated Istio data plane at the harness's pod
// transport seam (probe.Execer), for rehearsals on a cluster without a
// kubelet or Envoy. It answers exactly the commands the harness runs in
// pods, in the wire formats of the real programs: `echo probe`,
// `echo peercert` and the sidecar's `pilot-agent request GET config_dump`
// and `... GET stats/prometheus`.
//
// Every answer is decided from the cluster as it is at the time of the
// exec, never from a scenario file. With WithSidecars (a rehearsal), a
// request between pods with an Envoy sidecar or none is decided by
// evaluating what Envoy does with the configuration the real istiod served
// each sidecar on its way (envoy.go; packages envoy and xds): the
// listeners, filter chains, routes, clusters, endpoints and transport
// sockets istiod computed, the certificates each sidecar holds; the
// answer says which configuration decided it. Otherwise, and for a pair
// with a proxyless end, the stored policies (PeerAuthentications,
// DestinationRules, which pods really got a sidecar, their ServiceAccounts)
// are converted to the oracle's inputs and the oracle (harness/oracle)
// applies Istio's rules. Identities come from the certificates each
// simulated sidecar holds, which a CertSource issues (IstiodCA asks a real
// istiod) with the TTL the pod's SECRET_TTL asks and renews at
// SECRET_GRACE_PERIOD_RATIO as istio-agent does.
//
// gRPC calls (grpc://) towards sidecar and proxyless servers are answered
// the same way, the proxyless ones by the oracle's proxyless rules; what
// only a proxyless pod's grpc-go and pilot-agent can show (xds:/// calls,
// any gRPC call from a proxyless pod) is refused, never pretended
// (grpcanswers.go).
//
// What it cannot show: Envoy's runtime (the handshake on the wire,
// timeouts, retries, how long a push takes to apply). A rehearsal proves
// the harness, the policies as Istio stores, validates and compiles them
// and the identities istiod issues; only a run with real sidecars proves
// Envoy applies its configuration as documented. Reports of a rehearsal
// must say Label (or the label given to WithSidecars).
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/kube"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// Label is what every report of a run on this data plane must say.
const Label = "rehearsal: data plane simulated"

// simulatedNote starts the stderr of every answered command, so an exec
// error quoting stderr says where the answer came from.
const simulatedNote = "meshproof: " + Label + "\n"

// Execer answers the harness's in-pod commands from the stored objects. It
// implements probe.Execer and is safe for concurrent use.
type Execer struct {
	// kube reads what must be current (the pod a command runs in); world
	// reads what a request is decided from (kube unless WithWorld).
	kube        client.Reader
	world       client.Reader
	certs       CertSource
	trustDomain string
	rootNS      string
	now         func() time.Time
	log         *slog.Logger

	// envoys, when set, stand in for the Envoy sidecars: requests are
	// decided from the configuration istiod served them (envoy.go), and
	// their observations say envoyLabel.
	envoys     SidecarSource
	envoyLabel string

	mu       sync.Mutex
	sidecars map[types.UID]*sidecar
	// tcpCounts are the inbound TCP connections each simulated sidecar
	// counted, by peer (tcpanswers.go).
	tcpCounts map[types.UID]map[tcpPeer]uint64

	// ztunnels decide ambient pairs (ambient.go); ztunnelHeld are the
	// certificates each ztunnel holds, by ztunnel pod and identity.
	ztunnels     ZtunnelNodes
	ztunnelCerts ZtunnelCertSource
	ztunnelHeld  map[ztunnelCertKey]*workloadCerts
}

var _ probe.Execer = (*Execer)(nil)

// Option configures an Execer.
type Option func(*Execer)

// WithClock sets the clock certificate renewal is judged by.
func WithClock(now func() time.Time) Option { return func(e *Execer) { e.now = now } }

// WithWorld reads the cluster-wide state each request is decided from
// (pods, Services, WorkloadEntries, policies) through r, typically an
// informer cache, instead of listing it from the API server per request.
func WithWorld(r client.Reader) Option { return func(e *Execer) { e.world = r } }

// WithLogger sets the logger renewals and failed issuances are logged to.
func WithLogger(l *slog.Logger) Option { return func(e *Execer) { e.log = l } }

// New returns an Execer reading the cluster through kube and getting each
// simulated sidecar's certificates from certs.
func New(kube client.Reader, certs CertSource, opts ...Option) *Execer {
	e := &Execer{
		kube:     kube,
		certs:    certs,
		rootNS:   "istio-system",
		now:      time.Now,
		log:      slog.New(slog.DiscardHandler),
		sidecars: map[types.UID]*sidecar{},

		ztunnelHeld: map[ztunnelCertKey]*workloadCerts{},
	}
	for _, o := range opts {
		o(e)
	}
	if e.world == nil {
		e.world = kube
	}
	return e
}

// newClient is a client for the cluster knowing Istio's policy types.
func newClient(cfg *rest.Config) (client.Client, error) {
	scheme, err := kube.NewScheme()
	if err != nil {
		return nil, err
	}
	kube, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("simulated data plane: a client for the cluster: %w", err)
	}
	return kube, nil
}

// errUnknownCommand is returned for every command the real programs would
// run but this simulation does not answer: it never pretends.
var errUnknownCommand = errors.New("the simulated data plane does not answer this command")

// Exec runs cmd against the simulation. Errors are *probe.ExecError; a
// command the real program would refuse exits non-zero, as it would.
func (e *Execer) Exec(ctx context.Context, cmd probe.Command) (stdout, stderr []byte, err error) {
	stdout, err = e.exec(ctx, cmd)
	stderr = []byte(simulatedNote)
	if err != nil {
		return stdout, stderr, &probe.ExecError{Command: cmd, Stderr: strings.TrimSpace(string(stderr)), Err: err}
	}
	return stdout, stderr, nil
}

func (e *Execer) exec(ctx context.Context, cmd probe.Command) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(cmd.Argv) == 0 {
		return nil, errors.New("empty command")
	}
	pod, err := e.pod(ctx, cmd.Pod)
	if err != nil {
		return nil, err
	}
	if err := execable(pod, cmd.Container); err != nil {
		return nil, err
	}
	if cmd.Container == injection.ContainerName && proxyless(pod) {
		// pilot-agent's request command asks Envoy's admin port, and a
		// proxyless pod runs no Envoy.
		return nil, errProxylessNotSimulated
	}
	argv := cmd.Argv
	switch {
	case cmd.Container == manifests.ContainerName && argv[0] == image.BinaryPath && len(argv) == 2 && argv[1] == "probe":
		return e.probe(ctx, pod, cmd.Stdin)
	case cmd.Container == manifests.ContainerName && argv[0] == image.BinaryPath && len(argv) >= 2 && argv[1] == "peercert":
		return e.peercert(ctx, argv[2:])
	case cmd.Container == injection.ContainerName && len(argv) == 4 && argv[0] == "pilot-agent" && argv[1] == "request" && argv[2] == "GET" &&
		(argv[3] == "config_dump" || argv[3] == "config_dump?mask=dynamic_active_secrets"):
		return e.configDump(ctx, pod, argv[3] == "config_dump")
	case cmd.Container == injection.ContainerName && len(argv) == 4 && argv[0] == "pilot-agent" && argv[1] == "request" && argv[2] == "GET" &&
		argv[3] == probe.StatsPath:
		return e.stats(pod), nil
	}
	return nil, errUnknownCommand
}

// pod reads the pod a command runs in, which must be running, as the API
// server's exec requires.
func (e *Execer) pod(ctx context.Context, ref results.Pod) (*corev1.Pod, error) {
	var pod corev1.Pod
	if err := e.kube.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &pod); err != nil {
		return nil, fmt.Errorf("reading the pod: %w", err)
	}
	if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
		return nil, fmt.Errorf("pod %s/%s is %s, not running: no exec", pod.Namespace, pod.Name, pod.Status.Phase)
	}
	return &pod, nil
}

// execable is the API server's check that the container exists.
func execable(pod *corev1.Pod, container string) error {
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			return nil
		}
	}
	if container == injection.ContainerName && injection.Proxy(pod) != nil {
		return nil // a native sidecar: an init container that keeps running
	}
	return fmt.Errorf("container %s is not valid for pod %s", container, pod.Name)
}
