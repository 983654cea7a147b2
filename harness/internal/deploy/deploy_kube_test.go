package deploy_test

// These tests deploy and sweep meshproof's real fixtures on a real
// kube-apiserver with Istio's CRDs (harness/internal/local/controlplane). No controller-manager
// runs there: the tests play the Deployment controller by writing
// Deployment status, and, since no namespace controller finishes a
// namespace's deletion, a deleted namespace stays Terminating.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The API server starts on first use, so that the unit tests of this
// package run without one.
var shared testsupport.Shared

func kube(t *testing.T) *testsupport.Env { t.Helper(); return shared.Get(t) }

func TestMain(m *testing.M) { os.Exit(shared.Main(m)) }

func cluster(e *testsupport.Env) deploy.Cluster {
	return deploy.Cluster{Discovery: e.Discovery, Metadata: e.Metadata}
}

// renderFixtures renders the standard fixtures in namespace ns for a run,
// through the same path a run takes (plan.FixtureOptions, manifests.Render).
func renderFixtures(t *testing.T, ns, runID string) []client.Object {
	t.Helper()
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures: {namespace: %s}
scenarios:
- name: s
  steps: [{wait: {duration: 1s}}]
`, ns)
	s, err := scenario.Load("deploy.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.Render(plan.FixtureOptions(s, &s.Clusters[0], runID, "meshproof.local/echo:test"))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// refString names an object as deploy.ObjectRef.String does.
func refString(o client.Object) string {
	gvk := o.GetObjectKind().GroupVersionKind()
	kind := gvk.Kind
	if gvk.Group != "" {
		kind += "." + gvk.Group
	}
	if o.GetNamespace() == "" {
		return kind + " " + o.GetName()
	}
	return kind + " " + o.GetNamespace() + "/" + o.GetName()
}

func refStrings(refs []deploy.ObjectRef) []string {
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	sort.Strings(out)
	return out
}

func objectStrings(objs []client.Object) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = refString(o)
	}
	sort.Strings(out)
	return out
}

func deploymentKeys(objs []client.Object) []client.ObjectKey {
	var keys []client.ObjectKey
	for _, o := range objs {
		if _, ok := o.(*appsv1.Deployment); ok {
			keys = append(keys, client.ObjectKeyFromObject(o))
		}
	}
	return keys
}

// playDeploymentController writes the status the Deployment controller
// would once every replica of the current template is available.
func playDeploymentController(ctx context.Context, t *testing.T, c client.Client, key client.ObjectKey) {
	t.Helper()
	var d appsv1.Deployment
	if err := c.Get(ctx, key, &d); err != nil {
		t.Fatal(err)
	}
	n := int32(1)
	if d.Spec.Replicas != nil {
		n = *d.Spec.Replicas
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
	if err := c.Status().Update(ctx, &d); err != nil {
		t.Fatalf("writing the status of Deployment %s: %v", key, err)
	}
}

// waitExist polls until every object exists, bounded by ctx.
func waitExist(ctx context.Context, t *testing.T, c client.Client, keys []client.ObjectKey) {
	t.Helper()
	for _, key := range keys {
		for {
			err := c.Get(ctx, key, &appsv1.Deployment{})
			if err == nil {
				break
			}
			if !apierrors.IsNotFound(err) {
				t.Fatalf("waiting for Deployment %s: %v", key, err)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("Deployment %s was never created: %v", key, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// assertGone checks that every object is really deleted, not just marked.
func assertGone(ctx context.Context, t *testing.T, c client.Client, objs []client.Object) {
	t.Helper()
	for _, o := range objs {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(o.GetObjectKind().GroupVersionKind())
		err := c.Get(ctx, client.ObjectKeyFromObject(o), u)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			t.Fatal(err)
		default:
			t.Errorf("%s still exists (deletionTimestamp %v, finalizers %v)", refString(o), u.GetDeletionTimestamp(), u.GetFinalizers())
		}
	}
}

// assertOnlyTerminatingNamespace checks that the only object left of a run
// is its namespace, Terminating because no namespace controller runs here.
func assertOnlyTerminatingNamespace(ctx context.Context, t *testing.T, e *testsupport.Env, runID, ns string) {
	t.Helper()
	left, err := deploy.Find(ctx, e.Discovery, e.Metadata, deploy.RunSelector(runID))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].String() != "Namespace "+ns || !left[0].Terminating {
		t.Fatalf("after the sweep, run %s left %v; want only its namespace %s, terminating", runID, refStrings(left), ns)
	}
	var got corev1.Namespace
	if err := e.Client.Get(ctx, client.ObjectKey{Name: ns}, &got); err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp == nil || got.Status.Phase != corev1.NamespaceTerminating {
		t.Errorf("namespace %s: deletionTimestamp %v, phase %s; want it terminating", ns, got.DeletionTimestamp, got.Status.Phase)
	}
}

func TestFixturesDeployAndSweepLeavesNothingButTheTerminatingNamespace(t *testing.T) {
	e := kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns, runID = "deploy-sweep", "test-sweep-1"
	fixtures := renderFixtures(t, ns, runID)

	// Objects of other types carrying the run's labels, to show that Find
	// and Sweep go through every type discovery reports: a cluster-scoped
	// ClusterRole and an Istio custom resource.
	clusterRole := &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: "meshproof-test-sweep", Labels: ownership.Labels(runID)},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}},
	}
	peerAuth := &securityv1.PeerAuthentication{
		TypeMeta:   metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "PeerAuthentication"},
		ObjectMeta: metav1.ObjectMeta{Name: "meshproof-namespace", Namespace: ns, Labels: ownership.Labels(runID)},
	}
	peerAuth.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}
	// Another run's object, which sweeping this run must not touch.
	otherRun := &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: "meshproof-test-sweep-other-run", Labels: ownership.Labels("test-sweep-other")},
	}
	t.Cleanup(func() {
		if err := e.Client.Delete(context.Background(), otherRun); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})

	// deploy.Fixtures applies and then waits for the rollout; it must still
	// be waiting once the Deployments exist, since nothing has rolled them out.
	done := make(chan error, 1)
	go func() { done <- deploy.Fixtures(ctx, e.Client, fixtures) }()
	deployments := deploymentKeys(fixtures)
	if len(deployments) != 3 {
		t.Fatalf("the fixtures have %d Deployments, want service-a, service-b and legacy", len(deployments))
	}
	waitExist(ctx, t, e.Client, deployments)
	select {
	case err := <-done:
		t.Fatalf("Fixtures returned (error: %v) before any Deployment rolled out", err)
	default:
	}
	for _, key := range deployments {
		playDeploymentController(ctx, t, e.Client, key)
	}
	if err := <-done; err != nil {
		t.Fatalf("Fixtures: %v", err)
	}
	for _, key := range deployments {
		var d appsv1.Deployment
		if err := e.Client.Get(ctx, key, &d); err != nil {
			t.Fatal(err)
		}
		if why := deploy.RolloutPending(&d); why != "" {
			t.Errorf("Fixtures returned with Deployment %s not rolled out: %s", key, why)
		}
	}
	if err := apply.Objects(ctx, e.Client, clusterRole, peerAuth, otherRun); err != nil {
		t.Fatal(err)
	}

	// Find sees every object of the run, of every type, and only those.
	all := append(slices.Clone(fixtures), clusterRole, peerAuth)
	found, err := deploy.Find(ctx, e.Discovery, e.Metadata, deploy.RunSelector(runID))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := refStrings(found), objectStrings(all); !slices.Equal(got, want) {
		t.Fatalf("Find(run %s) =\n  %s\nwant\n  %s", runID, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}

	swept, err := deploy.Sweep(ctx, cluster(e), deploy.RunSelector(runID))
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if got, want := refStrings(swept), objectStrings(all); !slices.Equal(got, want) {
		t.Errorf("Sweep reported\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if last := swept[len(swept)-1]; last.String() != "Namespace "+ns {
		t.Errorf("Sweep deleted %s last; the namespace must go last, after what is in it", last)
	}
	t.Logf("swept %d objects of run %s", len(swept), runID)

	var inside []client.Object
	for _, o := range all {
		if _, isNamespace := o.(*corev1.Namespace); !isNamespace {
			inside = append(inside, o)
		}
	}
	assertGone(ctx, t, e.Client, inside)
	assertOnlyTerminatingNamespace(ctx, t, e, runID, ns)
	if err := e.Client.Get(ctx, client.ObjectKeyFromObject(otherRun), &rbacv1.ClusterRole{}); err != nil {
		t.Errorf("sweeping run %s touched another run's ClusterRole: %v", runID, err)
	}

	// A second sweep finds only the terminating namespace, reports it, and
	// does not fail on it.
	again, err := deploy.Sweep(ctx, cluster(e), deploy.RunSelector(runID))
	if err != nil {
		t.Fatalf("second Sweep: %v", err)
	}
	if len(again) != 1 || again[0].String() != "Namespace "+ns || !again[0].Terminating {
		t.Errorf("second Sweep reported %v, want only the terminating namespace %s", refStrings(again), ns)
	}
}

func TestWaitRolledOutSaysWhatIsPending(t *testing.T) {
	e := kube(t)
	const ns, runID = "deploy-pending", "test-pending-1"
	fixtures := renderFixtures(t, ns, runID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := apply.Objects(ctx, e.Client, fixtures...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := deploy.Sweep(context.Background(), cluster(e), deploy.RunSelector(runID)); err != nil {
			t.Error(err)
		}
	})
	keys := deploymentKeys(fixtures)
	// Only the first Deployment rolls out; the wait must name the second.
	playDeploymentController(ctx, t, e.Client, keys[0])
	short, cancelShort := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancelShort()
	err := deploy.WaitRolledOut(short, e.Client, keys...)
	if err == nil {
		t.Fatal("WaitRolledOut returned nil for Deployments nothing rolled out")
	}
	if want := keys[1].String() + ": the controller has not seen the latest spec"; !strings.Contains(err.Error(), want) {
		t.Errorf("WaitRolledOut error %q does not say %q", err, want)
	}
}

// cancellingClient cancels a context right after its n-th successful Apply,
// as an interrupt (Ctrl-C, a CI timeout) would in the middle of a deploy.
type cancellingClient struct {
	client.Client
	n       int
	cancel  context.CancelFunc
	mu      sync.Mutex
	applied []string
}

func (c *cancellingClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	if err := c.Client.Apply(ctx, obj, opts...); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// apply.Objects hands over unstructured apply configurations.
	name := fmt.Sprintf("%T", obj)
	if o, ok := obj.(interface {
		GetKind() string
		GetNamespace() string
		GetName() string
	}); ok {
		name = o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
	}
	c.applied = append(c.applied, name)
	if len(c.applied) == c.n {
		c.cancel()
	}
	return nil
}

func TestNextRunSweepsTheLeftoversOfAnInterruptedDeploy(t *testing.T) {
	e := kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns1, run1 = "deploy-interrupted", "test-interrupted-1"
	const ns2, run2 = "deploy-next-run", "test-interrupted-2"

	// Leftovers of other tests (terminating namespaces) are there too; the
	// sweep must report them as well, so note them first.
	before, err := deploy.Find(ctx, e.Discovery, e.Metadata, deploy.LeftoversSelector(run2))
	if err != nil {
		t.Fatal(err)
	}

	// Run 1 is interrupted once its namespace and service accounts exist.
	fixtures1 := renderFixtures(t, ns1, run1)
	created := 0
	for _, o := range fixtures1 {
		switch o.(type) {
		case *corev1.Namespace, *corev1.ServiceAccount:
			created++
		}
	}
	if created < 2 || created >= len(fixtures1) {
		t.Fatalf("the fixtures do not start with the namespace and service accounts: %v", objectStrings(fixtures1))
	}
	runCtx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	cc := &cancellingClient{Client: e.Client, n: created, cancel: interrupt}
	err = deploy.Fixtures(runCtx, cc, fixtures1)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Fixtures returned %v, want an error wrapping context.Canceled", err)
	}
	var want []string
	for _, o := range fixtures1[:created] {
		want = append(want, o.GetObjectKind().GroupVersionKind().Kind+" "+o.GetNamespace()+"/"+o.GetName())
	}
	if !slices.Equal(cc.applied, want) {
		t.Fatalf("applied before the interrupt: %v, want %v", cc.applied, want)
	}
	// The API server refused nothing: the message must not say it did.
	if msg := err.Error(); strings.Contains(msg, "refused") || !strings.HasPrefix(msg, "applying ") {
		t.Errorf("interrupted Fixtures says %q; want it to say which object was being applied, not that it was refused", msg)
	}
	t.Logf("interrupted deploy: %v", err)
	leftovers := fixtures1[:created]
	for _, o := range fixtures1[created:] {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(o.GetObjectKind().GroupVersionKind())
		if err := e.Client.Get(ctx, client.ObjectKeyFromObject(o), u); !apierrors.IsNotFound(err) {
			t.Fatalf("%s was applied after the interrupt (get: %v)", refString(o), err)
		}
	}

	// Run 2 already has objects of its own when it sweeps, in a namespace of
	// its own (run 1's namespace stays Terminating here, as no namespace
	// controller runs). They must survive the sweep.
	fixtures2 := renderFixtures(t, ns2, run2)
	if err := apply.Objects(ctx, e.Client, fixtures2...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := deploy.Sweep(context.Background(), cluster(e), deploy.RunSelector(run2)); err != nil {
			t.Error(err)
		}
	})

	removed, err := deploy.Sweep(ctx, cluster(e), deploy.LeftoversSelector(run2))
	if err != nil {
		t.Fatalf("Sweep of leftovers: %v", err)
	}
	t.Logf("the next run removed: %v", refStrings(removed))
	want = append(objectStrings(leftovers), refStrings(before)...)
	sort.Strings(want)
	if got := refStrings(removed); !slices.Equal(got, want) {
		t.Errorf("Sweep reported\n  %s\nwant run %s's leftovers and what was there before\n  %s", strings.Join(got, "\n  "), run1, strings.Join(want, "\n  "))
	}
	for _, r := range removed {
		if strings.Contains(r.String(), ns1) && r.Terminating {
			t.Errorf("%s was reported as already terminating; nothing had deleted it", r)
		}
	}
	var inside []client.Object
	for _, o := range leftovers {
		if _, isNamespace := o.(*corev1.Namespace); !isNamespace {
			inside = append(inside, o)
		}
	}
	assertGone(ctx, t, e.Client, inside)
	assertOnlyTerminatingNamespace(ctx, t, e, run1, ns1)

	// The new run's objects are all there, none of them being deleted.
	mine, err := deploy.Find(ctx, e.Discovery, e.Metadata, deploy.RunSelector(run2))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := refStrings(mine), objectStrings(fixtures2); !slices.Equal(got, want) {
		t.Errorf("after the sweep run %s has\n  %s\nwant\n  %s", run2, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, r := range mine {
		if r.Terminating {
			t.Errorf("the sweep of leftovers deleted the new run's %s", r)
		}
	}
}
