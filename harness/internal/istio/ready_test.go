package istio

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestDeploymentAvailable(t *testing.T) {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Generation: 2},
		Status: appsv1.DeploymentStatus{
			ObservedGeneration: 2, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}},
		},
	}
	cs := fake.NewClientset(d)
	ok, state, err := deploymentAvailable(context.Background(), cs, "istio-system", "istiod")
	if err != nil || !ok {
		t.Errorf("available Deployment: ok=%v state=%q err=%v", ok, state, err)
	}

	// Available, but the controller has not seen the latest spec yet.
	d.Generation = 3
	d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionFalse, Reason: "MinimumReplicasUnavailable", Message: "Deployment does not have minimum availability."}}
	cs = fake.NewClientset(d)
	ok, state, err = deploymentAvailable(context.Background(), cs, "istio-system", "istiod")
	if err != nil || ok {
		t.Errorf("unavailable Deployment: ok=%v err=%v", ok, err)
	}
	for _, want := range []string{"generation 3 observed 2", "Available=False", "MinimumReplicasUnavailable"} {
		if !strings.Contains(state, want) {
			t.Errorf("state %q lacks %q", state, want)
		}
	}
}

// injectorFake is a clientset whose pod admission behaves like Istio's
// injector: dry-run pod creates come back with an istio-proxy native
// sidecar once `readyAfter` attempts have failed as a starting webhook does.
func injectorFake(t *testing.T, readyAfter int32) (*fake.Clientset, *atomic.Int32) {
	cs := fake.NewClientset()
	var attempts atomic.Int32
	cs.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ns := a.(k8stesting.CreateAction).GetObject().(*corev1.Namespace)
		if ns.Name == "" {
			ns.Name = ns.GenerateName + "x1"
		}
		return false, nil, nil // let the tracker store it
	})
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca := a.(k8stesting.CreateActionImpl)
		opts := ca.GetCreateOptions()
		if len(opts.DryRun) != 1 || opts.DryRun[0] != metav1.DryRunAll {
			t.Errorf("probe pod created without server-side dry run: %+v", opts)
		}
		n := attempts.Add(1)
		if n <= readyAfter {
			return true, nil, apierrors.NewInternalError(errWebhook)
		}
		pod := ca.GetObject().(*corev1.Pod).DeepCopy()
		always := corev1.ContainerRestartPolicyAlways
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.30.3", RestartPolicy: &always})
		return true, pod, nil
	})
	return cs, &attempts
}

var errWebhook = &webhookError{}

type webhookError struct{}

func (*webhookError) Error() string {
	return `failed calling webhook "namespace.sidecar-injector.istio.io": connection refused`
}

func TestWaitInjectionSucceedsOnceTheWebhookInjects(t *testing.T) {
	cs, attempts := injectorFake(t, 1)
	in, err := New(nil, WithRevision("canary"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var createdNS *corev1.Namespace
	cs.PrependReactor("delete", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj, err := cs.Tracker().Get(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, "", a.(k8stesting.DeleteAction).GetName())
		if err == nil {
			createdNS = obj.(*corev1.Namespace)
		}
		return false, nil, nil
	})
	if err := in.waitInjection(ctx, cs, "canary", "1.30.3"); err != nil {
		t.Fatal(err)
	}
	if attempts.Load() != 2 {
		t.Errorf("%d dry-run creates, want 2 (one refused, one injected)", attempts.Load())
	}
	if createdNS == nil {
		t.Fatal("probe namespace not deleted after the check")
	}
	if createdNS.Labels["istio.io/rev"] != "canary" || createdNS.Labels["istio-injection"] != "" {
		t.Errorf("probe namespace labels %v, want istio.io/rev=canary only", createdNS.Labels)
	}
	list, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("namespaces left after the check: %v (err %v)", list.Items, err)
	}
}

func TestWaitInjectionTimesOutWithLastState(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ns := a.(k8stesting.CreateAction).GetObject().(*corev1.Namespace)
		ns.Name = ns.GenerateName + "x2"
		if ns.Labels["istio-injection"] != "enabled" {
			t.Errorf("default-revision probe namespace labels %v, want istio-injection=enabled", ns.Labels)
		}
		return false, nil, nil
	})
	// Admission lets the pod through untouched: the webhook does not match.
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, a.(k8stesting.CreateAction).GetObject(), nil
	})
	in, err := New(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err = in.waitInjection(ctx, cs, "", "1.30.3")
	if err == nil {
		t.Fatal("waitInjection succeeded without injection")
	}
	for _, want := range []string{`revision "default"`, "last observed: pod admitted without istio-proxy; containers: probe"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestPollRequiresABound(t *testing.T) {
	err := poll(context.Background(), "anything", func(context.Context) (bool, string, error) { return true, "", nil })
	if err == nil || !strings.Contains(err.Error(), "no deadline") {
		t.Errorf("unbounded poll: err = %v, want a refusal", err)
	}
}

// A node agent is ready once every node that should run it has an updated,
// ready pod of its latest spec, as `kubectl rollout status daemonset`
// decides; each other state says what is missing.
func TestDaemonSetRolledOut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		gen    int64
		status appsv1.DaemonSetStatus
		ok     bool
		want   string
	}{
		{"ready everywhere", 2, appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, CurrentNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberReady: 3, NumberAvailable: 3}, true, "ready on every node"},
		{"spec not observed", 3, appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberReady: 3, NumberAvailable: 3}, false, "latest spec is not observed"},
		{"no node", 1, appsv1.DaemonSetStatus{ObservedGeneration: 1}, false, "no node runs it"},
		{"rolling", 2, appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 1, NumberReady: 3, NumberAvailable: 3}, false, "1 of 3 nodes updated"},
		{"one not ready", 2, appsv1.DaemonSetStatus{ObservedGeneration: 2, DesiredNumberScheduled: 3, UpdatedNumberScheduled: 3, NumberReady: 2, NumberAvailable: 2}, false, "2 of 3 nodes have a ready pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: ZtunnelDaemonSet, Generation: tc.gen}, Status: tc.status}
			ok, state, err := daemonSetRolledOut(context.Background(), fake.NewClientset(ds), "istio-system", ZtunnelDaemonSet)
			if err != nil || ok != tc.ok || !strings.Contains(state, tc.want) {
				t.Errorf("= %t %q %v; want %t and a state saying %q", ok, state, err, tc.ok, tc.want)
			}
		})
	}
	if _, _, err := daemonSetRolledOut(context.Background(), fake.NewClientset(), "istio-system", CNIDaemonSet); !apierrors.IsNotFound(err) {
		t.Errorf("a missing DaemonSet: %v, want NotFound", err)
	}
}

// The ambient Installer needs the cni and ztunnel charts too, and refuses
// a revision (its node agents serve every revision of a node).
func TestAmbientOptions(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{baseChart, istiodChart} {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "Chart.yaml"), []byte("apiVersion: v2\nname: "+name+"\nversion: 1.0.0\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(nil, WithChartsDir(dir)); err != nil {
		t.Errorf("sidecar charts only, no ambient: %v", err)
	}
	_, err := New(nil, WithChartsDir(dir), WithAmbient(true))
	if err == nil || !strings.Contains(err.Error(), "no cni chart") || !strings.Contains(err.Error(), "no ztunnel chart") {
		t.Errorf("ambient without its charts: %v", err)
	}
	if _, err := New(nil, WithAmbient(true), WithRevision("r1")); err == nil || !strings.Contains(err.Error(), "ambient mode") {
		t.Errorf("ambient with a revision: %v", err)
	}
}
