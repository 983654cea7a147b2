package ledger

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/lease"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
)

var kube testsupport.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

type fixture struct {
	ctx   context.Context
	c     client.Client
	cs    kubernetes.Interface
	coord string // the coordination namespace of this test
	runID string
}

func setup(t *testing.T) fixture {
	t.Helper()
	env := kube.Get(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return fixture{ctx: ctx, c: env.Client, cs: cs, coord: "mp-coord-" + rand.String(5), runID: ownership.NewRunID(time.Now())}
}

// createUserNamespace makes a namespace as a user would have it: labels,
// an annotation, and objects of their own.
func createUserNamespace(t *testing.T, f fixture, name string) []client.Object {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels:      map[string]string{"team": "shop", "istio-injection": "disabled"},
		Annotations: map[string]string{"owner": "shop-team@example.com"}}}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings", Namespace: name, Labels: map[string]string{"app": "shop"}}, Data: map[string]string{"currency": "EUR"}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "shop-api", Namespace: name, Labels: map[string]string{"app": "shop"}}}
	for _, o := range []client.Object{ns, cm, sa} {
		if err := f.c.Create(f.ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return []client.Object{ns, cm, sa}
}

// TestUserNamespaceUnchangedAfterRunAndTeardown is the acceptance check:
// a run that puts its workloads into an existing namespace, creates a
// namespace, cluster-scoped objects and a CRD of its own, then tears down,
// leaves the user's namespace (labels, annotation, objects) exactly as it
// found it and removes everything it created.
func TestUserNamespaceUnchangedAfterRunAndTeardown(t *testing.T) {
	f := setup(t)
	shop, runNS := "shop-"+rand.String(5), "mp-run-"+rand.String(5)
	user := createUserNamespace(t, f, shop)
	before := snapshot(t, f, user)

	// The run: the Lease first (it creates the coordination namespace),
	// then the ledger, which records that namespace.
	held, err := lease.Acquire(f.ctx, f.cs, f.runID, lease.WithNamespace(f.coord), lease.WithWait(0))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release(f.ctx)
	runDir := t.TempDir()
	l, err := Open(f.ctx, f.c, f.runID, runDir, WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	if !held.CreatedNamespace() {
		t.Fatal("the Lease did not create the coordination namespace")
	}
	if err := l.RecordCreatedNamespace(f.ctx, f.coord); err != nil {
		t.Fatal(err)
	}
	inject := map[string]string{"istio-injection": "enabled", "meshproof.dev/fixtures": "true"}
	if created, err := l.EnsureNamespace(f.ctx, shop, inject); err != nil || created {
		t.Fatalf("EnsureNamespace(%s) = %v, %v; want the user's namespace used, not created", shop, created, err)
	}
	if created, err := l.EnsureNamespace(f.ctx, runNS, inject); err != nil || !created {
		t.Fatalf("EnsureNamespace(%s) = %v, %v; want it created", runNS, created, err)
	}
	runObjects := []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: shop, Labels: ownership.Labels(f.runID)}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "probe-config", Namespace: shop, Labels: ownership.Labels(f.runID)}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "service-b", Namespace: runNS, Labels: ownership.Labels(f.runID)}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "meshproof-test-" + strings.ToLower(rand.String(5)), Labels: ownership.Labels(f.runID)}},
	}
	for _, o := range runObjects {
		if err := l.RecordObject(f.ctx, o); err != nil { // before creating
			t.Fatal(err)
		}
		if err := f.c.Create(f.ctx, o); err != nil {
			t.Fatal(err)
		}
		if err := l.RecordObject(f.ctx, o); err != nil { // with its UID
			t.Fatal(err)
		}
	}
	// A name the run meant to use but the user already had: recorded,
	// the create fails, and the user's object must survive teardown.
	if err := l.RecordObject(f.ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "shop-api", Namespace: shop}}); err != nil {
		t.Fatal(err)
	}
	crd := widgetCRD()
	if err := f.c.Create(f.ctx, crd); err != nil {
		t.Fatal(err)
	}
	if err := l.RecordCRD(f.ctx, crd.Name); err != nil {
		t.Fatal(err)
	}
	var during corev1.Namespace
	if err := f.c.Get(f.ctx, client.ObjectKey{Name: shop}, &during); err != nil || during.Labels["istio-injection"] != "enabled" {
		t.Fatalf("during the run namespace %s labels = %v (%v), want injection enabled", shop, during.Labels, err)
	}

	// The ledger as another process sees it (a sweep after a crash) and
	// as the run folder holds it.
	fromCluster, err := Load(f.ctx, f.c, f.runID, WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := ReadFile(filepath.Join(runDir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromCluster.Record(), fromFile) || !reflect.DeepEqual(fromFile, l.Record()) {
		t.Errorf("ledger differs:\ncluster %+v\nfile    %+v\nmemory  %+v", fromCluster.Record(), fromFile, l.Record())
	}
	rec := l.Record()
	if len(rec.Namespaces) != 2 || len(rec.Objects) != 5 || len(rec.CRDs) != 1 || len(rec.Labels) != 2 {
		t.Errorf("ledger = %+v; want 2 namespaces, 5 objects, 1 CRD, 2 label changes", rec)
	}
	for _, ch := range rec.Labels {
		if ch.Key == "istio-injection" && (ch.Previous == nil || *ch.Previous != "disabled") {
			t.Errorf("label change %+v does not remember the user's value", ch)
		}
	}

	if err := l.Undo(f.ctx, nil); err != nil {
		t.Fatal(err)
	}

	// The user's namespace and objects: unchanged, to the resourceVersion.
	if after := snapshot(t, f, user); !reflect.DeepEqual(before, after) {
		t.Errorf("the user's namespace changed:\nbefore %v\nafter  %v", before, after)
	}
	// Everything the run created: gone or being deleted.
	for _, o := range append(runObjects, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: runNS}}, crd,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.coord}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapPrefix + f.runID, Namespace: f.coord}}) {
		if !goneOrGoing(t, f, o) {
			t.Errorf("%T %s/%s survived teardown", o, o.GetNamespace(), o.GetName())
		}
	}
	if rec, err := ReadFile(filepath.Join(runDir, FileName)); err != nil || rec.TornDown == nil {
		t.Errorf("run folder ledger after teardown: %+v, %v; want it marked torn down", rec, err)
	}
}

// snapshot is what must not change in the user's objects: for the
// namespace its identity, labels and annotations; for the objects in it
// not even the resourceVersion (they were never written).
func snapshot(t *testing.T, f fixture, objs []client.Object) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range objs {
		cur := o.DeepCopyObject().(client.Object)
		if err := f.c.Get(f.ctx, client.ObjectKeyFromObject(o), cur); err != nil {
			t.Fatalf("the user's %s: %v", o.GetName(), err)
		}
		key := o.GetNamespace() + "/" + o.GetName()
		rv := " rv=" + cur.GetResourceVersion()
		if _, isNS := o.(*corev1.Namespace); isNS {
			rv = "" // its labels were changed and restored: compare content
		}
		out[key] = string(cur.GetUID()) + rv + " labels=" + fmtMap(cur.GetLabels()) + " annotations=" + fmtMap(cur.GetAnnotations())
		if cur.GetDeletionTimestamp() != nil {
			out[key] += " DELETING"
		}
	}
	return out
}

func fmtMap(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func goneOrGoing(t *testing.T, f fixture, o client.Object) bool {
	t.Helper()
	cur := o.DeepCopyObject().(client.Object)
	err := f.c.Get(f.ctx, client.ObjectKeyFromObject(o), cur)
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	// The test API server runs no namespace controller or CRD finalizer
	// at speed: a namespace (or CRD) whose deletion began stays
	// terminating.
	return cur.GetDeletionTimestamp() != nil
}

func widgetCRD() *apiextensionsv1.CustomResourceDefinition {
	group := strings.ToLower(rand.String(5)) + ".meshproof.dev"
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group, Scope: apiextensionsv1.NamespaceScoped,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget", ListKind: "WidgetList"},
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object"}}}},
		},
	}
}

// TestUndoUninstallsReleasesAndRespectsLaterChanges: releases go through
// the uninstaller, newest first; a label the user changed after the run
// set it stays as the user set it; an object the user replaced (new UID)
// is kept; without an uninstaller, listed releases keep the ledger.
func TestUndoUninstallsReleasesAndRespectsLaterChanges(t *testing.T) {
	f := setup(t)
	if err := f.c.Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.coord}}); err != nil {
		t.Fatal(err)
	}
	shop := "shop-" + rand.String(5)
	createUserNamespace(t, f, shop)
	l, err := Open(f.ctx, f.c, f.runID, t.TempDir(), WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"istio-base", "istiod"} {
		if err := l.RecordRelease(f.ctx, "istio-system", r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetNamespaceLabels(f.ctx, shop, map[string]string{"istio-injection": "enabled", "team": "shop", "added": "yes"}); err != nil {
		t.Fatal(err)
	}
	if got := len(l.Record().Labels); got != 2 {
		t.Errorf("%d label changes recorded, want 2 (team=shop was found as wanted)", got)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: shop, Labels: ownership.Labels(f.runID)}}
	if err := f.c.Create(f.ctx, sa); err != nil {
		t.Fatal(err)
	}
	if err := l.RecordObject(f.ctx, sa); err != nil {
		t.Fatal(err)
	}
	// The user, meanwhile: takes the injection label back and replaces
	// the service account with their own of the same name and labels.
	if err := patchLabels(f.ctx, f.c, shop, map[string]any{"istio-injection": "disabled-by-user"}); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Delete(f.ctx, sa); err != nil {
		t.Fatal(err)
	}
	replaced := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "service-a", Namespace: shop, Labels: ownership.Labels(f.runID)}}
	if err := f.c.Create(f.ctx, replaced); err != nil {
		t.Fatal(err)
	}

	if err := l.Undo(f.ctx, nil); err == nil || !strings.Contains(err.Error(), "no uninstaller was given") {
		t.Fatalf("Undo without an uninstaller = %v", err)
	}
	if ids, _ := List(f.ctx, f.c, WithNamespace(f.coord)); !slices.Contains(ids, f.runID) {
		t.Fatalf("a failed Undo dropped the ledger: %v", ids)
	}
	var uninstalled []string
	if err := l.Undo(f.ctx, func(_ context.Context, r Release) error {
		uninstalled = append(uninstalled, r.Namespace+"/"+r.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"istio-system/istiod", "istio-system/istio-base"}; !slices.Equal(uninstalled, want) {
		t.Errorf("uninstalled %v, want %v", uninstalled, want)
	}
	var ns corev1.Namespace
	if err := f.c.Get(f.ctx, client.ObjectKey{Name: shop}, &ns); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"team": "shop", "istio-injection": "disabled-by-user", "kubernetes.io/metadata.name": shop}; !maps.Equal(ns.Labels, want) {
		t.Errorf("labels after Undo = %v, want %v", ns.Labels, want)
	}
	var cur corev1.ServiceAccount
	if err := f.c.Get(f.ctx, client.ObjectKeyFromObject(replaced), &cur); err != nil || cur.DeletionTimestamp != nil {
		t.Errorf("the replaced service account (new UID) was deleted: %v", err)
	}
	if ids, _ := List(f.ctx, f.c, WithNamespace(f.coord)); slices.Contains(ids, f.runID) {
		t.Errorf("ledger still listed after Undo: %v", ids)
	}
	// The coordination namespace was not the run's: it stays.
	if err := f.c.Get(f.ctx, client.ObjectKey{Name: f.coord}, &ns); err != nil || ns.DeletionTimestamp != nil {
		t.Errorf("coordination namespace %s deleted though the run did not create it: %v", f.coord, err)
	}
}

// TestCrashedRunsLedgerIsSwept: the process that wrote a ledger is gone;
// another one finds the ledger on the cluster and undoes it.
func TestCrashedRunsLedgerIsSwept(t *testing.T) {
	f := setup(t)
	if err := f.c.Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.coord}}); err != nil {
		t.Fatal(err)
	}
	runNS := "mp-run-" + rand.String(5)
	func() { // the crashed run
		l, err := Open(f.ctx, f.c, f.runID, t.TempDir(), WithNamespace(f.coord))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.EnsureNamespace(f.ctx, runNS, nil); err != nil {
			t.Fatal(err)
		}
	}()
	other, err := Open(f.ctx, f.c, "other-run", t.TempDir(), WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := List(f.ctx, f.c, WithNamespace(f.coord))
	if err != nil || !slices.Equal(ids, []string{f.runID, "other-run"}) && !slices.Equal(ids, []string{"other-run", f.runID}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	swept, err := Load(f.ctx, f.c, f.runID, WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	if err := swept.Undo(f.ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !goneOrGoing(t, f, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: runNS}}) {
		t.Error("the crashed run's namespace survived the sweep")
	}
	if ids, _ := List(f.ctx, f.c, WithNamespace(f.coord)); !slices.Equal(ids, []string{"other-run"}) {
		t.Errorf("after the sweep List = %v, want only the other run's ledger", ids)
	}
	_ = other
}

// TestSweepSparesLiveRuns: of two other runs' ledgers, the one whose run
// holds the Lease is kept, the one of a run that stopped is undone.
func TestSweepSparesLiveRuns(t *testing.T) {
	f := setup(t)
	live := mustLease(t, f, "run-live")
	defer live.Release(f.ctx)
	nsOf := map[string]string{}
	for _, id := range []string{"run-live", "run-crashed", f.runID} {
		l, err := Open(f.ctx, f.c, id, t.TempDir(), WithNamespace(f.coord))
		if err != nil {
			t.Fatal(err)
		}
		nsOf[id] = "mp-" + strings.ToLower(rand.String(6))
		if _, err := l.EnsureNamespace(f.ctx, nsOf[id], nil); err != nil {
			t.Fatal(err)
		}
	}
	isLive := func(ctx context.Context, id string) (bool, error) {
		return lease.RunIsLive(ctx, f.cs, id, lease.WithNamespace(f.coord))
	}
	swept, err := Sweep(f.ctx, f.c, f.runID, isLive, nil, WithNamespace(f.coord))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(swept, []string{"run-crashed"}) {
		t.Errorf("swept %v, want only run-crashed", swept)
	}
	for id, ns := range nsOf {
		gone := goneOrGoing(t, f, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		if gone != (id == "run-crashed") {
			t.Errorf("run %s's namespace %s deleted = %v", id, ns, gone)
		}
	}
}

func mustLease(t *testing.T, f fixture, holder string) *lease.Held {
	t.Helper()
	h, err := lease.Acquire(f.ctx, f.cs, holder, lease.WithNamespace(f.coord), lease.WithWait(0))
	if err != nil {
		t.Fatal(err)
	}
	return h
}
