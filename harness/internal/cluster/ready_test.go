package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func readyNode(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse},
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue},
		}},
	}
}

func notReadyNode(name string) *corev1.Node {
	n := readyNode(name)
	n.Status.Conditions[1].Status = corev1.ConditionFalse
	n.Status.Conditions[1].Reason = "KubeletNotReady"
	n.Status.Conditions[1].Message = "container runtime network not ready"
	return n
}

func systemPod(name string, phase corev1.PodPhase, ready corev1.ConditionStatus) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceSystem},
		Status: corev1.PodStatus{
			Phase:      phase,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}},
		},
	}
}

func readyCluster() []runtime.Object {
	return []runtime.Object{
		readyNode("mp-control-plane"),
		readyNode("mp-worker"),
		systemPod("coredns-1", corev1.PodRunning, corev1.ConditionTrue),
		systemPod("kube-apiserver-mp-control-plane", corev1.PodRunning, corev1.ConditionTrue),
	}
}

const testInterval = 5 * time.Millisecond

func TestWaitUntilReadySucceeds(t *testing.T) {
	objs := append(readyCluster(),
		// A completed pod never becomes Ready and must not block.
		systemPod("job-done", corev1.PodSucceeded, corev1.ConditionFalse),
		// Pods outside kube-system are not the control plane's business.
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"}, Status: corev1.PodStatus{Phase: corev1.PodPending}},
	)
	cs := fake.NewClientset(objs...)
	if err := waitUntilReady(context.Background(), cs, "mp", time.Minute, testInterval); err != nil {
		t.Fatal(err)
	}
}

func TestWaitUntilReadyNamesWhatIsNotReady(t *testing.T) {
	crashing := systemPod("coredns-2", corev1.PodRunning, corev1.ConditionFalse)
	crashing.Status.Conditions[0].Reason = "ContainersNotReady"
	crashing.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name:  "coredns",
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
	}}
	pending := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kindnet-x", Namespace: metav1.NamespaceSystem},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	}
	noCondition := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "mp-worker2"}}
	cs := fake.NewClientset(append(readyCluster(), notReadyNode("mp-worker3"), noCondition, crashing, pending)...)

	err := waitUntilReady(context.Background(), cs, "mp", 50*time.Millisecond, testInterval)
	if err == nil {
		t.Fatal("wait succeeded with unready nodes and pods")
	}
	for _, want := range []string{
		`cluster "mp" not ready after 50ms`,
		"node/mp-worker3 (Ready=False: KubeletNotReady: container runtime network not ready)",
		"node/mp-worker2 (no Ready condition reported)",
		"pod kube-system/coredns-2 (phase Running, Ready=False: ContainersNotReady, coredns: CrashLoopBackOff)",
		"pod kube-system/kindnet-x (phase Pending, no Ready condition reported)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%s", want, err)
		}
	}
	for _, ready := range []string{"mp-control-plane", "coredns-1", "node/mp-worker "} {
		if strings.Contains(err.Error(), ready) {
			t.Errorf("error names %q, which is ready:\n%s", ready, err)
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error does not wrap context.DeadlineExceeded: %v", err)
	}
}

func TestWaitUntilReadyEmptyClusterIsNotReady(t *testing.T) {
	err := waitUntilReady(context.Background(), fake.NewClientset(), "mp", 30*time.Millisecond, testInterval)
	if err == nil || !strings.Contains(err.Error(), "no kube-system pods yet") || !strings.Contains(err.Error(), "no nodes registered yet") {
		t.Fatalf("error = %v, want it to say nothing is registered", err)
	}
}

func TestWaitUntilReadyReportsAPIErrors(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	err := waitUntilReady(context.Background(), cs, "mp", 30*time.Millisecond, testInterval)
	if err == nil || !strings.Contains(err.Error(), "last API error: list nodes: connection refused") {
		t.Fatalf("error = %v, want the last API error", err)
	}
}

func TestWaitUntilReadyBecomesReady(t *testing.T) {
	cs := fake.NewClientset(notReadyNode("mp-control-plane"), systemPod("coredns-1", corev1.PodRunning, corev1.ConditionTrue))
	// The node turns Ready on the third look, as a real one does after
	// the CNI starts.
	lists := 0
	cs.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		lists++
		if lists < 3 {
			return false, nil, nil
		}
		return true, &corev1.NodeList{Items: []corev1.Node{*readyNode("mp-control-plane")}}, nil
	})
	if err := waitUntilReady(context.Background(), cs, "mp", time.Minute, testInterval); err != nil {
		t.Fatal(err)
	}
	if lists != 3 {
		t.Errorf("nodes listed %d times, want 3", lists)
	}
}

func TestWaitUntilReadyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := waitUntilReady(ctx, fake.NewClientset(), "mp", time.Minute, testInterval)
	if err == nil || !strings.Contains(err.Error(), "the wait was cancelled") || !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want a cancellation", err)
	}
}
