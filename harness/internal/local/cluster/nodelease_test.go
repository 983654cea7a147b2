package cluster_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// kwok renews every node's Lease as a kubelet does, so the node lifecycle
// controller never finds a node unhealthy (after its 50s grace period it
// would mark every pod on it not ready, and steps would find no ready pod).
func TestNodeLeasesAreRenewed(t *testing.T) {
	nodes, err := kube.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		t.Fatalf("nodes: %v (%d)", err, len(nodes.Items))
	}
	name := nodes.Items[0].Name
	var first time.Time
	until(t, 30*time.Second, "the Lease of node "+name, func(ctx context.Context) (bool, error) {
		l, err := kube.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil {
			return false, nil
		}
		first = l.Spec.RenewTime.Time
		return true, nil
	})
	// A kubelet renews every quarter of the lease's duration (40s/4).
	until(t, 30*time.Second, "a renewal of node "+name+"'s Lease", func(ctx context.Context) (bool, error) {
		l, err := kube.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
		return err == nil && l.Spec.RenewTime != nil && l.Spec.RenewTime.After(first), nil
	})
}
