package run

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/scenario"
)

// playDaemonSetStatus marks the witness DaemonSet ready on one node, as
// its controller and kubelet would, until ctx ends.
func playDaemonSetStatus(ctx context.Context, c client.Client) {
	for ctx.Err() == nil {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: manifests.WitnessNamespace, Name: manifests.WitnessDaemonSet}, &ds); err == nil && ds.Status.NumberReady == 0 {
			ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: 1, CurrentNumberScheduled: 1, NumberReady: 1, UpdatedNumberScheduled: 1, NumberAvailable: 1}
			c.Status().Update(ctx, &ds)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With wireWitness required on an existing cluster, the setup deploys the
// witness (its namespace and DaemonSet) through the run's ledger, and the
// teardown removes them.
func TestWireWitnessDeployedThroughTheLedger(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "wire-fixtures"
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)
	go playDaemonSetStatus(ctx, env.Client)

	s := loadSuite(t, fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {wireWitness: required}
clusters: [{name: c1, provider: existing, existing: {kubeconfig: none}, istio: {version: 1.30.3}}]
fixtures: {namespace: %s}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
`, ns))
	if got := s.DeployWireWitness(&s.Clusters[0], false); got != scenario.WitnessRequired {
		t.Fatalf("deploy setting %s", got)
	}
	p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
	r, log := newTestRun(t, s, p, withMesh(readyMesh), WithImageDelivery(builtRef("meshproof.local/echo:test")))
	if err := r.Setup(t.Context()); err != nil {
		t.Fatalf("Setup: %v\n%s", err, log)
	}
	if !strings.Contains(log.String(), "wire witness done") {
		t.Errorf("the setup did not say it deployed the witness:\n%s", log)
	}
	rec, err := ledger.ReadFile(filepath.Join(r.Dir(), ledger.FileName))
	if err != nil {
		t.Fatal(err)
	}
	listed := fmt.Sprint(rec)
	for _, want := range []string{manifests.WitnessNamespace, manifests.WitnessDaemonSet} {
		if !strings.Contains(listed, want) {
			t.Errorf("the ledger does not list %s: %s", want, listed)
		}
	}
	if err := r.Teardown(t.Context()); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	var ds appsv1.DaemonSet
	err = env.Client.Get(t.Context(), client.ObjectKey{Namespace: manifests.WitnessNamespace, Name: manifests.WitnessDaemonSet}, &ds)
	var nsObj corev1.Namespace
	nsErr := env.Client.Get(t.Context(), client.ObjectKey{Name: manifests.WitnessNamespace}, &nsObj)
	if !apierrors.IsNotFound(err) && ds.DeletionTimestamp == nil || !apierrors.IsNotFound(nsErr) && nsObj.DeletionTimestamp == nil {
		t.Errorf("after teardown: DaemonSet %v, namespace %v (deleting %v)", err, nsErr, nsObj.DeletionTimestamp)
	}
}
