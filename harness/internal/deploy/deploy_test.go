package deploy_test

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/internal/deploy"
)

func TestRolloutPending(t *testing.T) {
	rolledOut := func(n int32) appsv1.DeploymentStatus {
		return appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
	}
	tests := []struct {
		name     string
		replicas *int32
		status   appsv1.DeploymentStatus
		want     string
	}{
		{"just created: no status yet", ptr.To(int32(1)), appsv1.DeploymentStatus{}, "the controller has not seen the latest spec"},
		{"spec changed since the controller looked", ptr.To(int32(1)), appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1},
			"the controller has not seen the latest spec"},
		{"no replica updated yet", ptr.To(int32(2)), appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, AvailableReplicas: 2}, "0 of 2 replicas updated"},
		{"one of two updated", ptr.To(int32(2)), appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 1, AvailableReplicas: 2}, "1 of 2 replicas updated"},
		{"old replica still terminating", ptr.To(int32(2)), appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 3, UpdatedReplicas: 2, AvailableReplicas: 2},
			"1 old replicas still terminating"},
		{"updated but not available", ptr.To(int32(2)), appsv1.DeploymentStatus{ObservedGeneration: 2, Replicas: 2, UpdatedReplicas: 2, AvailableReplicas: 1},
			"1 of 2 updated replicas available"},
		{"rolled out", ptr.To(int32(2)), rolledOut(2), ""},
		{"unset replicas mean one: pending", nil, appsv1.DeploymentStatus{ObservedGeneration: 2}, "0 of 1 replicas updated"},
		{"unset replicas mean one: rolled out", nil, rolledOut(1), ""},
		{"scaled to zero", ptr.To(int32(0)), appsv1.DeploymentStatus{ObservedGeneration: 2}, ""},
		{"observed a newer generation than stored", ptr.To(int32(1)), appsv1.DeploymentStatus{ObservedGeneration: 3, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: "service-a", Generation: 2},
				Spec:       appsv1.DeploymentSpec{Replicas: tt.replicas},
				Status:     tt.status,
			}
			if got := deploy.RolloutPending(d); got != tt.want {
				t.Errorf("RolloutPending = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSelectors(t *testing.T) {
	run := deploy.RunSelector("20260101-000000-aabbccdd")
	if got, want := run.String(), "app.kubernetes.io/managed-by=meshproof,meshproof.dev/run-id=20260101-000000-aabbccdd"; got != want {
		t.Errorf("RunSelector = %q, want %q", got, want)
	}
	left := deploy.LeftoversSelector("20260101-000000-aabbccdd")
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"app.kubernetes.io/managed-by": "meshproof", "meshproof.dev/run-id": "earlier"}, true},
		// No run id: managed across runs (the istio-system namespace meshproof
		// created for Istio, the cacerts secret); a later run must not sweep it.
		{map[string]string{"app.kubernetes.io/managed-by": "meshproof"}, false},
		{map[string]string{"app.kubernetes.io/managed-by": "meshproof", "meshproof.dev/run-id": "20260101-000000-aabbccdd"}, false},
		{map[string]string{"app.kubernetes.io/managed-by": "helm", "meshproof.dev/run-id": "earlier"}, false},
		{map[string]string{}, false},
	} {
		if got := left.Matches(labels.Set(tc.labels)); got != tc.want {
			t.Errorf("LeftoversSelector(current).Matches(%v) = %v, want %v", tc.labels, got, tc.want)
		}
	}
}
