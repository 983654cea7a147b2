package istio

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/meshproof/meshproof/harness/ownership"
)

// caRootCertConfigMap is the ConfigMap istiod writes into every namespace
// (the mesh's root certificate for workloads).
const caRootCertConfigMap = "istio-ca-root-cert"

// leftoverKind is a kind of cluster-scoped object Istio leaves behind, with
// the rule that tells Istio's objects from others.
type leftoverKind struct {
	gvr     schema.GroupVersionResource
	isIstio func(*unstructured.Unstructured) bool
}

var crdKind = leftoverKind{schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, isIstioCRD}

// The kinds are ordered for deletion: webhooks first, so that a dangling
// webhook (its istiod is gone) cannot block the deletions that follow.
var leftoverKinds = []leftoverKind{
	{schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}, isIstioObject},
	{schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingwebhookconfigurations"}, isIstioObject},
	{schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"}, isIstioObject},
	{schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"}, isIstioObject},
	crdKind,
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, isIstioObject},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, isIstioObject},
	// istiod creates GatewayClasses when the Gateway API CRDs exist.
	{schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}, isIstioGatewayClass},
}

// isIstioObject recognises Istio's cluster-scoped objects by what the charts
// put on them (read from base/ and istiod/ templates): every object carries
// app.kubernetes.io/part-of=istio (the istio.labels helper); per-revision
// objects carry istio.io/rev; istioctl-installed ones carry
// operator.istio.io/component. Names are the fallback for objects made by
// older installers without those labels: the charts name them istio-*,
// istiod-* (webhooks, ClusterRoles/Bindings) or *.istio.io (admission
// policies and their bindings, which have no labels at all).
func isIstioObject(o *unstructured.Unstructured) bool {
	l := o.GetLabels()
	if l["app.kubernetes.io/part-of"] == "istio" {
		return true
	}
	if _, ok := l["istio.io/rev"]; ok {
		return true
	}
	if _, ok := l["operator.istio.io/component"]; ok {
		return true
	}
	name := o.GetName()
	return strings.HasPrefix(name, "istio-") || strings.HasPrefix(name, "istiod-") || strings.HasSuffix(name, ".istio.io")
}

// isIstioCRD matches every CRD of an istio.io API group, whoever installed it.
func isIstioCRD(o *unstructured.Unstructured) bool {
	group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
	return group == "istio.io" || strings.HasSuffix(group, ".istio.io")
}

// isIstioGatewayClass matches the GatewayClasses istiod controls
// (istio.io/gateway-controller, istio.io/mesh-controller, ...).
func isIstioGatewayClass(o *unstructured.Unstructured) bool {
	c, _, _ := unstructured.NestedString(o.Object, "spec", "controllerName")
	return strings.HasPrefix(c, "istio.io/")
}

func (i *Installer) dynamicClient() (dynamic.Interface, error) {
	if i.restConfig == nil {
		return nil, errNoCluster
	}
	dc, err := dynamic.NewForConfig(i.restConfig)
	if err != nil {
		return nil, fmt.Errorf("creating dynamic client: %w", err)
	}
	return dc, nil
}

// purge deletes Istio's leftovers (see Uninstall) and the namespace if
// meshproof created it.
func (i *Installer) purge(ctx context.Context) error {
	dc, err := i.dynamicClient()
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range leftoverKinds {
		objs, err := listIstio(ctx, dc, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, o := range objs {
			if k.gvr == crdKind.gvr && !i.purgeableCRD(o.GetName(), string(o.GetUID())) {
				i.s.log.Info("keeping a CRD meshproof's ledger does not list", "crd", o.GetName())
				continue
			}
			i.s.log.Info("purging", "resource", k.gvr.Resource, "name", o.GetName())
			if err := dc.Resource(k.gvr).Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("deleting %s %s: %w", k.gvr.Resource, o.GetName(), err))
			}
		}
	}
	if len(errs) == 0 {
		if err := i.waitCRDsGone(ctx, dc); err != nil {
			errs = append(errs, err)
		}
	}
	if err := i.purgeRootCertConfigMaps(ctx, dc); err != nil {
		errs = append(errs, err)
	}
	if err := i.deleteOwnNamespace(ctx, dc); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("istio: purge incomplete: %w", errors.Join(errs...))
	}
	return nil
}

// waitCRDsGone waits until the API server has finished deleting the Istio
// CRDs (it removes their custom resources first), so that a following
// Install does not meet CRDs that are still terminating.
func (i *Installer) waitCRDsGone(ctx context.Context, dc dynamic.Interface) error {
	ctx, cancel := context.WithTimeout(ctx, i.s.operationTimeout)
	defer cancel()
	return poll(ctx, "the Istio CRDs to be deleted", func(ctx context.Context) (bool, string, error) {
		objs, err := listIstio(ctx, dc, crdKind)
		if err != nil {
			return false, "", err
		}
		names := make([]string, 0, len(objs))
		for _, o := range objs {
			if i.purgeableCRD(o.GetName(), string(o.GetUID())) {
				names = append(names, o.GetName())
			}
		}
		return len(names) == 0, fmt.Sprintf("%d still present: %s", len(names), strings.Join(names, ", ")), nil
	})
}

var configMapsGVR = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
var namespacesGVR = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func (i *Installer) purgeRootCertConfigMaps(ctx context.Context, dc dynamic.Interface) error {
	list, err := dc.Resource(configMapsGVR).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + caRootCertConfigMap})
	if err != nil {
		return fmt.Errorf("listing %s ConfigMaps: %w", caRootCertConfigMap, err)
	}
	var errs []error
	for _, cm := range list.Items {
		err := dc.Resource(configMapsGVR).Namespace(cm.GetNamespace()).Delete(ctx, cm.GetName(), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("deleting ConfigMap %s/%s: %w", cm.GetNamespace(), cm.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// deleteOwnNamespace deletes the Istio namespace only if it carries
// meshproof's managed-by label, i.e. Install created it.
func (i *Installer) deleteOwnNamespace(ctx context.Context, dc dynamic.Interface) error {
	ns, err := dc.Resource(namespacesGVR).Get(ctx, i.s.namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading namespace %s: %w", i.s.namespace, err)
	}
	if ns.GetLabels()[ownership.ManagedByLabel] != ownership.ManagedByValue {
		i.s.log.Info("keeping a namespace meshproof did not create", "namespace", i.s.namespace)
		return nil
	}
	i.s.log.Info("deleting the namespace", "namespace", i.s.namespace)
	if err := dc.Resource(namespacesGVR).Delete(ctx, i.s.namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting namespace %s: %w", i.s.namespace, err)
	}
	return nil
}

// listIstio lists the Istio objects of one kind; a kind the cluster does not
// serve (no Gateway API, old admission API) has none.
func listIstio(ctx context.Context, dc dynamic.Interface, k leftoverKind) ([]unstructured.Unstructured, error) {
	list, err := dc.Resource(k.gvr).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", k.gvr.Resource, err)
	}
	var out []unstructured.Unstructured
	for idx := range list.Items {
		if k.isIstio(&list.Items[idx]) {
			out = append(out, list.Items[idx])
		}
	}
	return out, nil
}

// Leftovers lists the cluster-scoped Istio objects that remain (as
// "<resource>/<name>", sorted) and the istio-ca-root-cert ConfigMaps
// ("configmaps/<namespace>/<name>"): empty after Uninstall with purge. Objects
// being deleted (with a deletion timestamp) are not counted.
func (i *Installer) Leftovers(ctx context.Context) ([]string, error) {
	dc, err := i.dynamicClient()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range leftoverKinds {
		objs, err := listIstio(ctx, dc, k)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if o.GetDeletionTimestamp() == nil {
				out = append(out, k.gvr.Resource+"/"+o.GetName())
			}
		}
	}
	cms, err := dc.Resource(configMapsGVR).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + caRootCertConfigMap})
	if err != nil {
		return nil, fmt.Errorf("listing %s ConfigMaps: %w", caRootCertConfigMap, err)
	}
	for _, cm := range cms.Items {
		if cm.GetDeletionTimestamp() == nil {
			out = append(out, "configmaps/"+cm.GetNamespace()+"/"+cm.GetName())
		}
	}
	sort.Strings(out)
	return out, nil
}
