package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	networkingapi "istio.io/api/networking/v1"
	istionetworking "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

const (
	// GRPCAgentTemplate is Istio's injection template for proxyless gRPC
	// (pilot-agent without Envoy, grpc-go's xDS bootstrap for the app).
	GRPCAgentTemplate = "grpc-agent"
	// injectTemplatesAnnotation asks Istio's injector for templates; kwok's
	// readiness of a pod asking for grpc-agent waits for the supervisor
	// (see gateReadiness).
	injectTemplatesAnnotation = "inject.istio.io/templates"
	// injectionStatusAnnotation is where the injector records what it did
	// (its templates and revision).
	injectionStatusAnnotation = "sidecar.istio.io/status"

	// proxylessStopTimeout bounds each process's stop after SIGTERM.
	proxylessStopTimeout = 10 * time.Second
	// proxylessStartTimeout bounds a pod's start: its namespace's root
	// certificate, pilot-agent's bootstrap and certificates, and the echo
	// serving with istiod's listeners.
	proxylessStartTimeout = 2 * time.Minute
	// rootCertConfigMap is the ConfigMap istiod writes the mesh's roots
	// into in every namespace, which the grpc-agent template mounts.
	rootCertConfigMap = "istio-ca-root-cert"
	// istioTokenTTL is the projected istio-token's lifetime the grpc-agent
	// template asks (expirationSeconds 43200), when the pod names none.
	istioTokenTTL = 43200
)

// Proxyless plays the kubelet of the pods Istio's real injector gave the
// grpc-agent template (proxyless gRPC), for real: for each such pod
// scheduled to a kwok node it runs the real pilot-agent (binary built from
// the istio.io/istio module of binaries.IstioVersion) configured from the
// pod's injected istio-proxy container, and the pod's app container, the
// echo binary of the image the run loaded (LoadImageArchive), serving gRPC
// with grpc-go's xDS server on pilot-agent's bootstrap. kwok turns such a pod
// Ready only once its echo serves with the listeners istiod sent (see
// gateReadiness), so a Deployment of them is Available when its servers
// serve, as the app's readiness probe would make it on a real node.
//
// No container network exists here, so each pod gets its own loopback
// address in a /24 of 127.0.0.0/8 chosen at random per cluster (two
// clusters on one machine do not share a server's port): pilot-agent's
// INSTANCE_IP and the echo's --host. Istio learns that address from a
// WorkloadEntry (name and namespace of the pod, its labels and
// ServiceAccount, owned by the pod), which the pod's Services select as
// they select pods; the API server refuses loopback addresses in
// EndpointSlices, and the local cluster runs no EndpointSlice controller,
// so the pod's own (kwok) IP is never an endpoint istiod hands grpc-go.
//
// It also runs the echo of every out-of-mesh pod (no sidecar, not injected)
// that serves gRPC, as a plain gRPC server at its own address with a
// WorkloadEntry, so that proxyless clients, whose gRPC calls only real
// processes answer, reach a real server there too. kwok does not wait for
// those (the app's readiness is not gated), and nothing else of such a pod
// runs.
//
// A command exec'd into a proxyless pod runs in the pod's directory with
// the app container's environment, so an `echo probe` there is an xDS
// client of the pod's one pilot-agent, as in a real pod. meshproof execs
// probes only into proxyless client pods (`echo idle`, see
// manifests.ProxylessClientSuffix), never beside a serving echo: the
// agent's xDS proxy serves one stream at a time and closes the older when
// another connects (Istio's pkg/istio-agent/xds_proxy.go registerStream).
// A client pod (its app runs `echo idle`) is Ready once its agent has
// written the bootstrap and certificates.
//
// What differs from a pod: one process per container, no restart of a
// container that exits (it is logged and the pod stays as it is), the
// istio-token is requested once for the pod's lifetime (12 h, bound to the
// pod) and the root certificate is copied once from the namespace's
// ConfigMap (a kubelet keeps both current). pilot-agent's status server
// does not run: it would listen on every address of the machine, as
// pilot-agent has no setting for its address
// (pilot/cmd/pilot-agent/status/server.go: net.Listen("tcp", ":<port>")),
// and statusPort cannot be 0 (pkg/config/validation/agent/validation.go
// wants 1..65535). So the supervisor holds statusPort on 127.0.0.1 for the
// pod's life: pilot-agent's wildcard listen then fails (EADDRINUSE), which
// it logs ("Error listening on status port") and runs on without, and it
// listens on no TCP port at all (its xDS proxy and SDS are Unix sockets in
// the pod's directory). Nothing here probes the status server.
type Proxyless struct {
	agentBinary string
	dir         string
	kube        kubernetes.Interface
	istio       istioclient.Interface
	istiod      *Istiod
	echoBinary  func(ref string) (string, error)
	logger      *slog.Logger
	// prefix is the cluster's /24 of 127.0.0.0/8, "127.a.b.".
	prefix string

	watch podWatch
	// starts tracks the start goroutines, which stop waits for.
	starts sync.WaitGroup

	mu   sync.Mutex
	pods map[types.UID]*proxylessPod
	// hosts are the last octets in use.
	hosts map[int]bool
	// started counts the pods started, naming their directories.
	started int
}

// proxylessPod is one pod the supervisor runs.
type proxylessPod struct {
	uid             types.UID
	namespace, name string
	// labels are the pod's, which its WorkloadEntry carries.
	labels map[string]string
	addr   string
	dir    string
	// app is the container the echo plays.
	app string
	// plain is an out-of-mesh pod's plain gRPC server (see
	// plainGRPCServer): its echo runs without pilot-agent.
	plain bool

	cancel context.CancelFunc
	// stopped is set, under Proxyless.mu, once stopPod has begun: a
	// process started after it is stopped at once.
	stopped bool
	// Set by the start goroutine, under Proxyless.mu.
	processes []*proc.Process
	// statusHolds hold the agents' statusPorts on 127.0.0.1 (see Proxyless).
	statusHolds []net.Listener
	echoPath    string
	// execEnv and execDir are an exec'd command's environment (the app
	// container's, with the pod's agent's bootstrap) and working directory.
	execEnv []string
	execDir string
	serving bool
	err     error
}

func newProxyless(agentBinary, dir string, kube kubernetes.Interface, istio istioclient.Interface, istiod *Istiod, echoBinary func(string) (string, error), logger *slog.Logger) *Proxyless {
	return &Proxyless{
		agentBinary: agentBinary,
		dir:         dir,
		kube:        kube,
		istio:       istio,
		istiod:      istiod,
		echoBinary:  echoBinary,
		logger:      logger,
		prefix:      fmt.Sprintf("127.%d.%d.", 2+rand.IntN(250), 1+rand.IntN(250)),
		pods:        map[types.UID]*proxylessPod{},
		hosts:       map[int]bool{},
	}
}

// AddressPrefix is the cluster's /24 of 127.0.0.0/8 ("127.a.b.") from which
// each proxyless pod gets its address.
func (p *Proxyless) AddressPrefix() string { return p.prefix }

// run starts watching pods; stop ends it.
func (p *Proxyless) run(ctx context.Context) error {
	return p.watch.start(ctx, p.kube, p.reconcile)
}

// stop ends the watch, then every pod's processes. Their WorkloadEntries
// are left: the cluster goes with them.
func (p *Proxyless) stop() error {
	p.watch.stop()
	p.mu.Lock()
	pods := slices.Collect(maps.Values(p.pods))
	p.mu.Unlock()
	var errs []error
	for _, pp := range pods {
		errs = append(errs, p.stopPod(pp, "the cluster is being destroyed", false))
	}
	p.starts.Wait()
	return errors.Join(errs...)
}

// proxylessTemplate reports whether Istio's injector gave pod the
// grpc-agent template: its status annotation says it injected the pod, with
// the templates the pod asked for (Istio 1.30's status names no templates;
// where it does, they must include grpc-agent).
func proxylessTemplate(pod *corev1.Pod) bool {
	var status struct {
		Templates []string `json:"templates"`
	}
	s := pod.Annotations[injectionStatusAnnotation]
	if s == "" || json.Unmarshal([]byte(s), &status) != nil {
		return false
	}
	if len(status.Templates) > 0 {
		return slices.Contains(status.Templates, GRPCAgentTemplate)
	}
	return asksProxyless(pod)
}

// asksProxyless reports whether pod asks for the grpc-agent template, which
// makes kwok wait for proxylessServingAnnotation before it turns Ready.
func asksProxyless(pod *corev1.Pod) bool {
	return slices.Contains(strings.Split(pod.Annotations[injectTemplatesAnnotation], ","), GRPCAgentTemplate)
}

// reconcile makes the processes match the pods: every pod injected with
// grpc-agent, scheduled to a node, Pending or Running and not being deleted
// runs; any other stops. A pod that asks for grpc-agent but was not injected
// (its namespace has no injection) runs nothing here, as a kubelet would run
// its app without an agent; it is marked serving at once, so kwok makes it
// Ready, and the simulated data plane answers for it.
func (p *Proxyless) reconcile(ctx context.Context, lister listersv1.PodLister) {
	all, err := lister.List(labels.Everything())
	if err != nil {
		p.logger.Error("proxyless supervisor: listing pods", "error", err)
		return
	}
	want := map[types.UID]*corev1.Pod{}
	for _, pod := range all {
		if pod.DeletionTimestamp != nil || pod.Spec.NodeName == "" ||
			(pod.Status.Phase != corev1.PodPending && pod.Status.Phase != corev1.PodRunning) {
			continue
		}
		switch {
		case proxylessTemplate(pod), plainGRPCServer(pod):
			want[pod.UID] = pod
		case asksProxyless(pod) && pod.Annotations[proxylessServingAnnotation] != "true":
			p.markServing(ctx, pod.Namespace, pod.Name, "not injected: its app runs without pilot-agent, simulated")
		}
	}
	p.mu.Lock()
	var gone []*proxylessPod
	for uid, pp := range p.pods {
		if want[uid] == nil {
			gone = append(gone, pp)
		}
	}
	p.mu.Unlock()
	for _, pp := range gone {
		if err := p.stopPod(pp, "the pod is gone", true); err != nil {
			p.logger.Error("proxyless supervisor", "pod", pp.namespace+"/"+pp.name, "error", err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for uid, pod := range want {
		if p.pods[uid] != nil {
			continue
		}
		host := 0
		for h := 2; h < 255; h++ {
			if !p.hosts[h] {
				host = h
				break
			}
		}
		if host == 0 {
			p.logger.Error("proxyless supervisor: no loopback address left", "pod", pod.Namespace+"/"+pod.Name, "prefix", p.prefix)
			continue
		}
		p.hosts[host] = true
		p.started++
		podCtx, cancel := context.WithCancel(ctx)
		pp := &proxylessPod{
			uid: uid, namespace: pod.Namespace, name: pod.Name, labels: maps.Clone(pod.Labels),
			plain: !proxylessTemplate(pod),
			addr:  p.prefix + strconv.Itoa(host),
			// Short: pilot-agent's XDS socket is <dir>/etc/istio/proxy/XDS,
			// and a socket's path has at most 107 bytes.
			dir:    filepath.Join(p.dir, "pl", fmt.Sprintf("%d-%d", host, p.started)),
			cancel: cancel,
		}
		p.pods[uid] = pp
		p.starts.Add(1)
		go func() {
			defer p.starts.Done()
			err := p.start(podCtx, pp, pod.DeepCopy())
			p.mu.Lock()
			pp.err = err
			p.mu.Unlock()
			if err != nil && podCtx.Err() == nil {
				p.logger.Error("proxyless pod not started: it stays unready", "pod", pp.namespace+"/"+pp.name, "address", pp.addr, "error", err)
			}
		}()
	}
}

// stopPod ends pp's start, stops its processes and, with deleteEntry, its
// WorkloadEntry (which the garbage collector would delete with the pod too,
// but later: istiod would meanwhile hand clients a dead endpoint).
func (p *Proxyless) stopPod(pp *proxylessPod, why string, deleteEntry bool) error {
	pp.cancel()
	p.mu.Lock()
	pp.stopped = true
	processes, holds := slices.Clone(pp.processes), pp.statusHolds
	p.mu.Unlock()
	var errs []error
	p.logger.Info("stopping proxyless pod", "pod", pp.namespace+"/"+pp.name, "address", pp.addr, "why", why)
	// The app first, as a kubelet stops a native sidecar after the app.
	slices.Reverse(processes)
	for _, pr := range processes {
		errs = append(errs, pr.Stop())
	}
	for _, hold := range holds {
		hold.Close()
	}
	if deleteEntry {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.istio.NetworkingV1().WorkloadEntries(pp.namespace).Delete(ctx, pp.name, metav1.DeleteOptions{})
		cancel()
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting WorkloadEntry %s/%s: %w", pp.namespace, pp.name, err))
		}
	}
	p.mu.Lock()
	// Its address is free again only once its processes are gone.
	host, _ := strconv.Atoi(strings.TrimPrefix(pp.addr, p.prefix))
	delete(p.hosts, host)
	delete(p.pods, pp.uid)
	p.mu.Unlock()
	return errors.Join(errs...)
}

// start runs pod: its volumes' files, its WorkloadEntry, pilot-agent, then
// the echo; and marks it serving once the echo serves every gRPC port.
func (p *Proxyless) start(ctx context.Context, pp *proxylessPod, pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(ctx, proxylessStartTimeout)
	defer cancel()
	app := appContainer(pod)
	if app == nil {
		return fmt.Errorf("pod %s/%s has no app container", pod.Namespace, pod.Name)
	}
	pp.app = app.Name
	echoPath, err := p.echoBinary(app.Image)
	if err != nil {
		return fmt.Errorf("container %s: %w", app.Name, err)
	}
	appEnv, err := p.istiod.containerEnv(ctx, pod, app)
	if err != nil {
		return err
	}
	if pp.plain {
		if err := p.createWorkloadEntry(ctx, pp, pod); err != nil {
			return err
		}
		return p.startEcho(ctx, pp, app, echoPath, appEnv, "listening on %s (plain gRPC)")
	}
	proxy := injection.Proxy(pod)
	if proxy == nil {
		return fmt.Errorf("pod %s/%s has no injected %s container", pod.Namespace, pod.Name, injection.ContainerName)
	}
	if err := p.createWorkloadEntry(ctx, pp, pod); err != nil {
		return err
	}
	bootstrap, err := p.runAgent(ctx, pp, pod, proxy, "pilot-agent", pp.dir)
	if err != nil {
		return err
	}
	// What the grpc-agent template gives the app container, with the
	// bootstrap's local path.
	appEnv = setEnv(appEnv, "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT", "true")
	appEnv = setEnv(appEnv, "GRPC_XDS_BOOTSTRAP", bootstrap)
	p.mu.Lock()
	pp.execEnv, pp.execDir = appEnv, pp.dir
	p.mu.Unlock()
	if err := p.startEcho(ctx, pp, app, echoPath, appEnv, "grpc serving %s"); err != nil {
		return err
	}
	p.markServing(ctx, pod.Namespace, pod.Name, "pilot-agent and the echo serve at "+pp.addr)
	return nil
}

// runAgent runs pilot-agent for pod as name, in dir (its volumes' files
// there), and waits for its xDS bootstrap and certificates; it returns the
// bootstrap's path.
func (p *Proxyless) runAgent(ctx context.Context, pp *proxylessPod, pod *corev1.Pod, proxy *corev1.Container, name, dir string) (string, error) {
	if err := p.writeVolumes(ctx, dir, pod); err != nil {
		return "", err
	}
	env, bootstrap, err := p.agentEnv(ctx, dir, pp, pod, proxy)
	if err != nil {
		return "", err
	}
	agent, err := p.startProcess(pp, name, dir, p.agentBinary, expandAll(proxy.Args, env), env, nil)
	if err != nil {
		return "", err
	}
	certs := envOf(env, "OUTPUT_CERTS")
	err = waitProcess(ctx, agent, name+" to write its xDS bootstrap and certificates", func() bool {
		for _, f := range []string{bootstrap, filepath.Join(certs, "cert-chain.pem"), filepath.Join(certs, "root-cert.pem")} {
			if _, err := os.Stat(f); err != nil {
				return false
			}
		}
		return true
	})
	return bootstrap, err
}

// startEcho runs the pod's app container as the echo binary at echoPath,
// bound to the pod's address, and waits until it prints serving (a format
// taking the address) for every gRPC port.
func (p *Proxyless) startEcho(ctx context.Context, pp *proxylessPod, app *corev1.Container, echoPath string, appEnv []string, serving string) error {
	args := expandAll(app.Args, appEnv)
	if len(args) > 0 && args[0] == "serve" {
		// Bound to the pod's address; `echo idle` (a proxyless client
		// pod) listens on nothing.
		args = append(args, "--host", pp.addr)
	}
	if len(app.Command) > 0 {
		if app.Command[0] != image.BinaryPath {
			return fmt.Errorf("container %s runs %s: only the echo image's %s runs here", app.Name, app.Command[0], image.BinaryPath)
		}
		args = append(expandAll(app.Command[1:], appEnv), args...)
	}
	out := &lineWatch{}
	echo, err := p.startProcess(pp, "echo", pp.dir, echoPath, args, appEnv, out)
	if err != nil {
		return err
	}
	var lines []string
	for _, port := range grpcPorts(args) {
		lines = append(lines, fmt.Sprintf(serving, net.JoinHostPort(pp.addr, port)))
	}
	if err := waitProcess(ctx, echo, "the echo to print "+strings.Join(lines, ", "), func() bool {
		return out.containsAll(lines)
	}); err != nil {
		return err
	}
	p.mu.Lock()
	pp.echoPath, pp.serving = echoPath, true
	p.mu.Unlock()
	return nil
}

// plainGRPCServer reports whether pod is an out-of-mesh pod (no sidecar, no
// injection) whose app serves gRPC (the echo's --grpc-ports): the
// supervisor runs its echo too, as a plain gRPC server at its own address
// with a WorkloadEntry, so that proxyless clients' grpc-go, which istiod
// sends there, reaches a real server (the simulated data plane answers no
// gRPC call from a proxyless pod). Its other commands stay simulated.
func plainGRPCServer(pod *corev1.Pod) bool {
	if pod.Annotations[injectionStatusAnnotation] != "" || injection.Proxy(pod) != nil {
		return false
	}
	app := appContainer(pod)
	return app != nil && len(grpcPorts(append(slices.Clone(app.Command), app.Args...))) > 0
}

// appContainer is the pod's first container other than istio-proxy, the
// one the grpc-agent template gives GRPC_XDS_BOOTSTRAP.
func appContainer(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name != injection.ContainerName {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// writeVolumes writes, under the pod's working directory, the files its
// istio-proxy container's volumes would hold at the same (relative) paths,
// which are pilot-agent's defaults: the istio-token (a TokenRequest for the
// pod's ServiceAccount with the volume's audience, bound to the pod), the
// root certificate (the namespace's istio-ca-root-cert ConfigMap, waited for
// as a kubelet waits for a volume's ConfigMap) and the pod's labels and
// annotations (the istio-podinfo downward API volume). The emptyDir
// volumes (bootstrap, certificates) are made empty.
func (p *Proxyless) writeVolumes(ctx context.Context, dir string, pod *corev1.Pod) error {
	audience, ttl, rootConfigMap := "istio-ca", int64(istioTokenTTL), rootCertConfigMap
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil && t.Path == "istio-token" {
					audience = t.Audience
					if t.ExpirationSeconds != nil {
						ttl = *t.ExpirationSeconds
					}
				}
			}
		case v.Name == "istiod-ca-cert" && v.ConfigMap != nil:
			rootConfigMap = v.ConfigMap.Name
		}
	}
	tok, err := p.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{audience}, ExpirationSeconds: ptr.To(ttl),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("the istio-token of ServiceAccount %s/%s: %w", pod.Namespace, pod.Spec.ServiceAccountName, err)
	}
	var root string
	err = wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		cm, err := p.kube.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, rootConfigMap, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		root = cm.Data["root-cert.pem"]
		return root != "", nil
	})
	if err != nil {
		return fmt.Errorf("waiting for ConfigMap %s/%s (the mesh's root certificate, which istiod writes): %w", pod.Namespace, rootConfigMap, err)
	}
	files := map[string][]byte{
		"var/run/secrets/tokens/istio-token":  []byte(tok.Status.Token),
		"var/run/secrets/istio/root-cert.pem": []byte(root),
		"etc/istio/pod/labels":                downwardAPIFile(pod.Labels),
		"etc/istio/pod/annotations":           downwardAPIFile(pod.Annotations),
	}
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}
	for _, d := range []string{"etc/istio/proxy", "var/lib/istio/data", "var/run/secrets/workload-spiffe-uds", "var/run/secrets/workload-spiffe-credentials"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// downwardAPIFile is a map as a downward API volume writes it: one
// key="value" line per key, sorted.
func downwardAPIFile(m map[string]string) []byte {
	var b bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%s=%s\n", k, strconv.Quote(m[k]))
	}
	return b.Bytes()
}

// tlsModeLabel is the label Istio reads an endpoint's TLS mode from.
const tlsModeLabel = "security.istio.io/tlsMode"

// createWorkloadEntry registers the pod's address with Istio (see
// Proxyless). One left by an earlier pod of the same name is replaced.
func (p *Proxyless) createWorkloadEntry(ctx context.Context, pp *proxylessPod, pod *corev1.Pod) error {
	we := &istionetworking.WorkloadEntry{
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "meshproof-localcluster"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
			}},
		},
		Spec: networkingapi.WorkloadEntry{Address: pp.addr, Labels: maps.Clone(pod.Labels), ServiceAccount: pod.Spec.ServiceAccountName},
	}
	// istiod gives a WorkloadEntry with a ServiceAccount and no tlsMode
	// label the endpoint metadata tlsMode=istio (getTLSModeFromWorkloadEntry
	// in pilot/pkg/serviceregistry/serviceentry/conversion.go), whereas the
	// pod's own endpoint, from an EndpointSlice, has the pod's label or
	// none (disabled): a sidecar client's auto mTLS would send mTLS to a
	// pod without a sidecar. The entry says the pod's mode.
	if _, ok := we.Spec.Labels[tlsModeLabel]; !ok {
		if we.Spec.Labels == nil {
			we.Spec.Labels = map[string]string{}
		}
		we.Spec.Labels[tlsModeLabel] = "disabled"
	}
	entries := p.istio.NetworkingV1().WorkloadEntries(pod.Namespace)
	_, err := entries.Create(ctx, we, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if err = entries.Delete(ctx, pod.Name, metav1.DeleteOptions{}); err == nil || apierrors.IsNotFound(err) {
			_, err = entries.Create(ctx, we, metav1.CreateOptions{})
		}
	}
	if err != nil {
		return fmt.Errorf("creating WorkloadEntry %s/%s at %s: %w", pod.Namespace, pod.Name, pp.addr, err)
	}
	return nil
}

// agentEnv is the environment of the pod's istio-proxy container as its
// kubelet would give it, with what must be local instead:
//   - INSTANCE_IP and HOST_IP: the pod's loopback address;
//   - PROXY_CONFIG: discoveryAddress the local istiod of the pod's revision
//     (ISTIOD_SAN keeps the name the agent checks in istiod's certificate),
//     statusPort one the supervisor holds (see Proxyless), configPath the
//     pod's own directory;
//   - CA_ADDR, if set: that istiod too;
//   - OUTPUT_CERTS and GRPC_XDS_BOOTSTRAP: absolute paths in the pod's
//     directory (the app's working directory is the same; an absolute path
//     is what the app container's env carries);
//   - ISTIO_META_DNS_CAPTURE=false (the template sets it too: nothing may
//     capture DNS on this machine).
//
// It also returns the bootstrap's path.
func (p *Proxyless) agentEnv(ctx context.Context, dir string, pp *proxylessPod, pod *corev1.Pod, proxy *corev1.Container) ([]string, string, error) {
	env, err := p.istiod.containerEnv(ctx, pod, proxy)
	if err != nil {
		return nil, "", err
	}
	rev := injectedRevision(pod)
	istiod, err := p.istiod.CAAddress(rev)
	if err != nil {
		return nil, "", fmt.Errorf("the istiod of revision %s that injected pod %s/%s: %w", rev, pod.Namespace, pod.Name, err)
	}
	proxyConfig := map[string]any{}
	if pc := envOf(env, "PROXY_CONFIG"); strings.TrimSpace(pc) != "" {
		if err := json.Unmarshal([]byte(pc), &proxyConfig); err != nil {
			return nil, "", fmt.Errorf("pod %s/%s: PROXY_CONFIG of %s: %w", pod.Namespace, pod.Name, injection.ContainerName, err)
		}
	}
	if envOf(env, "ISTIOD_SAN") == "" {
		if addr, _ := proxyConfig["discoveryAddress"].(string); addr != "" {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				env = setEnv(env, "ISTIOD_SAN", host)
			}
		}
	}
	configPath := filepath.Join(dir, "etc/istio/proxy")
	proxyConfig["discoveryAddress"] = istiod
	// Held until the pod stops (see Proxyless): pilot-agent must not
	// listen on it.
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("holding a status port for pilot-agent: %w", err)
	}
	p.mu.Lock()
	pp.statusHolds = append(pp.statusHolds, hold)
	stopped := pp.stopped
	p.mu.Unlock()
	if stopped {
		hold.Close()
		return nil, "", errors.New("the pod is gone")
	}
	proxyConfig["statusPort"] = hold.Addr().(*net.TCPAddr).Port
	proxyConfig["configPath"] = configPath
	pc, err := json.Marshal(proxyConfig)
	if err != nil {
		return nil, "", err
	}
	bootstrap := filepath.Join(configPath, "grpc-bootstrap.json")
	env = setEnv(env, "PROXY_CONFIG", string(pc))
	env = setEnv(env, "INSTANCE_IP", pp.addr)
	env = setEnv(env, "HOST_IP", pp.addr)
	env = setEnv(env, "OUTPUT_CERTS", filepath.Join(dir, "var/lib/istio/data"))
	env = setEnv(env, "GRPC_XDS_BOOTSTRAP", bootstrap)
	env = setEnv(env, "ISTIO_META_DNS_CAPTURE", "false")
	if envOf(env, "CA_ADDR") != "" {
		env = setEnv(env, "CA_ADDR", istiod)
	}
	return env, bootstrap, nil
}

// injectedRevision is the revision the injector recorded in the pod's
// status annotation, else its istio.io/rev label, else "default".
func injectedRevision(pod *corev1.Pod) string {
	var status struct {
		Revision string `json:"revision"`
	}
	if s := pod.Annotations[injectionStatusAnnotation]; s != "" && json.Unmarshal([]byte(s), &status) == nil && status.Revision != "" {
		return status.Revision
	}
	if rev := pod.Labels[revisionLabel]; rev != "" {
		return rev
	}
	return defaultRev
}

// startProcess starts one of pp's containers, with its output in the
// cluster's directory (<container>-<namespace>-<pod>.log, which ExportLogs
// copies) and, when watch is set, there too.
func (p *Proxyless) startProcess(pp *proxylessPod, container, dir, binary string, args, env []string, watch *lineWatch) (*proc.Process, error) {
	name := container + "-" + pp.namespace + "-" + pp.name
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(p.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logFile, "=== meshproof: %s of pod %s/%s (uid %s) at %s, address %s: %s %s\n",
		container, pp.namespace, pp.name, pp.uid, time.Now().UTC().Format(time.RFC3339Nano), pp.addr, binary, strings.Join(args, " "))
	var out io.Writer = logFile
	if watch != nil {
		watch.w = logFile
		out = watch
	}
	pr, err := proc.Start(name, binary, args, proc.WithEnv(env...), proc.WithDir(dir), proc.WithOutput(out), proc.WithStopTimeout(proxylessStopTimeout))
	if err != nil {
		logFile.Close()
		return nil, err
	}
	p.mu.Lock()
	stopped := pp.stopped
	if !stopped {
		pp.processes = append(pp.processes, pr)
	}
	p.mu.Unlock()
	go func() {
		<-pr.Done()
		logFile.Close()
		p.mu.Lock()
		stopped := pp.stopped
		p.mu.Unlock()
		if !stopped {
			p.logger.Error("proxyless pod's process exited", "pod", pp.namespace+"/"+pp.name, "container", container, "error", pr.ExitError(), "output", pr.Tail())
		}
	}()
	if stopped { // the pod went while it started
		_ = pr.Stop()
		return nil, errors.New("the pod is gone")
	}
	p.logger.Info("proxyless pod's process started", "pod", pp.namespace+"/"+pp.name, "container", container, "pid", pr.Pid(), "address", pp.addr)
	return pr, nil
}

// waitProcess waits until done reports true, failing when pr exits first.
func waitProcess(ctx context.Context, pr *proc.Process, what string, done func() bool) error {
	var exited error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		if exited = pr.ExitError(); exited != nil {
			return false, exited
		}
		return done(), nil
	})
	switch {
	case exited != nil:
		return fmt.Errorf("waiting for %s: %s exited: %w; its last output:\n%s", what, pr.Name(), exited, pr.Tail())
	case err != nil:
		return fmt.Errorf("waiting for %s: %w; %s's last output:\n%s", what, err, pr.Name(), pr.Tail())
	}
	return nil
}

// markServing annotates the pod with proxylessServingAnnotation, the sign
// for kwok to make it Running and Ready.
func (p *Proxyless) markServing(ctx context.Context, namespace, name, why string) {
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:"true"}}}`, proxylessServingAnnotation)
	if _, err := p.kube.CoreV1().Pods(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			p.logger.Error("marking a proxyless pod ready", "pod", namespace+"/"+name, "error", err)
		}
		return
	}
	p.logger.Info("proxyless pod serving; it turns Ready", "pod", namespace+"/"+name, "why", why)
}

// grpcPorts are the ports of the echo's --grpc-ports flag in args.
func grpcPorts(args []string) []string {
	for i, a := range args {
		name, value, inline := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "grpc-ports" {
			continue
		}
		if !inline && i+1 < len(args) {
			value = args[i+1]
		}
		var ports []string
		for _, p := range strings.Split(value, ",") {
			if p = strings.TrimSpace(p); p != "" {
				ports = append(ports, p)
			}
		}
		return ports
	}
	return nil
}

// envOf is key's value in env (KEY=VALUE entries; the last wins).
func envOf(env []string, key string) string {
	value := ""
	for _, e := range env {
		if k, v, _ := strings.Cut(e, "="); k == key {
			value = v
		}
	}
	return value
}

// setEnv is env with key set to value: replaced where it is, else added.
func setEnv(env []string, key, value string) []string {
	out := slices.DeleteFunc(slices.Clone(env), func(e string) bool { k, _, _ := strings.Cut(e, "="); return k == key })
	return append(out, key+"="+value)
}

// expandAll expands $(VAR) references in args from env, as a kubelet does
// in a container's command and args ($$ escapes a $; an unknown reference
// stays as written).
func expandAll(args, env []string) []string {
	values := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		values[k] = v
	}
	out := make([]string, len(args))
	for i, a := range args {
		var b strings.Builder
		for j := 0; j < len(a); j++ {
			switch {
			case a[j] == '$' && j+1 < len(a) && a[j+1] == '$':
				b.WriteByte('$')
				j++
			case a[j] == '$' && j+1 < len(a) && a[j+1] == '(':
				if end := strings.IndexByte(a[j:], ')'); end > 0 {
					if v, ok := values[a[j+2:j+end]]; ok {
						b.WriteString(v)
						j += end
						continue
					}
				}
				b.WriteByte('$')
			default:
				b.WriteByte(a[j])
			}
		}
		out[i] = b.String()
	}
	return out
}

// lineWatch copies a process's output to w and keeps it for containsAll.
type lineWatch struct {
	mu  sync.Mutex
	buf bytes.Buffer
	w   *os.File
}

func (l *lineWatch) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() < 1<<20 {
		l.buf.Write(b)
	}
	return l.w.Write(b)
}

func (l *lineWatch) containsAll(subs []string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range subs {
		if !bytes.Contains(l.buf.Bytes(), []byte(s)) {
			return false
		}
	}
	return true
}

// pids are the running processes by name (<container>-<namespace>-<pod>).
func (p *Proxyless) pids() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, pp := range p.pods {
		for _, pr := range pp.processes {
			if pr != nil && pr.ExitError() == nil {
				out[pr.Name()] = pr.Pid()
			}
		}
	}
	return out
}
