package run

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/internal/wire"
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
	finalizeAll(t, env)
}

// denyHostNetwork makes the API server refuse host-network pods in the
// witness's namespace, as a cluster's policy engine would, until the test
// ends.
func denyHostNetwork(t *testing.T, c client.Client) {
	t.Helper()
	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "run-no-host-network"},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{Operations: []admissionv1.OperationType{admissionv1.Create},
					Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}}},
			Validations: []admissionv1.Validation{{Expression: "!has(object.spec.hostNetwork) || !object.spec.hostNetwork", Message: "host network is not allowed here"}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "run-no-host-network"},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: policy.Name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: manifests.WitnessNamespace}}}},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := c.Create(t.Context(), o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Delete(context.Background(), o) })
	}
	// In force once the API server has loaded it: a dry run says.
	if err := wait.For(func(ctx context.Context) (bool, error) {
		err := wire.Admitted(ctx, c, "probe", "meshproof.local/echo:test")
		return err != nil && strings.Contains(err.Error(), "host network is not allowed here"), nil
	}, wait.WithContext(t.Context()), wait.WithInterval(100*time.Millisecond), wait.WithTimeout(30*time.Second)); err != nil {
		t.Fatalf("the policy is not in force: %v", err)
	}
}

// Where admission refuses the witness's pod: with wireWitness on the setup
// says so and goes on (every request will carry not-captured); with
// required it fails, in the admission's words.
func TestWireWitnessRefusedByAdmission(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	// The namespace exists (as the user's would): a dry run needs it.
	env.EnsureNamespace(t, manifests.WitnessNamespace)
	denyHostNetwork(t, env.Client)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	for _, c := range []struct {
		setting string
		wantErr bool
	}{{"on", false}, {"required", true}} {
		ns := "wire-refused-" + c.setting
		go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)
		s := loadSuite(t, fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {wireWitness: %s}
clusters: [{name: c1, provider: existing, existing: {kubeconfig: none}, istio: {version: 1.30.3}}]
fixtures: {namespace: %s}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
`, c.setting, ns))
		p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
		r, log := newTestRun(t, s, p, withMesh(readyMesh), WithImageDelivery(builtRef("meshproof.local/echo:test")))
		err := r.Setup(t.Context())
		switch {
		case c.wantErr && (err == nil || !strings.Contains(err.Error(), "wireWitness is required") || !strings.Contains(err.Error(), "host network is not allowed here")):
			t.Errorf("%s: Setup = %v, want the admission's refusal\n%s", c.setting, err, log)
		case !c.wantErr && (err != nil || !strings.Contains(log.String(), "the wire witness cannot run") || !strings.Contains(log.String(), "host network is not allowed here")):
			t.Errorf("%s: Setup = %v, want it to go on saying the witness cannot run\n%s", c.setting, err, log)
		}
		if err := r.Teardown(t.Context()); err != nil {
			t.Fatalf("Teardown: %v", err)
		}
		finalizeAll(t, env) // the namespaces the run created, as the namespace controller would
	}
}
