package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

var apiServer testsupport.Shared

func TestMain(m *testing.M) { os.Exit(apiServer.Main(m)) }

// fixturesSuite runs on the test API server; its fixtures go into a
// namespace of its own per test.
func fixturesSuite(t *testing.T, namespace string) *scenario.Suite {
	return loadSuite(t, fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c1, provider: existing, existing: {kubeconfig: none}, istio: {version: 1.30.3}}]
fixtures: {namespace: %s}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
`, namespace))
}

// earlierRunsNamespace creates namespace name as an earlier run left it,
// already deleted: on this API server no namespace controller finalizes it,
// so it stays Terminating until the test finalizes it itself.
func earlierRunsNamespace(t *testing.T, env *testsupport.Env, name string) {
	t.Helper()
	ctx := t.Context()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: ownership.Labels("20200101-000000-0badc0de")}}
	if err := env.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
}

// finalize lets a terminating namespace go, as the namespace controller
// does once it emptied it.
func finalize(ctx context.Context, cs kubernetes.Interface, name string) error {
	ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ns.Spec.Finalizers = nil
	_, err = cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{})
	return err
}

// kubeconfigOf is the control plane's kubeconfig, as a provider hands it
// out.
func kubeconfigOf(t *testing.T, env *testsupport.Env) []byte {
	t.Helper()
	data, err := os.ReadFile(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// finalizeTerminating lets every namespace the test left terminating go
// (this API server has no namespace controller), so that the next test's
// leftover sweep does not wait for it.
func finalizeTerminating(t *testing.T, env *testsupport.Env) {
	t.Cleanup(func() { finalizeAll(t, env) })
}

// finalizeAll plays the namespace controller once.
func finalizeAll(t *testing.T, env *testsupport.Env) {
	if err := env.FinalizeTerminating(context.Background()); err != nil {
		t.Logf("%v", err)
	}
}

// readyMesh stands in for Istio: the API server here runs no istiod.
func readyMesh(context.Context, target, *scenario.Cluster, *slog.Logger, []istio.Option) (*mesh.Mesh, error) {
	return nil, nil
}

type builtRef string

func (b builtRef) Deliver(context.Context, support.E2EClusterProvider, *scenario.Cluster, *slog.Logger) (string, error) {
	return string(b), nil
}

// A rerun right after an earlier run: the sweep deletes the earlier run's
// namespace, which takes a while to terminate; deploy waits for it and then
// puts the fixtures into a namespace of the same name.
func TestTerminatingNamespaceDelaysDeploy(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "rerun"
	earlierRunsNamespace(t, env, ns)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	go func() {
		// The namespace controller finishes two seconds after the sweep.
		for t.Context().Err() == nil {
			got, err := cs.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
			if err == nil && got.DeletionTimestamp != nil {
				time.Sleep(2 * time.Second)
				if err := finalize(t.Context(), cs, ns); err != nil {
					t.Errorf("finalizing %s: %v", ns, err)
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)

	p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
	r, log := newTestRun(t, fixturesSuite(t, ns), p, withMesh(readyMesh), WithImageDelivery(builtRef("meshproof.local/echo:test")),
		WithTerminatingTimeout(time.Minute))
	if err := r.Setup(t.Context()); err != nil {
		t.Fatalf("Setup: %v\n%s", err, log)
	}
	if !strings.Contains(log.String(), `removing a leftover of an earlier run cluster=c1 object="Namespace `+ns+`"`) {
		t.Errorf("the sweep did not report the earlier run's namespace:\n%s", log)
	}
	var got corev1.Namespace
	if err := env.Client.Get(t.Context(), client.ObjectKey{Name: ns}, &got); err != nil || got.Labels[ownership.RunIDLabel] != r.ID() {
		t.Errorf("namespace %s after setup: labels %v, %v; want this run's", ns, got.Labels, err)
	}
	if err := r.Teardown(t.Context()); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if _, destroyed := p.counts(); destroyed != 1 {
		t.Errorf("provider destroyed %d times, want 1", destroyed)
	}
	// Teardown deleted the run's namespace; nothing else of the run is left.
	var left appsv1.DeploymentList
	if err := env.Client.List(t.Context(), &left, client.InNamespace(ns)); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := finalize(t.Context(), cs, ns); err != nil && !apierrors.IsNotFound(err) {
		t.Logf("finalizing %s after the test: %v", ns, err)
	}
}

// A namespace that never finishes terminating fails the setup, naming it.
func TestNamespaceThatNeverGoesFailsSetup(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "stuck"
	earlierRunsNamespace(t, env, ns)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	t.Cleanup(func() { _ = finalize(context.Background(), cs, ns) })

	p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
	r, log := newTestRun(t, fixturesSuite(t, ns), p, WithTerminatingTimeout(3*time.Second))
	err := r.Setup(t.Context())
	if err == nil || !strings.Contains(err.Error(), "namespace stuck is still terminating after 3s") {
		t.Fatalf("Setup = %v, want it to name the stuck namespace\n%s", err, log)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "finalizers") {
		t.Errorf("Setup = %v, want it to say what holds the namespace", err)
	}
	if err := r.Teardown(t.Context()); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if _, destroyed := p.counts(); destroyed != 1 {
		t.Errorf("provider destroyed %d times, want 1", destroyed)
	}
}

// Two runs on one cluster: the second waits for the cluster's Lease and
// fails naming the first, without touching the first run's objects; once
// the first is done, a third run gets the cluster.
func TestSecondRunWaitsForTheFirst(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "shared-cluster"
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)
	newRun := func(wait time.Duration) (*Run, *fakeProvider) {
		p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
		r, _ := newTestRun(t, fixturesSuite(t, ns), p, withMesh(readyMesh), WithImageDelivery(builtRef("meshproof.local/echo:test")),
			WithLeaseWait(wait))
		return r, p
	}

	first, _ := newRun(time.Second)
	if err := first.Setup(t.Context()); err != nil {
		t.Fatalf("first run: %v", err)
	}
	second, secondProvider := newRun(3 * time.Second)
	err := second.Setup(t.Context())
	if err == nil || !strings.Contains(err.Error(), first.ID()) {
		t.Fatalf("second run's setup = %v, want it to name the first run %s", err, first.ID())
	}
	if err := second.Teardown(t.Context()); err != nil {
		t.Fatalf("second run's teardown: %v", err)
	}
	if _, destroyed := secondProvider.counts(); destroyed != 1 {
		t.Errorf("second run's provider destroyed %d times, want 1", destroyed)
	}
	var d appsv1.DeploymentList
	if err := env.Client.List(t.Context(), &d, client.InNamespace(ns), client.MatchingLabels(ownership.Labels(first.ID()))); err != nil || len(d.Items) == 0 {
		t.Fatalf("the first run's Deployments after the second run: %d, %v; want them untouched", len(d.Items), err)
	}

	if err := first.Teardown(t.Context()); err != nil {
		t.Fatalf("first run's teardown: %v", err)
	}
	finalizeAll(t, env) // the fixtures' namespace and meshproof-system, which the first run created

	third, _ := newRun(time.Second)
	if err := third.Setup(t.Context()); err != nil {
		t.Fatalf("a run after the first released the cluster: %v", err)
	}
	if err := third.Teardown(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A namespace the user already has is used, never taken over: after the run
// and its teardown its labels are the user's again and the user's objects
// in it are untouched.
func TestUsersNamespaceUnchangedAfterARun(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "users-own"
	user := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"team": "payments", "istio-injection": "disabled"}}}
	if err := env.Client.Create(t.Context(), user); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "users-config", Namespace: ns}, Data: map[string]string{"k": "v"}}
	if err := env.Client.Create(t.Context(), cm); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)

	p := &fakeProvider{kubeconfig: kubeconfigOf(t, env)}
	r, log := newTestRun(t, fixturesSuite(t, ns), p, withMesh(readyMesh), WithImageDelivery(builtRef("meshproof.local/echo:test")))
	if err := r.Setup(t.Context()); err != nil {
		t.Fatalf("Setup: %v\n%s", err, log)
	}
	var during corev1.Namespace
	if err := env.Client.Get(t.Context(), client.ObjectKey{Name: ns}, &during); err != nil {
		t.Fatal(err)
	}
	if during.Labels["istio-injection"] != "enabled" || during.Labels[ownership.RunIDLabel] != "" {
		t.Errorf("labels during the run %v: want injection enabled for the fixtures and no run id (the namespace is not the run's)", during.Labels)
	}
	if err := r.Teardown(t.Context()); err != nil {
		t.Fatalf("Teardown: %v\n%s", err, log)
	}
	var after corev1.Namespace
	if err := env.Client.Get(t.Context(), client.ObjectKey{Name: ns}, &after); err != nil {
		t.Fatalf("the user's namespace after the run: %v", err)
	}
	if after.DeletionTimestamp != nil || after.Labels["team"] != "payments" || after.Labels["istio-injection"] != "disabled" || len(after.Labels) != 3 {
		t.Errorf("the user's namespace after the run: deleting %v, labels %v; want it as it was", after.DeletionTimestamp, after.Labels)
	}
	var got corev1.ConfigMap
	if err := env.Client.Get(t.Context(), client.ObjectKeyFromObject(cm), &got); err != nil || got.Data["k"] != "v" {
		t.Errorf("the user's ConfigMap after the run: %v, %v", got.Data, err)
	}
	var left appsv1.DeploymentList
	if err := env.Client.List(t.Context(), &left, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, d := range left.Items {
		if d.DeletionTimestamp == nil {
			t.Errorf("the run's Deployment %s is still there", d.Name)
		}
	}
}

// The cluster's Lease is renewed for the whole run, not only while its
// setup runs: between steps (here: well past the Lease's duration after
// the setup returned) a second run still finds the cluster taken.
func TestLeaseOutlivesTheSetup(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "long-run"
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)
	newRun := func() *Run {
		r, _ := newTestRun(t, fixturesSuite(t, ns), &fakeProvider{kubeconfig: kubeconfigOf(t, env)}, withMesh(readyMesh),
			WithImageDelivery(builtRef("meshproof.local/echo:test")), WithLeaseDuration(3*time.Second), WithLeaseWait(time.Second))
		return r
	}
	first := newRun()
	if err := first.Setup(t.Context()); err != nil {
		t.Fatalf("first run: %v", err)
	}
	time.Sleep(5 * time.Second) // the steps would run now; the Lease lasts 3 s unless renewed
	second := newRun()
	if err := second.Setup(t.Context()); err == nil || !strings.Contains(err.Error(), first.ID()) {
		t.Fatalf("second run's setup = %v, want the cluster still held by %s", err, first.ID())
	}
	if err := first.Teardown(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// A run that crashed (it stops renewing its Lease without releasing it,
// and never tears down) blocks the cluster only until its Lease expires;
// the next run then takes the cluster over and removes what the crashed
// run's ledger lists.
func TestCrashedRunIsCleanedUpByTheNext(t *testing.T) {
	env := apiServer.Get(t)
	finalizeTerminating(t, env)
	const ns = "crashed-run"
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go testsupport.PlayDeploymentStatus(ctx, env.Client, ns)
	controller := make(chan struct{})
	go func() { // the namespace controller, which this API server lacks
		defer close(controller)
		for ctx.Err() == nil {
			finalizeAll(t, env)
			time.Sleep(500 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-controller }()
	newRun := func(wait time.Duration) *Run {
		r, _ := newTestRun(t, fixturesSuite(t, ns), &fakeProvider{kubeconfig: kubeconfigOf(t, env)}, withMesh(readyMesh),
			WithImageDelivery(builtRef("meshproof.local/echo:test")), WithLeaseDuration(3*time.Second), WithLeaseWait(wait))
		return r
	}
	crashed := newRun(time.Second)
	if err := crashed.Setup(t.Context()); err != nil {
		t.Fatalf("the run that will crash: %v", err)
	}
	crashed.endLife()       // the process dies: no more renewals...
	crashed.tornDown = true // ...and no teardown
	next := newRun(time.Minute)
	if err := next.Setup(t.Context()); err != nil {
		t.Fatalf("the next run: %v", err)
	}
	var left appsv1.DeploymentList
	if err := env.Client.List(t.Context(), &left, client.MatchingLabels(ownership.Labels(crashed.ID()))); err != nil {
		t.Fatal(err)
	}
	for _, d := range left.Items {
		if d.DeletionTimestamp == nil {
			t.Errorf("the crashed run's Deployment %s/%s is still there", d.Namespace, d.Name)
		}
	}
	var mine appsv1.DeploymentList
	if err := env.Client.List(t.Context(), &mine, client.MatchingLabels(ownership.Labels(next.ID()))); err != nil || len(mine.Items) == 0 {
		t.Errorf("the next run's fixtures: %d Deployments, %v", len(mine.Items), err)
	}
	if err := next.Teardown(t.Context()); err != nil {
		t.Fatal(err)
	}
}
