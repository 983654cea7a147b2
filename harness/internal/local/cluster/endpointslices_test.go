package cluster

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func slicePod(name, ip string, ready bool, mutate ...func(*corev1.Pod)) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: "uid-" + "name", Labels: map[string]string{"app": "b"}},
		Spec: corev1.PodSpec{NodeName: "node-0", Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
			{Name: "web", ContainerPort: 18080}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// The slices list what the EndpointSlice controller would: selected pods
// with an IP that have not ended, with their conditions, ports resolved per
// pod; the pods skip names are left out.
func TestDesiredSlices(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "ns", UID: "svc-uid"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "b"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 8080, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr.To("http")},
			{Name: "named", Port: 80, TargetPort: intstr.FromString("web")},
		}},
	}
	now := metav1.NewTime(time.Now())
	pods := []*corev1.Pod{
		slicePod("ready", "10.244.0.5", true),
		slicePod("starting", "10.244.0.6", false),
		slicePod("terminating", "10.244.0.7", true, func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
		slicePod("no-ip", "", true),
		slicePod("done", "10.244.0.8", false, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		slicePod("proxyless", "10.244.0.9", true),
		slicePod("other", "10.244.0.10", true, func(p *corev1.Pod) { p.Labels = map[string]string{"app": "c"} }),
		slicePod("no-named-port", "10.244.0.11", true, func(p *corev1.Pod) { p.Spec.Containers[0].Ports = nil }),
	}
	got := desiredSlices(svc, pods, func(p *corev1.Pod) bool { return p.Name == "proxyless" })
	if len(got) != 1 {
		t.Fatalf("%d slices, want 1", len(got))
	}
	s := got[0]
	if s.Name != "b-local" || s.Labels[discoveryv1.LabelServiceName] != "b" || s.Labels[discoveryv1.LabelManagedBy] != SlicesManagedBy ||
		s.OwnerReferences[0].UID != "svc-uid" || s.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("slice meta %+v", s.ObjectMeta)
	}
	if len(s.Ports) != 2 || *s.Ports[0].Port != 8080 || *s.Ports[0].AppProtocol != "http" || *s.Ports[1].Port != 18080 || *s.Ports[1].Name != "named" {
		t.Errorf("ports %+v", s.Ports)
	}
	want := map[string][3]bool{ // ready, serving, terminating
		"10.244.0.5": {true, true, false},
		"10.244.0.6": {false, false, false},
		"10.244.0.7": {false, true, true},
	}
	if len(s.Endpoints) != len(want) {
		t.Fatalf("endpoints %+v, want %v", s.Endpoints, want)
	}
	for _, ep := range s.Endpoints {
		c, ok := want[ep.Addresses[0]]
		if !ok {
			t.Errorf("unexpected endpoint %s", ep.Addresses[0])
			continue
		}
		if *ep.Conditions.Ready != c[0] || *ep.Conditions.Serving != c[1] || *ep.Conditions.Terminating != c[2] {
			t.Errorf("%s: conditions %+v, want ready/serving/terminating %v", ep.Addresses[0], ep.Conditions, c)
		}
		if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || *ep.NodeName != "node-0" {
			t.Errorf("%s: targetRef %+v, node %v", ep.Addresses[0], ep.TargetRef, ep.NodeName)
		}
	}
	if got := desiredSlices(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}}, pods, nil); got != nil {
		t.Errorf("a Service without selector got slices %v", got)
	}
}
