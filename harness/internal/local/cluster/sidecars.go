package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// Sidecars plays the Envoy of every pod injected with an Envoy sidecar
// (an istio-proxy container, not the grpc-agent template): no Envoy runs
// here, but each such pod gets the xDS client its Envoy would be, asking
// the istiod of the revision that injected the pod for the pod's
// configuration with the node pilot-agent would present (xds.SidecarNode,
// from the istio-proxy container's environment as the kubelet resolves
// it), and keeping it current as istiod pushes, from the moment the pod
// has an IP until it is gone. The rehearsal's data plane evaluates what
// these clients hold (package envoy).
//
// Such a pod turns Ready (see gateSidecars) once its client holds a
// complete configuration and, when a certifier is set (CertifyWith), its
// certificates are issued: what istio-proxy's readiness probe waits for.
type Sidecars struct {
	istiod *Istiod
	kube   kubernetes.Interface
	logger *slog.Logger
	watch  podWatch

	mu      sync.Mutex
	clients map[types.UID]*sidecarClient
	certify func(context.Context, *corev1.Pod) error
}

// sidecarClient is one pod's xDS client.
type sidecarClient struct {
	namespace, name, revision string
	client                    *xds.Sidecar
	// stopReadiness ends the wait for the pod's readiness.
	stopReadiness context.CancelFunc
}

// CertifyWith makes a pod's readiness also wait for certify to succeed:
// the simulated istio-agent getting the pod's certificates from istiod's
// CA (a listener of a real Envoy warms only once its SDS secrets are
// there). It is retried until it succeeds or the pod is gone. Without it a
// pod turns Ready once its Envoy's configuration is complete.
func (s *Sidecars) CertifyWith(certify func(context.Context, *corev1.Pod) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.certify = certify
}

func newSidecars(istiod *Istiod, kube kubernetes.Interface, logger *slog.Logger) *Sidecars {
	return &Sidecars{istiod: istiod, kube: kube, logger: logger, clients: map[types.UID]*sidecarClient{}}
}

func (s *Sidecars) run(ctx context.Context) error {
	return s.watch.start(ctx, s.kube, s.reconcile)
}

// stop ends the watch and every client.
func (s *Sidecars) stop() {
	s.watch.stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, c := range s.clients {
		c.stop()
		delete(s.clients, uid)
	}
}

func (c *sidecarClient) stop() {
	c.stopReadiness()
	c.client.Stop()
}

// envoySidecar reports whether a pod runs Istio's Envoy sidecar: the
// injector gave it an istio-proxy container (and recorded it in
// sidecar.istio.io/status), not with the grpc-agent template. ztunnel's
// pods name their container istio-proxy too, but were never injected.
func envoySidecar(pod *corev1.Pod) bool {
	_, injected := pod.Annotations["sidecar.istio.io/status"]
	return injected && injection.Proxy(pod) != nil && !proxylessTemplate(pod)
}

// reconcile starts a client for every running Envoy-sidecar pod with an
// IP that has none, and stops the clients of pods that are gone.
func (s *Sidecars) reconcile(ctx context.Context, lister listersv1.PodLister) {
	pods, err := lister.List(labels.Everything())
	if err != nil {
		s.logger.Error("sidecars: listing pods", "error", err)
		return
	}
	seen := map[types.UID]bool{}
	var start []*corev1.Pod
	for _, p := range pods {
		if !envoySidecar(p) || p.Status.PodIP == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		seen[p.UID] = true
		start = append(start, p)
	}
	s.mu.Lock()
	for uid, c := range s.clients {
		if !seen[uid] {
			c.stop()
			delete(s.clients, uid)
			s.logger.Debug("sidecar xDS client stopped: its pod is gone", "pod", c.namespace+"/"+c.name)
		}
	}
	s.mu.Unlock()
	for _, p := range start {
		s.mu.Lock()
		_, running := s.clients[p.UID]
		s.mu.Unlock()
		if running {
			continue
		}
		if err := s.startClient(ctx, p); err != nil {
			// istiod of the revision may not run yet: the next pod event,
			// or the retry below, tries again.
			s.logger.Info("sidecar xDS client not started yet", "pod", p.Namespace+"/"+p.Name, "why", err)
			go func() {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
					s.watch.poke()
				}
			}()
		}
	}
}

// startClient connects pod's client to the istiod of its revision.
func (s *Sidecars) startClient(ctx context.Context, pod *corev1.Pod) error {
	rev := injectedRevision(pod)
	addr, err := s.istiod.XDSAddress(rev)
	if err != nil {
		return err
	}
	env, err := s.istiod.containerEnv(ctx, pod, injection.Proxy(pod))
	if err != nil {
		return err
	}
	node, err := xds.SidecarNode(pod, env)
	if err != nil {
		return err
	}
	logger := s.logger.With("pod", pod.Namespace+"/"+pod.Name, "revision", rev)
	c := xds.NewSidecar(addr, node, xds.WithStreamOptions(xds.WithLogger(logger)))
	if err := c.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	readyCtx, stopReadiness := context.WithCancel(ctx)
	s.mu.Lock()
	s.clients[pod.UID] = &sidecarClient{namespace: pod.Namespace, name: pod.Name, revision: rev, client: c, stopReadiness: stopReadiness}
	s.mu.Unlock()
	logger.Debug("sidecar xDS client started", "node", node.GetId(), "istiod", addr)
	if pod.Annotations[sidecarServingAnnotation] != "true" {
		go s.markServing(readyCtx, pod, c, logger)
	}
	return nil
}

// sidecarRetry is how often a pod's readiness retries its certificates.
const sidecarRetry = 500 * time.Millisecond

// markServing waits until c holds a complete configuration and the pod's
// certificates are issued, then annotates the pod with
// sidecarServingAnnotation, the sign for kwok to make it Ready. It gives up
// only when ctx ends (the pod is gone, the cluster stops): a pod whose
// istiod never answers stays unready, as its readiness probe would keep it.
func (s *Sidecars) markServing(ctx context.Context, pod *corev1.Pod, c *xds.Sidecar, logger *slog.Logger) {
	if _, err := c.Wait(ctx, (*xds.Snapshot).Warm); err != nil {
		return
	}
	var last error
	err := wait.PollUntilContextCancel(ctx, sidecarRetry, true, func(ctx context.Context) (bool, error) {
		s.mu.Lock()
		certify := s.certify
		s.mu.Unlock()
		if certify == nil {
			return true, nil
		}
		if err := certify(ctx, pod); err != nil {
			if last == nil || last.Error() != err.Error() {
				logger.Info("sidecar not ready yet: no certificates", "why", err)
			}
			last = err
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:"true"}}}`, sidecarServingAnnotation)
	if _, err := s.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		if ctx.Err() == nil && !apierrors.IsNotFound(err) {
			logger.Error("marking a sidecar pod ready", "error", err)
		}
		return
	}
	logger.Debug("sidecar ready: configuration complete, certificates issued; the pod turns Ready")
}

// Client is the xDS client standing in for pod's Envoy, or why there is
// none: the pod has no Envoy sidecar, or its client has not started (no
// IP yet, its revision's istiod not running).
func (s *Sidecars) Client(pod *corev1.Pod) (*xds.Sidecar, error) {
	if !envoySidecar(pod) {
		return nil, fmt.Errorf("pod %s/%s has no Envoy sidecar", pod.Namespace, pod.Name)
	}
	s.mu.Lock()
	c := s.clients[pod.UID]
	s.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("the Envoy of pod %s/%s has not asked istiod for its configuration yet (revision %s)", pod.Namespace, pod.Name, injectedRevision(pod))
	}
	return c.client, nil
}

// Module is the istio.io/istio module version of the istiod the clients
// ask.
func (s *Sidecars) Module() string { return s.istiod.Module() }
