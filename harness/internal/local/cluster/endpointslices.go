package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// The local cluster writes its EndpointSlices the way Kubernetes'
// EndpointSlice controller would (k8s.io/kubernetes
// pkg/controller/endpointslice, with k8s.io/endpointslice's reconciler),
// for every Service with a selector and the pods it selects, except the
// pods the proxyless supervisor registers with WorkloadEntries.
//
// It cannot run the real controller: a proxyless gRPC pod is reached at
// its WorkloadEntry's loopback address (Proxyless), and the controller
// would publish its kwok pod IP too, which istiod would hand to grpc-go as
// a second endpoint that reaches nothing. Without any EndpointSlices,
// though, istiod's EDS is empty for every Service, and an Envoy sidecar's
// auto mTLS decides per endpoint (the endpoint's tlsMode metadata, which
// istiod takes from the pod's labels, and strips where the pod's
// PeerAuthentication disables mTLS). So the local cluster writes the
// slices itself, leaving out the pods WorkloadEntries stand for.

// servedByWorkloadEntry reports whether the proxyless supervisor runs pod's
// gRPC server at a loopback address of its own and registers it with a
// WorkloadEntry (a proxyless pod, or an out-of-mesh pod serving gRPC that
// proxyless clients reach): its kwok IP must not be a second endpoint.
func servedByWorkloadEntry(pod *corev1.Pod) bool {
	return proxylessTemplate(pod) || plainGRPCServer(pod)
}

// SlicesManagedBy is the endpointslice.kubernetes.io/managed-by value of the
// slices written here: not the real controller's
// (endpointslice-controller.k8s.io), so nobody mistakes them for its.
const SlicesManagedBy = "local-cluster.meshproof.dev"

// sliceWriter keeps the EndpointSlices of every Service in step with the pods
// it selects. start runs it, stop ends it.
type sliceWriter struct {
	kube   kubernetes.Interface
	skip   func(*corev1.Pod) bool
	logger *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{}
}

// newSliceWriter returns a writer for the cluster kube reaches. skip names
// the pods no slice lists (nil: none).
func newSliceWriter(kube kubernetes.Interface, skip func(*corev1.Pod) bool, logger *slog.Logger) *sliceWriter {
	if skip == nil {
		skip = func(*corev1.Pod) bool { return false }
	}
	return &sliceWriter{kube: kube, skip: skip, logger: logger}
}

// start watches Services, Pods and the slices written here, and writes
// slices until Stop or ctx ends.
func (w *sliceWriter) start(ctx context.Context) error {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done, w.wake = make(chan struct{}), make(chan struct{}, 1)
	factory := informers.NewSharedInformerFactory(w.kube, 0)
	svcs, pods := factory.Core().V1().Services(), factory.Core().V1().Pods()
	ours := informers.NewSharedInformerFactoryWithOptions(w.kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = discoveryv1.LabelManagedBy + "=" + SlicesManagedBy
	}))
	sl := ours.Discovery().V1().EndpointSlices()
	poke := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { w.poke() }, UpdateFunc: func(any, any) { w.poke() }, DeleteFunc: func(any) { w.poke() }}
	for _, inf := range []cache.SharedIndexInformer{svcs.Informer(), pods.Informer(), sl.Informer()} {
		if _, err := inf.AddEventHandler(poke); err != nil {
			w.cancel()
			return err
		}
	}
	factory.Start(ctx.Done())
	ours.Start(ctx.Done())
	go func() {
		defer close(w.done)
		defer factory.Shutdown()
		defer ours.Shutdown()
		if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced, pods.Informer().HasSynced, sl.Informer().HasSynced) {
			return
		}
		for {
			w.reconcile(ctx, svcs.Lister().List, pods.Lister().List, sl.Lister().List)
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
		}
	}()
	return nil
}

func (w *sliceWriter) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// stop ends the watch and waits for a running reconcile to return.
func (w *sliceWriter) stop() {
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
}

type listFunc[T any] func(labels.Selector) ([]T, error)

// reconcile makes the slices match every Service's pods.
func (w *sliceWriter) reconcile(ctx context.Context, services listFunc[*corev1.Service], pods listFunc[*corev1.Pod], existing listFunc[*discoveryv1.EndpointSlice]) {
	svcs, err := services(labels.Everything())
	if err != nil {
		w.logger.Error("endpoint slices: listing Services", "error", err)
		return
	}
	allPods, err := pods(labels.Everything())
	if err != nil {
		w.logger.Error("endpoint slices: listing pods", "error", err)
		return
	}
	have, err := existing(labels.Everything())
	if err != nil {
		w.logger.Error("endpoint slices: listing slices", "error", err)
		return
	}
	want := map[string]*discoveryv1.EndpointSlice{} // by namespace/name
	for _, svc := range svcs {
		for _, s := range desiredSlices(svc, allPods, w.skip) {
			want[s.Namespace+"/"+s.Name] = s
		}
	}
	current := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range have {
		current[s.Namespace+"/"+s.Name] = s
	}
	keys := slices.Sorted(maps.Keys(want))
	for _, k := range keys {
		desired, cur := want[k], current[k]
		var err error
		switch {
		case cur == nil:
			_, err = w.kube.DiscoveryV1().EndpointSlices(desired.Namespace).Create(ctx, desired, metav1.CreateOptions{})
		case !sameSlice(cur, desired):
			next := cur.DeepCopy()
			next.Labels, next.OwnerReferences, next.Endpoints, next.Ports = desired.Labels, desired.OwnerReferences, desired.Endpoints, desired.Ports
			_, err = w.kube.DiscoveryV1().EndpointSlices(desired.Namespace).Update(ctx, next, metav1.UpdateOptions{})
		default:
			continue
		}
		w.wrote(k, err)
	}
	for k, cur := range current {
		if want[k] == nil {
			err := w.kube.DiscoveryV1().EndpointSlices(cur.Namespace).Delete(ctx, cur.Name, metav1.DeleteOptions{})
			if apierrors.IsNotFound(err) {
				err = nil
			}
			w.wrote(k, err)
		}
	}
}

func (w *sliceWriter) wrote(slice string, err error) {
	switch {
	case err == nil:
	case apierrors.IsNotFound(err), apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		// A namespace going away, or an informer behind: the next event
		// brings another look.
		w.logger.Debug("endpoint slices: writing", "slice", slice, "error", err)
		w.poke()
	default:
		w.logger.Error("endpoint slices: writing", "slice", slice, "error", err)
	}
}

func sameSlice(a, b *discoveryv1.EndpointSlice) bool {
	return equality.Semantic.DeepEqual(a.Labels, b.Labels) && equality.Semantic.DeepEqual(a.OwnerReferences, b.OwnerReferences) &&
		equality.Semantic.DeepEqual(a.Endpoints, b.Endpoints) && equality.Semantic.DeepEqual(a.Ports, b.Ports)
}

// desiredSlices are the slices of svc as the EndpointSlice controller would
// write them: none for a Service without selector; else one slice per
// distinct mapping of the Service's ports to the pods' ports (a named
// targetPort may resolve differently per pod), listing every selected pod
// that has an IP and has not ended (ShouldPodBeInEndpoints with
// terminating pods included), with its conditions ready (Ready and not
// terminating, or the Service publishes not-ready addresses), serving
// (Ready) and terminating, its node and a targetRef to it.
func desiredSlices(svc *corev1.Service, pods []*corev1.Pod, skip func(*corev1.Pod) bool) []*discoveryv1.EndpointSlice {
	if len(svc.Spec.Selector) == 0 || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	groups := map[string]*discoveryv1.EndpointSlice{}
	for _, pod := range pods {
		if pod.Namespace != svc.Namespace || !sel.Matches(labels.Set(pod.Labels)) || pod.Status.PodIP == "" ||
			pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || skip(pod) {
			continue
		}
		ports, ok := slicePorts(svc, pod)
		if !ok {
			continue
		}
		key := portsKey(ports)
		s := groups[key]
		if s == nil {
			s = &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Namespace: svc.Namespace,
					Labels: map[string]string{
						discoveryv1.LabelServiceName: svc.Name,
						discoveryv1.LabelManagedBy:   SlicesManagedBy,
					},
					OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
						Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}},
				},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports:       ports,
			}
			groups[key] = s
		}
		ready := podReady(pod)
		terminating := pod.DeletionTimestamp != nil
		ep := discoveryv1.Endpoint{
			Addresses: []string{pod.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{
				Ready:       ptr.To((ready && !terminating) || svc.Spec.PublishNotReadyAddresses),
				Serving:     ptr.To(ready),
				Terminating: ptr.To(terminating),
			},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		}
		if pod.Spec.NodeName != "" {
			ep.NodeName = ptr.To(pod.Spec.NodeName)
		}
		s.Endpoints = append(s.Endpoints, ep)
	}
	keys := slices.Sorted(maps.Keys(groups))
	out := make([]*discoveryv1.EndpointSlice, 0, len(keys))
	for i, k := range keys {
		s := groups[k]
		s.Name = svc.Name + "-local"
		if i > 0 {
			s.Name += "-" + strconv.Itoa(i)
		}
		sort.Slice(s.Endpoints, func(a, b int) bool { return s.Endpoints[a].Addresses[0] < s.Endpoints[b].Addresses[0] })
		out = append(out, s)
	}
	return out
}

// slicePorts are the Service's ports as a slice lists them for pod: the
// name, protocol and appProtocol of the Service port and the pod's port
// its targetPort resolves to (FindPort: a number as it is, a name looked
// up in the pod's containers). A pod that lacks a named port is left out,
// as the controller leaves it out.
func slicePorts(svc *corev1.Service, pod *corev1.Pod) ([]discoveryv1.EndpointPort, bool) {
	var out []discoveryv1.EndpointPort
	for _, sp := range svc.Spec.Ports {
		port, ok := findPort(pod, sp)
		if !ok {
			return nil, false
		}
		protocol := sp.Protocol
		if protocol == "" {
			protocol = corev1.ProtocolTCP
		}
		out = append(out, discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Port: ptr.To(port), Protocol: ptr.To(protocol), AppProtocol: sp.AppProtocol})
	}
	return out, true
}

func findPort(pod *corev1.Pod, sp corev1.ServicePort) (int32, bool) {
	switch sp.TargetPort.Type {
	case intstr.String:
		name := sp.TargetPort.StrVal
		if name == "" {
			return sp.Port, true
		}
		want := protocolOr(sp.Protocol, corev1.ProtocolTCP)
		for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
			for _, p := range c.Ports {
				if p.Name == name && protocolOr(p.Protocol, corev1.ProtocolTCP) == want {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	default:
		if sp.TargetPort.IntVal == 0 {
			return sp.Port, true
		}
		return sp.TargetPort.IntVal, true
	}
}

func portsKey(ports []discoveryv1.EndpointPort) string {
	var parts []string
	for _, p := range ports {
		parts = append(parts, fmt.Sprintf("%s/%d", *p.Name, *p.Port))
	}
	return strings.Join(parts, ",")
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func protocolOr(p, def corev1.Protocol) corev1.Protocol {
	if p == "" {
		return def
	}
	return p
}
