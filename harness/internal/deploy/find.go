package deploy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
)

// ObjectRef names one object found by Find.
type ObjectRef struct {
	Resource  schema.GroupVersionResource
	Kind      string
	Namespace string // empty for cluster-scoped objects
	Name      string
	UID       types.UID
	// Terminating is set when the object is already being deleted.
	Terminating bool
}

func (r ObjectRef) String() string {
	kind := r.Kind
	if r.Resource.Group != "" {
		kind += "." + r.Resource.Group
	}
	if r.Namespace == "" {
		return kind + " " + r.Name
	}
	return kind + " " + r.Namespace + "/" + r.Name
}

// listPageSize bounds each list response; continue tokens fetch the rest.
const listPageSize = 500

// Find lists every object matching selector, across every resource type the
// API server's discovery reports as listable (built-in, aggregated and
// CRD-defined; namespaced ones in all namespaces).
//
// A resource type that discovery could not describe is an error rather than
// a silent gap, since a skipped type could hide exactly the leftover being
// looked for.
func Find(ctx context.Context, disco discovery.DiscoveryInterfaceWithContext, meta metadata.Interface, selector labels.Selector) ([]ObjectRef, error) {
	lists, err := disco.ServerPreferredResourcesWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("discovering resource types: %w", err)
	}
	var found []ObjectRef
	seen := sets.New[types.UID]()
	for _, list := range lists {
		gv, err := schema.ParseGroupVersion(list.GroupVersion)
		if err != nil {
			return nil, fmt.Errorf("discovery reported group version %q: %w", list.GroupVersion, err)
		}
		for _, res := range list.APIResources {
			// Subresources (pods/log, deployments/scale) are not objects of their own.
			if strings.Contains(res.Name, "/") || !sets.New(res.Verbs...).Has("list") {
				continue
			}
			gvr := gv.WithResource(res.Name)
			objects, err := listAll(ctx, meta, gvr, selector)
			if apierrors.IsNotFound(err) {
				// The type went between discovery and the list (its CRD
				// was just deleted, e.g. by uninstalling Istio's base
				// chart): none of its objects is left.
				continue
			}
			if err != nil {
				return nil, err
			}
			for _, obj := range objects {
				// One object can be served under two groups (events in core/v1 and
				// events.k8s.io/v1); report it once.
				if seen.Has(obj.UID) {
					continue
				}
				seen.Insert(obj.UID)
				found = append(found, ObjectRef{Resource: gvr, Kind: res.Kind, Namespace: obj.Namespace, Name: obj.Name,
					UID: obj.UID, Terminating: obj.DeletionTimestamp != nil})
			}
		}
	}
	sort.Slice(found, func(i, j int) bool { return found[i].String() < found[j].String() })
	return found, nil
}

func listAll(ctx context.Context, meta metadata.Interface, gvr schema.GroupVersionResource, selector labels.Selector) ([]metav1.PartialObjectMetadata, error) {
	var objects []metav1.PartialObjectMetadata
	opts := metav1.ListOptions{LabelSelector: selector.String(), Limit: listPageSize}
	for {
		page, err := meta.Resource(gvr).List(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("listing %s with selector %q: %w", gvr, selector, err)
		}
		objects = append(objects, page.Items...)
		if page.Continue == "" {
			return objects, nil
		}
		opts.Continue = page.Continue
	}
}
