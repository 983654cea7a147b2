package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"

	"github.com/meshproof/meshproof/harness/internal/local/ztunnel"
)

// Ambient plays the node agents of Istio's ambient mode on the local
// cluster's kwok nodes, where neither runs:
//
//   - for every running ztunnel pod (the ztunnel chart's DaemonSet: label
//     app=ztunnel in Istio's namespace), a simulated ztunnel (package
//     ztunnel) connected to the real istiod as that pod's ztunnel would
//     be, from the pod's own environment, once kwok has given the pod its
//     IP (which kwok gives with readiness: the pod turns Ready before its
//     ztunnel has istiod's state, so enrolment waits for that state);
//   - istio-cni's enrolment: a pod that the cni chart's default
//     enablement selects (label istio.io/dataplane-mode=ambient, or its
//     namespace so labelled and the pod not opted out with value none; no
//     sidecar; not on the host network; not in kube-system) on a node
//     whose istio-cni and ztunnel pods are ready, and whose ztunnel holds
//     istiod's first state (real istio-cni hands the pod to a ztunnel
//     that is ready, and ztunnel is ready once it has that state), gets the annotation
//     ambient.istio.io/redirection=enabled, written through the pod's
//     status subresource as istio-cni writes it (cni/pkg/util/podutil.go
//     AnnotateEnrolledPod); one that is no longer selected loses it
//     (AnnotateUnenrollPod). No traffic is redirected: that is what only
//     a kind run shows.
type Ambient struct {
	istiod *Istiod
	kube   kubernetes.Interface
	logger *slog.Logger
	ns     string
	watch  podWatch

	mu       sync.Mutex
	ztunnels map[types.UID]*ztunnel.Ztunnel
}

// The labels of ambient mode's pods and namespaces.
const (
	dataplaneModeLabel = "istio.io/dataplane-mode"
	sidecarStatus      = "sidecar.istio.io/status"
	ztunnelApp         = "ztunnel"
	// istioCNILabel is the cni chart's pod label (k8s-app=istio-cni-node).
	istioCNILabel = "k8s-app"
	istioCNIApp   = "istio-cni-node"
)

func newAmbient(istiod *Istiod, kube kubernetes.Interface, logger *slog.Logger) *Ambient {
	return &Ambient{istiod: istiod, kube: kube, logger: logger, ns: "istio-system", ztunnels: map[types.UID]*ztunnel.Ztunnel{}}
}

func (a *Ambient) run(ctx context.Context) error { return a.watch.start(ctx, a.kube, a.reconcile) }

func (a *Ambient) stop() {
	a.watch.stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for uid, z := range a.ztunnels {
		z.Stop()
		delete(a.ztunnels, uid)
	}
}

// Ztunnel is the simulated ztunnel of a node, or why there is none.
func (a *Ambient) Ztunnel(node string) (*ztunnel.Ztunnel, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var newest *ztunnel.Ztunnel
	for _, z := range a.ztunnels {
		if z.NodeName == node && (newest == nil || z.Started.After(newest.Started)) {
			newest = z
		}
	}
	if newest == nil {
		return nil, fmt.Errorf("no ztunnel runs on node %s (is Istio's ztunnel chart installed?)", node)
	}
	return newest, nil
}

// ZtunnelOfPod is the simulated ztunnel of the ztunnel pod namespace/name.
func (a *Ambient) ZtunnelOfPod(namespace, name string) (*ztunnel.Ztunnel, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, z := range a.ztunnels {
		if z.Namespace == namespace && z.Name == name {
			return z, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s runs no simulated ztunnel", namespace, name)
}

// Module is the istio.io/istio module version of the istiod the ztunnels
// ask.
func (a *Ambient) Module() string { return a.istiod.Module() }

func (a *Ambient) reconcile(ctx context.Context, lister listersv1.PodLister) {
	pods, err := lister.List(labels.Everything())
	if err != nil {
		a.logger.Error("ambient: listing pods", "error", err)
		return
	}
	seen := map[types.UID]bool{}
	for _, p := range pods {
		if p.Namespace != a.ns || p.Labels["app"] != ztunnelApp || p.Status.PodIP == "" || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		seen[p.UID] = true
		a.ensureZtunnel(ctx, p)
	}
	a.mu.Lock()
	for uid, z := range a.ztunnels {
		if !seen[uid] {
			z.Stop()
			delete(a.ztunnels, uid)
			a.logger.Debug("simulated ztunnel stopped: its pod is gone", "pod", z.Namespace+"/"+z.Name)
		}
	}
	a.mu.Unlock()
	a.enrol(ctx, pods)
}

// ensureZtunnel starts pod's ztunnel if it has none, and looks again
// until it holds istiod's first state (enrolment waits for it).
func (a *Ambient) ensureZtunnel(ctx context.Context, pod *corev1.Pod) {
	a.mu.Lock()
	z := a.ztunnels[pod.UID]
	a.mu.Unlock()
	if z == nil {
		var err error
		if z, err = a.startZtunnel(ctx, pod); err != nil {
			a.logger.Info("simulated ztunnel not started yet", "pod", pod.Namespace+"/"+pod.Name, "why", err)
			a.retry(ctx, time.Second)
			return
		}
	}
	if !z.Synced() {
		a.retry(ctx, 200*time.Millisecond)
	}
}

// synced reports whether node's ztunnel holds istiod's first state.
func (a *Ambient) synced(node string) bool {
	z, err := a.Ztunnel(node)
	return err == nil && z.Synced()
}

func (a *Ambient) startZtunnel(ctx context.Context, pod *corev1.Pod) (*ztunnel.Ztunnel, error) {
	addr, err := a.istiod.XDSAddress("")
	if err != nil {
		return nil, err
	}
	c := findContainer(pod, "istio-proxy")
	if c == nil && len(pod.Spec.Containers) > 0 {
		c = &pod.Spec.Containers[0]
	}
	if c == nil {
		return nil, fmt.Errorf("ztunnel pod %s/%s has no container", pod.Namespace, pod.Name)
	}
	envList, err := a.istiod.containerEnv(ctx, pod, c)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range envList {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	node, err := ztunnel.Node(pod, env)
	if err != nil {
		return nil, err
	}
	logger := a.logger.With("ztunnel", pod.Namespace+"/"+pod.Name, "node", pod.Spec.NodeName)
	z := ztunnel.New(addr, pod, node, ztunnel.WithLogger(logger))
	if err := z.Start(context.WithoutCancel(ctx)); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.ztunnels[pod.UID] = z
	a.mu.Unlock()
	logger.Debug("simulated ztunnel started", "node", node.GetId(), "istiod", addr)
	a.retry(ctx, 200*time.Millisecond)
	return z, nil
}

// retry looks again after d.
func (a *Ambient) retry(ctx context.Context, d time.Duration) {
	go func() {
		select {
		case <-ctx.Done():
		case <-time.After(d):
			a.watch.poke()
		}
	}()
}

// enrol writes and removes istio-cni's redirection annotation.
func (a *Ambient) enrol(ctx context.Context, pods []*corev1.Pod) {
	ready := map[string]map[string]bool{} // node -> app -> ready pod there
	for _, p := range pods {
		app := p.Labels["app"]
		if p.Labels[istioCNILabel] == istioCNIApp {
			app = istioCNIApp
		}
		if p.Namespace != a.ns || (app != istioCNIApp && app != ztunnelApp) || !podReady(p) {
			continue
		}
		if ready[p.Spec.NodeName] == nil {
			ready[p.Spec.NodeName] = map[string]bool{}
		}
		ready[p.Spec.NodeName][app] = true
	}
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		selected, err := a.selected(ctx, p)
		if err != nil {
			a.logger.Info("ambient: reading the pod's namespace", "pod", p.Namespace+"/"+p.Name, "error", err)
			continue
		}
		has := p.Annotations[ztunnel.RedirectionAnnotation] == ztunnel.RedirectionEnabled
		var patch string
		switch {
		case selected && !has && ready[p.Spec.NodeName][istioCNIApp] && ready[p.Spec.NodeName][ztunnelApp] && a.synced(p.Spec.NodeName):
			patch = `{"metadata":{"annotations":{"` + ztunnel.RedirectionAnnotation + `":"` + ztunnel.RedirectionEnabled + `"}}}`
		case !selected && p.Annotations[ztunnel.RedirectionAnnotation] != "":
			patch = `{"metadata":{"annotations":{"` + ztunnel.RedirectionAnnotation + `":null}}}`
		default:
			continue
		}
		if _, err := a.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			a.logger.Info("ambient: the redirection annotation", "pod", p.Namespace+"/"+p.Name, "error", err)
			a.retry(ctx, time.Second)
			continue
		}
		a.logger.Debug("ambient: istio-cni's annotation", "pod", p.Namespace+"/"+p.Name, "enrolled", selected)
	}
}

// selected is the cni chart's default enablement (values.yaml
// ambient.enablementSelectors) with istio-cni's exclusions: a pod with a
// sidecar, on the host network, or in kube-system is never enrolled.
func (a *Ambient) selected(ctx context.Context, p *corev1.Pod) (bool, error) {
	if _, sidecar := p.Annotations[sidecarStatus]; sidecar || p.Spec.HostNetwork || p.Namespace == metav1.NamespaceSystem {
		return false, nil
	}
	switch p.Labels[dataplaneModeLabel] {
	case "ambient":
		return true, nil
	case "none":
		return false, nil
	}
	ns, err := a.kube.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	return ns.Labels[dataplaneModeLabel] == "ambient", nil
}
