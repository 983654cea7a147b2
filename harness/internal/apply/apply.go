// Package apply writes meshproof's objects to a cluster with server-side
// apply, under one field manager, so that a re-run converges on the same
// objects instead of failing on "already exists", and so that the API
// server's own validation (OpenAPI schemas of Istio's CRDs included) is what
// judges them.
package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/scenario"
)

// FieldManager owns the fields meshproof applies.
const FieldManager = "meshproof"

// Error is an object that could not be applied: the API server refused it
// (Err carries the server's status, e.g. a CRD schema violation), or the
// request never got an answer (the run was interrupted, the server was
// unreachable).
type Error struct {
	// Source is the scenario line the object comes from; invalid for objects
	// that no scenario line wrote (the fixtures).
	Source scenario.Position
	// Object names the object: Kind namespace/name.
	Object string
	Err    error
}

func (e *Error) Error() string {
	// Only an answer from the API server is a refusal; saying "refused" of a
	// cancelled or failed request would send the user looking at the object.
	what := "the API server refused " + e.Object
	var status apierrors.APIStatus
	if !errors.As(e.Err, &status) {
		what = "applying " + e.Object
	}
	if e.Source.IsValid() {
		return fmt.Sprintf("%s: %s: %v", e.Source, what, e.Err)
	}
	return fmt.Sprintf("%s: %v", what, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Objects applies the objects in order and stops at the first refusal.
func Objects(ctx context.Context, c client.Client, objs ...client.Object) error {
	for _, o := range objs {
		if err := one(ctx, c, o); err != nil {
			return &Error{Object: Describe(o), Err: err}
		}
	}
	return nil
}

// Policies applies objects written in a scenario; a refusal is reported at
// the scenario line.
func Policies(ctx context.Context, c client.Client, objs ...policy.Object) error {
	for _, o := range objs {
		u, err := o.Unstructured()
		if err == nil {
			err = applyUnstructured(ctx, c, u)
		}
		if err != nil {
			return &Error{Source: o.Source, Object: Describe(o.Object), Err: err}
		}
	}
	return nil
}

func one(ctx context.Context, c client.Client, o client.Object) error {
	u, err := ToUnstructured(o)
	if err != nil {
		return err
	}
	return applyUnstructured(ctx, c, u)
}

func applyUnstructured(ctx context.Context, c client.Client, u *unstructured.Unstructured) error {
	return c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager), client.ForceOwnership)
}

// ToUnstructured converts a typed object through its JSON form, which is
// what Istio's protobuf-based specs need (they marshal themselves).
func ToUnstructured(o client.Object) (*unstructured.Unstructured, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", Describe(o), err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", Describe(o), err)
	}
	// Server-side apply refuses managed or status fields in the request.
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	return u, nil
}

// Describe names an object as Kind namespace/name.
func Describe(o client.Object) string {
	kind := o.GetObjectKind().GroupVersionKind().Kind
	if kind == "" {
		kind = fmt.Sprintf("%T", o)
	}
	if o.GetNamespace() == "" {
		return kind + " " + o.GetName()
	}
	return fmt.Sprintf("%s %s/%s", kind, o.GetNamespace(), o.GetName())
}
