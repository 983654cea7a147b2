// Package deploy puts meshproof's fixtures on a cluster and takes every
// trace of a run off it again. Everything meshproof creates carries the
// ownership labels (harness/ownership); Sweep finds objects by those labels
// across every resource type the API server knows, so an interrupted run's
// leftovers are removed by the next run, and reported.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/ownership"
)

// DefaultTerminatingTimeout bounds how long Fixtures waits for a namespace
// that is still terminating (an earlier run's, just swept) to be gone.
const DefaultTerminatingTimeout = 3 * time.Minute

// FixtureOption configures Fixtures.
type FixtureOption func(*fixtureOptions)

type fixtureOptions struct{ terminatingTimeout time.Duration }

// WithTerminatingTimeout bounds the wait for terminating namespaces
// (default DefaultTerminatingTimeout).
func WithTerminatingTimeout(d time.Duration) FixtureOption {
	return func(o *fixtureOptions) { o.terminatingTimeout = d }
}

// Fixtures applies the fixture objects in order (namespaces and service
// accounts before the Deployments that need them) and waits until every
// Deployment has rolled out. A namespace of objs that is still terminating
// (a rerun right after the leftover sweep deleted it) would refuse every
// new object, so Fixtures first waits until it is gone, and fails naming
// it if it does not go within the bound.
func Fixtures(ctx context.Context, c client.Client, objs []client.Object, opts ...FixtureOption) error {
	o := fixtureOptions{terminatingTimeout: DefaultTerminatingTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	var namespaces []string
	for _, obj := range objs {
		if _, ok := obj.(*corev1.Namespace); ok {
			namespaces = append(namespaces, obj.GetName())
		}
	}
	if err := WaitNamespacesGone(ctx, c, o.terminatingTimeout, namespaces...); err != nil {
		return err
	}
	if err := apply.Objects(ctx, c, objs...); err != nil {
		return err
	}
	var deployments []client.ObjectKey
	for _, o := range objs {
		if _, ok := o.(*appsv1.Deployment); ok {
			deployments = append(deployments, client.ObjectKeyFromObject(o))
		}
	}
	return WaitRolledOut(ctx, c, deployments...)
}

// rolloutPollInterval is how often WaitRolledOut reads the Deployments:
// twice a second, since each scenario running in namespaces of its own
// waits for its fixtures' rollout before its first step, yet within what a
// client of client-go's default rate (5 requests a second) keeps up with.
const rolloutPollInterval = 500 * time.Millisecond

// WaitRolledOut waits until every Deployment has rolled out its latest
// template with all replicas available, as `kubectl rollout status` does.
// It is bounded by ctx.
//
// The error names the Deployment last seen pending and why; a read that
// failed after that is named after it, not instead of it: the last read
// of a wait often fails only because the wait is ending (client-go's rate
// limiter refuses to wait past the deadline).
func WaitRolledOut(ctx context.Context, c client.Client, deployments ...client.ObjectKey) error {
	var pending string
	var readErr error // a failed read after pending
	err := wait.For(func(ctx context.Context) (bool, error) {
		for _, key := range deployments {
			var d appsv1.Deployment
			if err := c.Get(ctx, key, &d); err != nil {
				readErr = fmt.Errorf("reading %s: %w", key, err)
				return false, nil
			}
			if why := RolloutPending(&d); why != "" {
				pending, readErr = fmt.Sprintf("%s: %s", key, why), nil
				return false, nil
			}
		}
		return true, nil
	}, wait.WithContext(ctx), wait.WithInterval(rolloutPollInterval), wait.WithTimeout(timeLeft(ctx)), wait.WithImmediate())
	if err == nil {
		return nil
	}
	switch {
	case pending == "" && readErr != nil:
		return fmt.Errorf("waiting for rollout: %w: %w", readErr, err)
	case readErr != nil:
		return fmt.Errorf("waiting for rollout: %s; then %w: %w", pending, readErr, err)
	}
	return fmt.Errorf("waiting for rollout: %s: %w", pending, err)
}

// WaitNamespacesGone waits, up to timeout, until none of the named
// namespaces is terminating: each is either gone or was never deleted. A
// namespace still terminating at the end is named in the error with how
// long it has been terminating and what holds it, if its status says.
func WaitNamespacesGone(ctx context.Context, c client.Client, timeout time.Duration, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	// stuck is the namespace last seen terminating; a failed read keeps
	// it, since the wait may end on one.
	var stuck *corev1.Namespace
	var readErr error
	err := wait.For(func(ctx context.Context) (bool, error) {
		for _, name := range names {
			var ns corev1.Namespace
			err := c.Get(ctx, client.ObjectKey{Name: name}, &ns)
			switch {
			case apierrors.IsNotFound(err):
				continue
			case err != nil:
				readErr = fmt.Errorf("reading namespace %s: %w", name, err)
				return false, nil
			case ns.DeletionTimestamp != nil:
				stuck = &ns
				return false, nil
			}
		}
		return true, nil
	}, wait.WithContext(ctx), wait.WithInterval(time.Second), wait.WithTimeout(min(timeout, timeLeft(ctx))), wait.WithImmediate())
	if err == nil {
		return nil
	}
	if stuck == nil {
		return errors.Join(err, readErr)
	}
	why := ""
	for _, cond := range stuck.Status.Conditions {
		if cond.Status == corev1.ConditionTrue && cond.Message != "" {
			why += "; " + cond.Message
		}
	}
	if why == "" && len(stuck.Spec.Finalizers) > 0 {
		why = fmt.Sprintf("; finalizers %v", stuck.Spec.Finalizers)
	}
	return fmt.Errorf("namespace %s is still terminating after %s (deleted %s ago)%s: new objects cannot be created in it until it is gone: %w",
		stuck.Name, timeout, time.Since(stuck.DeletionTimestamp.Time).Round(time.Second), why, err)
}

// RolloutPending says why a Deployment is not rolled out yet, or "".
func RolloutPending(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	switch {
	case s.ObservedGeneration < d.Generation:
		return "the controller has not seen the latest spec"
	case s.UpdatedReplicas < want:
		return fmt.Sprintf("%d of %d replicas updated", s.UpdatedReplicas, want)
	case s.Replicas > s.UpdatedReplicas:
		return fmt.Sprintf("%d old replicas still terminating", s.Replicas-s.UpdatedReplicas)
	case s.AvailableReplicas < want:
		return fmt.Sprintf("%d of %d updated replicas available", s.AvailableReplicas, want)
	}
	return ""
}

// timeLeft is the time until ctx's deadline, for waits bounded by ctx.
func timeLeft(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 10 * time.Minute
}

// Cluster is what Sweep needs of a cluster: discovery, to know every
// resource type, and the metadata client, to list and delete any of them.
type Cluster struct {
	Discovery discovery.DiscoveryInterfaceWithContext
	Metadata  metadata.Interface
}

// Sweep deletes every object matching selector and returns what it asked to
// delete. Namespaced objects go first and namespaces last, so that nothing
// is left to the namespace controller's timing. Objects already terminating
// are reported but not deleted again.
func Sweep(ctx context.Context, c Cluster, selector labels.Selector) ([]ObjectRef, error) {
	found, err := Find(ctx, c.Discovery, c.Metadata, selector)
	if err != nil {
		return nil, err
	}
	ordered := make([]ObjectRef, 0, len(found))
	var namespaces []ObjectRef
	for _, o := range found {
		if o.Resource.Group == "" && o.Resource.Resource == "namespaces" {
			namespaces = append(namespaces, o)
			continue
		}
		ordered = append(ordered, o)
	}
	ordered = append(ordered, namespaces...)
	background := metav1.DeletePropagationBackground
	var errs []error
	for _, o := range ordered {
		if o.Terminating {
			continue
		}
		res := c.Metadata.Resource(o.Resource)
		var err error
		opts := metav1.DeleteOptions{PropagationPolicy: &background, Preconditions: &metav1.Preconditions{UID: &o.UID}}
		if o.Namespace != "" {
			err = res.Namespace(o.Namespace).Delete(ctx, o.Name, opts)
		} else {
			err = res.Delete(ctx, o.Name, opts)
		}
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("deleting %s: %w", o, err))
		}
	}
	return ordered, errors.Join(errs...)
}

// LeftoversSelector selects what earlier runs left behind: every object a
// meshproof run created, except those of the run that is starting. Objects
// meshproof manages across runs (the istio-system namespace it created for
// Istio) carry no run id and are not selected: `key!=value` alone would
// also match objects without the key.
func LeftoversSelector(currentRunID string) labels.Selector {
	sel, err := labels.Parse(fmt.Sprintf("%s=%s,%s,%s!=%s", ownership.ManagedByLabel, ownership.ManagedByValue, ownership.RunIDLabel, ownership.RunIDLabel, currentRunID))
	if err != nil {
		panic(err) // built from constants and a run id that is a valid label value
	}
	return sel
}

// RunSelector selects the objects of one run.
func RunSelector(runID string) labels.Selector {
	sel, err := labels.Parse(ownership.RunSelector(runID))
	if err != nil {
		panic(err)
	}
	return sel
}
