package testsupport

import (
	"context"
	"errors"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// NewNamespace creates a namespace named prefix-<random>, so that tests
// sharing one control plane never see each other's objects, and returns its
// name. It is not deleted: without a namespace controller it would only
// stay Terminating.
func (e *Env) NewNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(t.Context(), ns); err != nil {
		t.Fatalf("creating a namespace %s-*: %v", prefix, err)
	}
	return ns.Name
}

// EnsureNamespace creates namespace name unless it exists, for tests whose
// scenario names a fixed namespace.
func (e *Env) EnsureNamespace(t testing.TB, name string) {
	t.Helper()
	err := e.Client.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// FinalizeTerminating plays the namespace controller once: every
// namespace that is terminating goes (its objects are not deleted first).
// Tests whose code under test deletes namespaces call it so that a later
// test does not wait for them.
func (e *Env) FinalizeTerminating(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return err
	}
	list, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range list.Items {
		if ns.DeletionTimestamp == nil {
			continue
		}
		ns.Spec.Finalizers = nil
		if _, err := cs.CoreV1().Namespaces().Finalize(ctx, &ns, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("finalizing namespace %s: %w", ns.Name, err))
		}
	}
	return errors.Join(errs...)
}
