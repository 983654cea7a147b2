package apply_test

// These tests apply objects to a real kube-apiserver (harness/internal/local/controlplane) to
// show what server-side apply under meshproof's field manager gives a run:
// re-applying converges, and fields someone else changed are taken back.

import (
	"context"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

// The API server starts on first use, so that the unit tests of this
// package run without one.
var shared testsupport.Shared

func kube(t *testing.T) *testsupport.Env { t.Helper(); return shared.Get(t) }

func TestMain(m *testing.M) { os.Exit(shared.Main(m)) }

func TestReapplyingConvergesAndTakesBackMeshproofsFields(t *testing.T) {
	e := kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: "apply-converge"}}
	svc := func() *corev1.Service {
		return &corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "service-a", Labels: map[string]string{"app": "service-a"}},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "service-a"},
				Ports:    []corev1.ServicePort{{Name: "http", Port: 8080}},
			},
		}
	}
	if err := apply.Objects(ctx, e.Client, ns, svc()); err != nil {
		t.Fatal(err)
	}
	var first corev1.Service
	if err := e.Client.Get(ctx, client.ObjectKeyFromObject(svc()), &first); err != nil {
		t.Fatal(err)
	}

	// A second run applies the same objects: no "already exists", no write.
	if err := apply.Objects(ctx, e.Client, ns, svc()); err != nil {
		t.Fatalf("re-applying: %v", err)
	}
	var second corev1.Service
	if err := e.Client.Get(ctx, client.ObjectKeyFromObject(svc()), &second); err != nil {
		t.Fatal(err)
	}
	if second.ResourceVersion != first.ResourceVersion {
		t.Errorf("re-applying identical objects wrote the Service (resourceVersion %s -> %s)", first.ResourceVersion, second.ResourceVersion)
	}

	// Someone edits a field meshproof set (as kubectl edit would, under
	// another manager); the next apply takes it back instead of failing on
	// the conflict.
	edited := second.DeepCopy()
	edited.Spec.Selector["app"] = "someone-else"
	if err := e.Client.Update(ctx, edited, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	if err := apply.Objects(ctx, e.Client, svc()); err != nil {
		t.Fatalf("applying over another manager's change: %v", err)
	}
	var third corev1.Service
	if err := e.Client.Get(ctx, client.ObjectKeyFromObject(svc()), &third); err != nil {
		t.Fatal(err)
	}
	if got := third.Spec.Selector["app"]; got != "service-a" {
		t.Errorf("selector app=%q after re-applying, want service-a", got)
	}
	managers := map[string]bool{}
	for _, mf := range third.ManagedFields {
		managers[mf.Manager] = true
	}
	if !managers[apply.FieldManager] {
		t.Errorf("no managedFields entry for %q: %v", apply.FieldManager, third.ManagedFields)
	}

	t.Cleanup(func() {
		if err := e.Client.Delete(context.Background(), svc()); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
}
