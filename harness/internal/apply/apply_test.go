package apply_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"testing"

	securityapi "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/scenario"
)

func TestDescribe(t *testing.T) {
	unstructuredDR := &unstructured.Unstructured{}
	unstructuredDR.SetAPIVersion("networking.istio.io/v1")
	unstructuredDR.SetKind("DestinationRule")
	unstructuredDR.SetNamespace("meshproof")
	unstructuredDR.SetName("meshproof-service-b")
	tests := []struct {
		name string
		obj  client.Object
		want string
	}{
		{"namespaced, typed", &corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Namespace: "meshproof", Name: "service-a"}}, "Service meshproof/service-a"},
		{"cluster-scoped", &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: "meshproof"}}, "Namespace meshproof"},
		{"unstructured", unstructuredDR, "DestinationRule meshproof/meshproof-service-b"},
		// Without TypeMeta the Go type is the best name there is.
		{"typed without kind", &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "x"}}, "*v1.ConfigMap ns/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := apply.Describe(tt.obj); got != tt.want {
				t.Errorf("Describe = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestErrorFormatting(t *testing.T) {
	invalid := apierrors.NewInvalid(schema.GroupKind{Group: "security.istio.io", Kind: "PeerAuthentication"}, "meshproof-namespace",
		field.ErrorList{field.NotSupported(field.NewPath("spec", "mtls", "mode"), "STRCT", []string{"STRICT"})})
	at := scenario.Position{File: "scenarios.yaml", Line: 43, Column: 9}
	unreachable := &url.Error{Op: "Patch", URL: "https://127.0.0.1:6443/api/v1/namespaces/meshproof/services/service-a", Err: syscall.ECONNREFUSED}
	tests := []struct {
		name string
		err  *apply.Error
		want string
	}{
		{"refused, written in a scenario", &apply.Error{Source: at, Object: "PeerAuthentication meshproof/meshproof-namespace", Err: invalid},
			"scenarios.yaml:43:9: the API server refused PeerAuthentication meshproof/meshproof-namespace: " + invalid.Error()},
		{"refused, a fixture", &apply.Error{Object: "Service meshproof/service-a", Err: apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "service-a", errors.New("denied by policy"))},
			`the API server refused Service meshproof/service-a: services "service-a" is forbidden: denied by policy`},
		{"interrupted", &apply.Error{Object: "Service meshproof/service-a", Err: fmt.Errorf("patching: %w", context.Canceled)},
			"applying Service meshproof/service-a: patching: context canceled"},
		{"unreachable, written in a scenario", &apply.Error{Source: at, Object: "PeerAuthentication meshproof/meshproof-namespace", Err: unreachable},
			"scenarios.yaml:43:9: applying PeerAuthentication meshproof/meshproof-namespace: " + unreachable.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() =\n  %s\nwant\n  %s", got, tt.want)
			}
			if !errors.Is(tt.err, tt.err.Err) {
				t.Error("the cause is not reachable through Unwrap")
			}
		})
	}
	var wrapped error = fmt.Errorf("step 1: %w", &apply.Error{Source: at, Object: "x", Err: invalid})
	if !apierrors.IsInvalid(wrapped) {
		t.Error("apierrors.IsInvalid does not see the API server's status through apply.Error")
	}
	var applyErr *apply.Error
	if !errors.As(wrapped, &applyErr) || applyErr.Source != at {
		t.Errorf("errors.As does not find the *apply.Error with its position: %v", applyErr)
	}
}

func TestToUnstructured(t *testing.T) {
	pa := &securityv1.PeerAuthentication{
		TypeMeta:   metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "PeerAuthentication"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "meshproof", Name: "meshproof-namespace", Labels: map[string]string{"a": "b"}},
	}
	pa.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}
	u, err := apply.ToUnstructured(pa)
	if err != nil {
		t.Fatal(err)
	}
	// The protobuf spec is in its JSON form, with the enum by name.
	if mode, _, _ := unstructured.NestedString(u.Object, "spec", "mtls", "mode"); mode != "STRICT" {
		t.Errorf("spec.mtls.mode = %q, want STRICT; object: %v", mode, u.Object)
	}
	// Server-side apply refuses these in a request.
	for _, f := range [][]string{{"metadata", "creationTimestamp"}, {"status"}} {
		if _, found, _ := unstructured.NestedFieldNoCopy(u.Object, f...); found {
			t.Errorf("%s is still in the object: %v", strings.Join(f, "."), u.Object)
		}
	}
	if u.GetKind() != "PeerAuthentication" || u.GetAPIVersion() != "security.istio.io/v1" || u.GetLabels()["a"] != "b" {
		t.Errorf("type or metadata lost: %v", u.Object)
	}
}
