package engine

// The move's Deployment patch and its checks of the pods, against a real
// API server (no controller-manager or kubelet: the test plays them).

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/scenario"
)

// moveSuite is an ambient suite in a namespace of the test's own whose
// scenario moves service-a to ambient.
func moveSuite(t *testing.T) (*scenario.Suite, string) {
	t.Helper()
	ns := "move-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		ns = strings.Trim(ns[:50], "-")
	}
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, profile: ambient}}]
fixtures:
  namespace: %s
  workloads: [{name: service-a}, {name: amb, dataPlane: ambient}]
scenarios:
- name: s
  steps:
  - moveDataPlane: {workloads: [service-a], to: ambient}
`, ns)
	s, err := scenario.Load("engine.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	env.EnsureNamespace(t, ns)
	return s, ns
}

// rollOut plays the Deployment controller and the kubelet once the
// template changed: the status rolled out, the old pods gone and one new
// pod, made by pod from the template, running and ready.
func rollOut(t *testing.T, d *appsv1.Deployment, pod func(template corev1.PodTemplateSpec) *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	var cur appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), &cur); err != nil {
		t.Fatal(err)
	}
	cur.Status = appsv1.DeploymentStatus{ObservedGeneration: cur.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
	if err := env.Client.Status().Update(ctx, &cur); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(d.Namespace), client.MatchingLabels{"app": d.Name}, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	p := pod(cur.Spec.Template)
	p.Name, p.Namespace = fmt.Sprintf("%s-%d", d.Name, cur.Generation), d.Namespace
	status := p.Status
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.Status = status
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if err := env.Client.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
}

// A move patches only the keys of the pod template that put a pod on its
// data plane (the user's labels and annotations stay), waits until the
// new pod is on ambient (enrolled, no istio-proxy) and names a pod that is
// not; RestoreDataPlanes puts the template back as the file declares it.
func TestMoveDataPlanePatchAndRestore(t *testing.T) {
	s, ns := moveSuite(t)
	sc := &s.Scenarios[0]
	ctx := context.Background()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "service-a"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "service-a", "team": "shop"}, Annotations: map[string]string{"note": "kept"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}},
			},
		},
	}
	if err := env.Client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, s, nil)
	after := e.withSuite(s.AtStep(sc, 0))
	if err := after.patchDataPlanes(ctx, []string{"service-a"}, scenario.DataPlaneAmbient); err != nil {
		t.Fatal(err)
	}
	template := func() corev1.PodTemplateSpec {
		var cur appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), &cur); err != nil {
			t.Fatal(err)
		}
		return cur.Spec.Template
	}
	got := template()
	if fmt.Sprint(got.Labels) != "map[app:service-a istio.io/dataplane-mode:ambient sidecar.istio.io/inject:false team:shop]" ||
		fmt.Sprint(got.Annotations) != "map[note:kept sidecar.istio.io/inject:false]" {
		t.Errorf("after the move to ambient: labels %v, annotations %v", got.Labels, got.Annotations)
	}

	// A new pod that still has a sidecar (an injector that ignored the
	// label) is named.
	rollOut(t, d, func(tpl corev1.PodTemplateSpec) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: tpl.Labels, Annotations: map[string]string{manifests.AmbientRedirectionAnnotation: manifests.AmbientRedirectionEnabled}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}, {Name: "istio-proxy", Image: "proxyv2"}}}}
	})
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := after.awaitMoved(short, []string{"service-a"}, scenario.DataPlaneAmbient)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "pod "+ns+"/service-a-2 of service-a is on sidecar") {
		t.Errorf("awaitMoved with a sidecar pod = %v", err)
	}
	// An enrolled pod without one is on ambient.
	rollOut(t, d, func(tpl corev1.PodTemplateSpec) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: tpl.Labels, Annotations: map[string]string{manifests.AmbientRedirectionAnnotation: manifests.AmbientRedirectionEnabled}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}}}}
	})
	if err := after.awaitMoved(ctx, []string{"service-a"}, scenario.DataPlaneAmbient); err != nil {
		t.Errorf("awaitMoved with the enrolled pod: %v", err)
	}

	// Back to the file's sidecar: the two labels and the annotation go,
	// nothing else; the restore waits for a pod with istio-proxy.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			var cur appsv1.Deployment
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), &cur); err == nil && cur.Spec.Template.Labels[manifests.DataplaneModeLabel] == "" {
				rollOut(t, d, func(tpl corev1.PodTemplateSpec) *corev1.Pod {
					return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: tpl.Labels, Annotations: map[string]string{"sidecar.istio.io/status": "{}"}},
						Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "x"}, {Name: "istio-proxy", Image: "proxyv2"}}}}
				})
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	restoreCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := e.RestoreDataPlanes(restoreCtx, sc); err != nil {
		t.Errorf("RestoreDataPlanes: %v", err)
	}
	<-done
	got = template()
	if fmt.Sprint(got.Labels) != "map[app:service-a team:shop]" || fmt.Sprint(got.Annotations) != "map[note:kept]" {
		t.Errorf("after the restore: labels %v, annotations %v", got.Labels, got.Annotations)
	}
	// Already as the file says: nothing to do.
	if err := e.RestoreDataPlanes(restoreCtx, sc); err != nil {
		t.Errorf("a second RestoreDataPlanes: %v", err)
	}
}
