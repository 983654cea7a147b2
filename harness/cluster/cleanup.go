package cluster

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/meshproof/meshproof/harness/ownership"
)

// namespacesResource is deleted last: removing a namespace removes what is
// inside it, so objects of the listed resources elsewhere go first.
var namespacesResource = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

// DeleteRunObjects deletes, in any namespace, the objects of the given
// resources and then the namespaces that carry run runID's ownership labels
// (ownership.RunSelector) — and nothing else: every listed object's labels
// are checked again before it is deleted. It is how a run cleans up a
// cluster it does not own (see Existing). It returns what it deleted, as
// "<resource> <namespace>/<name>" (or
// "<resource> <name>" for cluster-scoped objects), and does not wait for namespaces to finish
// terminating. Failures are collected; every deletion is attempted.
func DeleteRunObjects(ctx context.Context, client dynamic.Interface, runID string, resources ...schema.GroupVersionResource) ([]string, error) {
	if runID == "" {
		return nil, errors.New("delete run objects: the run id is empty; refusing to select objects without it")
	}
	selectorText := ownership.RunSelector(runID)
	selector, err := labels.Parse(selectorText)
	if err != nil {
		return nil, fmt.Errorf("delete run objects: run id %q does not make a valid label selector: %w", runID, err)
	}
	var (
		deleted []string
		errs    []error
	)
	for _, gvr := range append(append([]schema.GroupVersionResource{}, resources...), namespacesResource) {
		list, err := client.Resource(gvr).List(ctx, metav1.ListOptions{LabelSelector: selectorText})
		if err != nil {
			errs = append(errs, fmt.Errorf("list %s of run %s: %w", gvr.Resource, runID, err))
			continue
		}
		for _, item := range list.Items {
			if !selector.Matches(labels.Set(item.GetLabels())) {
				continue
			}
			ri := client.Resource(gvr)
			var target dynamic.ResourceInterface = ri
			if ns := item.GetNamespace(); ns != "" {
				target = ri.Namespace(ns)
			}
			err := target.Delete(ctx, item.GetName(), metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s: %w", describe(gvr, item.GetNamespace(), item.GetName()), err))
				continue
			}
			deleted = append(deleted, describe(gvr, item.GetNamespace(), item.GetName()))
		}
	}
	return deleted, errors.Join(errs...)
}

func describe(gvr schema.GroupVersionResource, namespace, name string) string {
	if namespace == "" {
		return gvr.Resource + " " + name
	}
	return gvr.Resource + " " + namespace + "/" + name
}
