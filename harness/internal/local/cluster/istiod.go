package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

const (
	// IstioNamespace is where the supervisor looks for istiod pods and whose
	// istiod Services the post-renderer replaces.
	IstioNamespace = "istio-system"
	// istiodSelector selects the pods of the istiod chart's Deployments; each
	// is also labelled istio.io/rev=<revision> ("default" when unrevisioned).
	istiodSelector = "app=istiod"
	revisionLabel  = "istio.io/rev"
	defaultRev     = "default"
	// istiodContainer is the chart's istiod container.
	istiodContainer = "discovery"

	// istiodStopTimeout bounds istiod's graceful stop (its own
	// --shutdownDuration is set well below it) before SIGKILL.
	istiodStopTimeout = 15 * time.Second
	// istiodShutdownDuration is istiod's drain on SIGTERM. In a pod it is 10s
	// for connected proxies; the simulated proxies reconnect by themselves, and
	// every restart of a revision waits for it.
	istiodShutdownDuration = "1s"
	// servingTimeout bounds how long a started istiod may take to answer
	// GET /ready before the supervisor stops waiting (its pod stays unready).
	servingTimeout = 5 * time.Minute
)

// Istiod runs the real istiod (pilot-discovery, built from the istio.io/istio
// module of binaries.IstioVersion) for the local cluster. No kubelet runs
// containers here: Istiod plays the container of the istiod Deployments'
// pods. It watches the istiod pods in istio-system and runs exactly one
// process per revision that has a pod scheduled to a node, configured from
// that pod's spec (its discovery container's env and args) plus what a local
// process needs instead of a pod (see start). Once the process answers
// GET /ready (the chart's readiness probe), kwok makes the pod Running and
// Ready (see gateReadiness), so the Deployment's rollout status means
// what it means on a real cluster. A new pod of the revision (a rollout
// restart, an in-place upgrade) restarts the process from a fresh working
// directory, as a new pod starts from fresh volumes; when the revision's pods
// are gone, its process stops.
//
// One process per revision means a restart has a gap of a second or two
// where nothing serves the revision (a real rolling update keeps the old pod
// serving until the new one is ready).
//
// Each revision's ports on 127.0.0.1 are reserved the first time the
// revision is seen (by PostRenderer or by a pod) and kept for the cluster's
// life, so the webhook URLs PostRenderer writes stay valid across restarts.
type Istiod struct {
	binary     string
	kubeconfig string
	dir        string
	logger     *slog.Logger
	kube       kubernetes.Interface

	watch podWatch

	mu        sync.Mutex
	revisions map[string]*istiodRevision
}

// istiodRevision is one revision's ports and, while a pod runs, its process.
type istiodRevision struct {
	name  string
	ports istiodPorts
	// Set while a process runs (or has exited without a new pod since).
	process *proc.Process
	pod     types.UID
	podName string
	starts  int
	// startErr is why the process for pod could not be started.
	startErr error
}

// istiodPorts are one revision's listeners, all on 127.0.0.1.
type istiodPorts struct {
	http, grpc, secureGRPC, https, monitoring, ctrlz int
}

func newIstiod(binary, kubeconfig, dir string, kube kubernetes.Interface, logger *slog.Logger) *Istiod {
	return &Istiod{
		binary:     binary,
		kubeconfig: kubeconfig,
		dir:        dir,
		logger:     logger,
		kube:       kube,
		revisions:  map[string]*istiodRevision{},
	}
}

// Module is the istio.io/istio module version the istiod processes are built
// from (a pseudo-version of an Istio development commit), whatever version
// the installed charts name: one build plays every Istio version.
func (s *Istiod) Module() string { return binaries.IstioVersion }

// run starts watching istiod pods; stop ends it.
func (s *Istiod) run(ctx context.Context) error {
	return s.watch.start(ctx, s.kube, s.reconcile,
		informers.WithNamespace(IstioNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = istiodSelector }))
}

// stop ends the watch, then every istiod process.
func (s *Istiod) stop() error {
	s.watch.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, r := range s.revisions {
		errs = append(errs, s.stopProcess(r, "the cluster is being destroyed"))
	}
	return errors.Join(errs...)
}

// reconcile makes the processes match the pods: per revision, the newest
// pod scheduled to a node and not being deleted is the one a process plays
// (it turns Running and Ready once the process serves; see
// gateReadiness).
func (s *Istiod) reconcile(ctx context.Context, lister listersv1.PodLister) {
	pods, err := lister.Pods(IstioNamespace).List(labels.Everything())
	if err != nil {
		s.logger.Error("istiod supervisor: listing istiod pods", "error", err)
		return
	}
	want := map[string]*corev1.Pod{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Spec.NodeName == "" ||
			(p.Status.Phase != corev1.PodPending && p.Status.Phase != corev1.PodRunning) {
			continue
		}
		rev := p.Labels[revisionLabel]
		if rev == "" {
			rev = defaultRev
		}
		if cur := want[rev]; cur == nil || newerPod(p, cur) {
			want[rev] = p
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, r := range s.revisions {
		if want[name] == nil && r.process != nil {
			if err := s.stopProcess(r, "no pod of revision "+name+" is left"); err != nil {
				s.logger.Error("istiod supervisor", "revision", name, "error", err)
			}
		}
	}
	for name, pod := range want {
		r, err := s.revision(name)
		if err != nil {
			s.logger.Error("istiod supervisor: reserving ports", "revision", name, "error", err)
			continue
		}
		if r.pod == pod.UID {
			continue
		}
		if r.process != nil {
			if err := s.stopProcess(r, "pod "+pod.Name+" replaces pod "+r.podName); err != nil {
				s.logger.Error("istiod supervisor", "revision", name, "error", err)
			}
		}
		r.pod, r.podName = pod.UID, pod.Name
		r.startErr = s.start(ctx, r, pod)
		if r.startErr != nil {
			s.logger.Error("istiod supervisor: not started", "revision", name, "pod", pod.Name, "error", r.startErr)
		}
	}
}

// newerPod orders pods by creation, then name (creation times have
// one-second resolution).
func newerPod(a, b *corev1.Pod) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

// revision returns name's state, reserving its ports on first use. The
// caller holds s.mu.
func (s *Istiod) revision(name string) (*istiodRevision, error) {
	if r, ok := s.revisions[name]; ok {
		return r, nil
	}
	ports, err := controlplane.FreePorts(6)
	if err != nil {
		return nil, err
	}
	r := &istiodRevision{name: name, ports: istiodPorts{
		http: ports[0], grpc: ports[1], secureGRPC: ports[2], https: ports[3], monitoring: ports[4], ctrlz: ports[5],
	}}
	s.revisions[name] = r
	s.logger.Debug("istiod ports reserved", "revision", name, "http", r.ports.http, "secureGRPC", r.ports.secureGRPC, "https", r.ports.https)
	return r, nil
}

// reserve is revision under the lock, for callers outside the loop.
func (s *Istiod) reserve(name string) (istiodPorts, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.revision(name)
	if err != nil {
		return istiodPorts{}, err
	}
	return r.ports, nil
}

// start runs istiod for pod. The caller holds s.mu.
//
// Configuration comes from the pod's discovery container, as its kubelet
// would give it, except:
//   - every listener moves to a reserved port on 127.0.0.1 (in the pod they
//     listen on all addresses of the pod's own network);
//   - --kubeconfig and KUBECONFIG name the cluster's admin kubeconfig (no
//     in-cluster ServiceAccount token is mounted);
//   - USE_REMOTE_CERTS=true: istiod reads the cacerts Secret through the API
//     instead of from the Secret volume the pod would mount, into ROOT_CA_DIR,
//     a fresh directory per start (a bundle left there from an earlier start
//     would make istiod skip the Secret, unlike a new pod);
//   - ISTIOD_CUSTOM_HOST=localhost,127.0.0.1: its serving certificate then
//     also names 127.0.0.1, where the API server calls its webhooks;
//   - ENABLE_NATIVE_SIDECARS=true: injection makes istio-proxy a native
//     sidecar (an init container with restartPolicy Always).
//
// The working directory is fresh too: istiod's default file paths (mesh
// config, injection templates) are relative to it, and with none there it
// reads the istio[-rev] and istio-sidecar-injector[-rev] ConfigMaps, which is
// what the chart's pod mounts.
func (s *Istiod) start(ctx context.Context, r *istiodRevision, pod *corev1.Pod) error {
	container := findContainer(pod, istiodContainer)
	if container == nil {
		return fmt.Errorf("pod %s/%s has no %s container", pod.Namespace, pod.Name, istiodContainer)
	}
	env, err := s.containerEnv(ctx, pod, container)
	if err != nil {
		return err
	}
	r.starts++
	work := filepath.Join(s.dir, fmt.Sprintf("istiod-%s-%d", r.name, r.starts))
	rootCADir := filepath.Join(work, "cacerts")
	if err := os.MkdirAll(rootCADir, 0o700); err != nil {
		return err
	}
	env = append(env,
		"KUBECONFIG="+s.kubeconfig,
		"USE_REMOTE_CERTS=true",
		"ROOT_CA_DIR="+rootCADir,
		"ISTIOD_CUSTOM_HOST=localhost,127.0.0.1",
		"ENABLE_NATIVE_SIDECARS=true",
	)
	args := append(withoutFlags(container.Args, listenerFlags...),
		"--kubeconfig="+s.kubeconfig,
		"--httpAddr="+loopback(r.ports.http),
		"--grpcAddr="+loopback(r.ports.grpc),
		"--secureGRPCAddr="+loopback(r.ports.secureGRPC),
		"--httpsAddr="+loopback(r.ports.https),
		"--monitoringAddr="+loopback(r.ports.monitoring),
		"--ctrlz_address=127.0.0.1",
		"--ctrlz_port="+strconv.Itoa(r.ports.ctrlz),
		"--shutdownDuration="+istiodShutdownDuration,
	)
	if len(container.Command) > 1 {
		// An image entrypoint other than pilot-discovery's own (the chart
		// sets none): its arguments come before the pod's.
		args = append(slices.Clone(container.Command[1:]), args...)
	}
	logFile, err := os.OpenFile(filepath.Join(s.dir, "istiod-"+r.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logFile, "=== meshproof: istiod start %d for pod %s (uid %s) at %s: %s %s\n",
		r.starts, pod.Name, pod.UID, time.Now().UTC().Format(time.RFC3339Nano), s.binary, strings.Join(args, " "))
	p, err := proc.Start("istiod-"+r.name, s.binary, args,
		proc.WithEnv(env...), proc.WithDir(work), proc.WithOutput(logFile), proc.WithStopTimeout(istiodStopTimeout))
	if err != nil {
		logFile.Close()
		return err
	}
	go func() {
		<-p.Done()
		logFile.Close()
		s.mu.Lock()
		if r.process == p { // not stopped by the supervisor
			s.logger.Error("istiod exited", "revision", r.name, "pod", r.podName, "error", p.ExitError(), "output", p.Tail())
		}
		s.mu.Unlock()
	}()
	r.process = p
	go s.markServing(ctx, r, p, pod)
	s.logger.Info("istiod started", "revision", r.name, "pod", pod.Name, "pid", p.Pid(), "start", r.starts,
		"https", r.ports.https, "secureGRPC", r.ports.secureGRPC, "module", s.Module())
	return nil
}

// markServing waits until p answers GET /ready and then annotates pod with
// servingAnnotation, the sign for kwok to make it Running and Ready. It gives
// up when p exits or is replaced, or after servingTimeout; the pod then stays
// unready, as a pod whose readiness probe fails.
func (s *Istiod) markServing(ctx context.Context, r *istiodRevision, p *proc.Process, pod *corev1.Pod) {
	ready := false
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, servingTimeout, true, func(ctx context.Context) (bool, error) {
		s.mu.Lock()
		current := r.process == p
		s.mu.Unlock()
		if !current {
			return false, errors.New("replaced before it served")
		}
		if err := p.ExitError(); err != nil {
			return false, err
		}
		ready = s.ready(ctx, r.ports)
		return ready, nil
	})
	if err != nil {
		if ctx.Err() == nil {
			s.logger.Error("istiod not ready: its pod stays unready", "revision", r.name, "pod", pod.Name, "pid", p.Pid(), "error", err)
		}
		return
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:"true"}}}`, servingAnnotation)
	if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		s.logger.Error("marking the istiod pod ready", "revision", r.name, "pod", pod.Name, "error", err)
		return
	}
	s.logger.Info("istiod ready; its pod turns Ready", "revision", r.name, "pod", pod.Name, "pid", p.Pid())
}

// ready reports whether the istiod on ports answers GET /ready with 200.
func (s *Istiod) ready(ctx context.Context, ports istiodPorts) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+loopback(ports.http)+"/ready", nil)
	if err != nil {
		return false
	}
	resp, err := readyClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

var readyClient = &http.Client{Timeout: 2 * time.Second}

// stopProcess stops r's process, if any. The caller holds s.mu.
func (s *Istiod) stopProcess(r *istiodRevision, why string) error {
	if r.process == nil {
		return nil
	}
	p := r.process
	r.process, r.pod, r.podName = nil, "", ""
	s.logger.Info("stopping istiod", "revision", r.name, "pid", p.Pid(), "why", why)
	return p.Stop()
}

// listenerFlags are pilot-discovery's listener flags (and the kubeconfig),
// which start always sets itself.
var listenerFlags = []string{"httpAddr", "grpcAddr", "secureGRPCAddr", "httpsAddr", "monitoringAddr", "ctrlz_address", "ctrlz_port", "kubeconfig"}

// withoutFlags drops the named flags, in --f=v, -f=v, --f v and -f v form,
// from args.
func withoutFlags(args []string, flags ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		flag, _, inline := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") || !slices.Contains(flags, flag) {
			out = append(out, args[i])
			continue
		}
		if !inline {
			i++ // its value is the next argument
		}
	}
	return out
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// containerEnv resolves c's environment as the kubelet would for pod:
// values, the pod's fields, ConfigMap and Secret keys. Resource fields
// (GOMAXPROCS from the CPU limit) are left to the Go runtime's default.
func (s *Istiod) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container) ([]string, error) {
	if len(c.EnvFrom) > 0 {
		return nil, fmt.Errorf("pod %s: container %s uses envFrom, which the local cluster's istiod supervisor does not resolve", pod.Name, c.Name)
	}
	var env []string
	for _, e := range c.Env {
		value, ok, err := s.envValue(ctx, pod, e)
		if err != nil {
			return nil, fmt.Errorf("pod %s: env %s: %w", pod.Name, e.Name, err)
		}
		if ok {
			env = append(env, e.Name+"="+value)
		}
	}
	return env, nil
}

func (s *Istiod) envValue(ctx context.Context, pod *corev1.Pod, e corev1.EnvVar) (string, bool, error) {
	from := e.ValueFrom
	switch {
	case from == nil:
		return e.Value, true, nil
	case from.FieldRef != nil:
		v, err := podField(pod, from.FieldRef.FieldPath)
		return v, err == nil, err
	case from.ResourceFieldRef != nil:
		return "", false, nil
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := s.kube.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return "", false, optionalRef(ref.Optional, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			return "", false, optionalRef(ref.Optional, fmt.Errorf("ConfigMap %s has no key %s", ref.Name, ref.Key))
		}
		return v, true, nil
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		sec, err := s.kube.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return "", false, optionalRef(ref.Optional, err)
		}
		v, ok := sec.Data[ref.Key]
		if !ok {
			return "", false, optionalRef(ref.Optional, fmt.Errorf("secret %s has no key %s", ref.Name, ref.Key))
		}
		return string(v), true, nil
	}
	return "", false, errors.New("a valueFrom source the local cluster does not resolve")
}

// optionalRef is err, unless the reference is optional.
func optionalRef(optional *bool, err error) error {
	if optional != nil && *optional {
		return nil
	}
	return err
}

// podField is the downward API's value of path for pod.
func podField(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": pod.Labels, "metadata.annotations": pod.Annotations} {
		if key, ok := strings.CutPrefix(path, prefix+"['"); ok {
			return m[strings.TrimSuffix(key, "']")], nil
		}
	}
	return "", fmt.Errorf("field %s is not one the local cluster resolves", path)
}

// revisionName is Istio's name of a revision: "" is "default".
func revisionName(rev string) string {
	if rev == "" {
		return defaultRev
	}
	return rev
}

// running returns revision's process, or why there is none.
func (s *Istiod) running(revision string) (*istiodRevision, *proc.Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.revisions[revisionName(revision)]
	switch {
	case r == nil || (r.process == nil && r.startErr == nil):
		return r, nil, fmt.Errorf("no istiod runs for revision %s: no running pod of it in %s", revisionName(revision), IstioNamespace)
	case r.process == nil:
		return r, nil, fmt.Errorf("istiod of revision %s could not start for pod %s: %w", r.name, r.podName, r.startErr)
	}
	return r, r.process, nil
}

// CAAddress is the address (127.0.0.1:port) of the CA gRPC API (istiod's
// --secureGRPCAddr) of revision's istiod ("" is the default revision), for
// dataplane.NewIstiodCA. It fails when no istiod runs for the revision.
func (s *Istiod) CAAddress(revision string) (string, error) {
	r, _, err := s.running(revision)
	if err != nil {
		return "", err
	}
	return loopback(r.ports.secureGRPC), nil
}

// XDSAddress is the address (127.0.0.1:port) of the plaintext xDS API
// (istiod's --grpcAddr) of revision's istiod ("" is the default revision):
// where the rehearsal's Envoy stand-ins ask for their configuration,
// without the workload certificate the secure port wants. It fails when no
// istiod runs for the revision.
func (s *Istiod) XDSAddress(revision string) (string, error) {
	r, _, err := s.running(revision)
	if err != nil {
		return "", err
	}
	return loopback(r.ports.grpc), nil
}

// Pid is the process id of revision's istiod, 0 when none runs.
func (s *Istiod) Pid(revision string) int {
	_, p, err := s.running(revision)
	if err != nil {
		return 0
	}
	return p.Pid()
}

// pids are the running istiod processes by name (istiod-<revision>).
func (s *Istiod) pids() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, r := range s.revisions {
		if r.process != nil && r.process.ExitError() == nil {
			out[r.process.Name()] = r.process.Pid()
		}
	}
	return out
}

// WaitServing waits, at most timeout, until revision's istiod ("" is the
// default revision) answers GET /ready with 200. It fails at once when the
// process has exited, with its last output.
func (s *Istiod) WaitServing(ctx context.Context, revision string, timeout time.Duration) error {
	last := "no istiod process yet"
	var exited error
	var tail string
	start := time.Now()
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		r, p, err := s.running(revision)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if exited = p.ExitError(); exited != nil {
			tail = p.Tail()
			return false, exited
		}
		if !s.ready(ctx, r.ports) {
			last = "GET http://" + loopback(r.ports.http) + "/ready: not 200 OK yet"
			return false, nil
		}
		return true, nil
	})
	switch {
	case exited != nil:
		return fmt.Errorf("istiod of revision %s exited before it served: %w; its last output:\n%s", revisionName(revision), exited, tail)
	case err != nil:
		return fmt.Errorf("istiod of revision %s not serving within %s (last: %s): %w", revisionName(revision), timeout, last, err)
	}
	s.logger.Info("istiod serving", "revision", revisionName(revision), "pid", s.Pid(revision), "waited", time.Since(start).Round(10*time.Millisecond))
	return nil
}
