package testsupport

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The control plane has no controller manager: a test that needs what the
// Deployment controller and the kubelets would have written plays them
// with these helpers, on the real API server.

// ReplicaSetOf creates (or, if it exists, updates) the ReplicaSet the
// Deployment controller keeps for d's current pod template: named
// <d>-<hash>, the template's labels and the selector extended with
// pod-template-hash=<hash> (hash stands for the hash the controller
// computes), controlled by d, with replicas in its spec and all of them
// available in its status.
func ReplicaSetOf(ctx context.Context, c client.Client, d *appsv1.Deployment, hash string, replicas int32) (*appsv1.ReplicaSet, error) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: d.Name + "-" + hash}}
	template := *d.Spec.Template.DeepCopy()
	template.Labels = withLabel(template.Labels, appsv1.DefaultDeploymentUniqueLabelKey, hash)
	selector := d.Spec.Selector.DeepCopy()
	selector.MatchLabels = withLabel(selector.MatchLabels, appsv1.DefaultDeploymentUniqueLabelKey, hash)
	err := c.Get(ctx, client.ObjectKeyFromObject(rs), rs)
	switch {
	case apierrors.IsNotFound(err):
		rs.Labels = template.Labels
		rs.OwnerReferences = []metav1.OwnerReference{controllerRef(d, "Deployment")}
		rs.Spec = appsv1.ReplicaSetSpec{Replicas: ptr.To(replicas), Selector: selector, Template: template}
		if err := c.Create(ctx, rs); err != nil {
			return nil, fmt.Errorf("creating ReplicaSet %s/%s: %w", rs.Namespace, rs.Name, err)
		}
	case err != nil:
		return nil, err
	default:
		rs.Spec.Replicas = ptr.To(replicas)
		if err := c.Update(ctx, rs); err != nil {
			return nil, fmt.Errorf("scaling ReplicaSet %s/%s: %w", rs.Namespace, rs.Name, err)
		}
	}
	rs.Status = appsv1.ReplicaSetStatus{ObservedGeneration: rs.Generation, Replicas: replicas, FullyLabeledReplicas: replicas,
		ReadyReplicas: replicas, AvailableReplicas: replicas}
	if err := c.Status().Update(ctx, rs); err != nil {
		return nil, fmt.Errorf("writing the status of ReplicaSet %s/%s: %w", rs.Namespace, rs.Name, err)
	}
	return rs, nil
}

// PodOf creates a pod of rs, named name, from its template and controlled
// by it, and marks it running and ready as a kubelet would.
func PodOf(ctx context.Context, c client.Client, rs *appsv1.ReplicaSet, name string) (*corev1.Pod, error) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: rs.Namespace, Name: name, Labels: rs.Spec.Template.Labels,
			Annotations: rs.Spec.Template.Annotations, OwnerReferences: []metav1.OwnerReference{controllerRef(rs, "ReplicaSet")}},
		Spec: *rs.Spec.Template.Spec.DeepCopy(),
	}
	if err := c.Create(ctx, pod); err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := c.Status().Update(ctx, pod); err != nil {
		return nil, fmt.Errorf("marking pod %s/%s ready: %w", pod.Namespace, pod.Name, err)
	}
	return pod, nil
}

func withLabel(labels map[string]string, key, value string) map[string]string {
	out := map[string]string{key: value}
	for k, v := range labels {
		if k != key {
			out[k] = v
		}
	}
	return out
}

func controllerRef(owner metav1.Object, kind string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: owner.GetName(), UID: owner.GetUID(),
		Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
}

// PlayDeploymentStatus writes, until ctx ends, the status the Deployment
// controller writes once every replica is available, for every Deployment
// in namespace: enough for code that waits for a rollout without looking
// at ReplicaSets or pods.
func PlayDeploymentStatus(ctx context.Context, c client.Client, namespace string) {
	for ctx.Err() == nil {
		var list appsv1.DeploymentList
		if err := c.List(ctx, &list, client.InNamespace(namespace)); err == nil {
			for i := range list.Items {
				d := &list.Items[i]
				n := ptr.Deref(d.Spec.Replicas, 1)
				d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
				_ = c.Status().Update(ctx, d)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
