package e2eframework

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"sigs.k8s.io/e2e-framework/klient/k8s"
	"sigs.k8s.io/e2e-framework/klient/wait"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/features"
)

// Your suite's own objects: a namespace of its own, and the namespace
// mesh.yaml deploys its fixtures to, which your suite made first (meshproof
// then uses it and never deletes it), each with objects of yours.
const (
	yourNamespace     = "team-a"
	fixturesNamespace = "meshproof" // mesh.yaml's fixtures.namespace
)

// yourObjects puts your suite's objects on the cluster, as an env.Func.
func yourObjects(ctx context.Context, cfg *envconf.Config) (context.Context, error) {
	r := cfg.Client().Resources()
	for _, ns := range []string{yourNamespace, fixturesNamespace} {
		objs := []k8s.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"owner": "team-a@example.com"}}},
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings", Namespace: ns}, Data: map[string]string{"level": "debug"}},
			&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "token", Namespace: ns}, StringData: map[string]string{"token": "s3cr3t"}},
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "builder", Namespace: ns}},
			&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: ns, Labels: map[string]string{"app": "api"}},
				Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "api"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		}
		for _, o := range objs {
			if err := r.Create(ctx, o); err != nil {
				return ctx, fmt.Errorf("creating %s %s/%s: %w", kindOf(o), o.GetNamespace(), o.GetName(), err)
			}
		}
	}
	return ctx, nil
}

func kindOf(o any) string { return strings.TrimPrefix(fmt.Sprintf("%T", o), "*v1.") }

// object is what the check compares of an object.
type object struct {
	uid, resourceVersion string
	labels, annotations  map[string]string
}

type snapshotKey struct{}

// snapshotObjects records every object on the cluster before a feature, as
// a BeforeEachFeature function, once the cluster's controllers have given
// every namespace what they give each (its default ServiceAccount and
// kube-root-ca.crt ConfigMap): a new cluster is still settling.
func snapshotObjects(ctx context.Context, cfg *envconf.Config, t *testing.T, _ features.Feature) (context.Context, error) {
	var objects map[string]object
	var lastErr error
	err := wait.For(func(ctx context.Context) (bool, error) {
		objects, lastErr = listObjects(ctx, cfg)
		if lastErr != nil {
			return false, nil
		}
		for k := range objects {
			ns, ok := strings.CutPrefix(k, "v1/namespaces /")
			if !ok {
				continue
			}
			if objects["v1/serviceaccounts "+ns+"/default"].uid == "" || objects["v1/configmaps "+ns+"/kube-root-ca.crt"].uid == "" {
				return false, nil
			}
		}
		return true, nil
	}, wait.WithContext(ctx), wait.WithInterval(time.Second), wait.WithTimeout(time.Minute))
	if err != nil {
		return ctx, fmt.Errorf("the cluster did not settle: %w (listing: %v)", err, lastErr)
	}
	t.Logf("%d objects on the cluster before the feature", len(objects))
	return context.WithValue(ctx, snapshotKey{}, objects), nil
}

// objectsUntouched checks, as an AfterEachFeature function, that every
// object there before the feature is still there, the same object (its
// uid), unchanged (its resourceVersion) — only the namespace meshproof
// deployed its fixtures to got labels for the run, which it restored — and
// that nothing new stays but what the cluster's own controllers keep
// writing. It waits for the namespaces meshproof created to finish
// terminating first.
func objectsUntouched(ctx context.Context, cfg *envconf.Config, t *testing.T, _ features.Feature) (context.Context, error) {
	before, _ := ctx.Value(snapshotKey{}).(map[string]object)
	if before == nil {
		t.Error("no snapshot of the cluster before the feature")
		return ctx, nil
	}
	var after map[string]object
	var lastErr error
	// The namespaces meshproof made take a moment to go, and with them
	// Istio's CRDs from discovery: a listing may fail meanwhile.
	_ = wait.For(func(ctx context.Context) (bool, error) {
		objects, err := listObjects(ctx, cfg)
		if lastErr = err; err != nil {
			return false, nil
		}
		after = objects
		left, _ := added(before, after)
		return len(left) == 0, nil
	}, wait.WithContext(ctx), wait.WithInterval(2*time.Second), wait.WithTimeout(2*time.Minute))
	if after == nil {
		t.Errorf("listing the cluster's objects after the feature: %v", lastErr)
		return ctx, nil
	}
	left, istiods := added(before, after)
	for _, k := range left {
		t.Errorf("left on the cluster after the feature: %s", k)
	}
	for _, k := range istiods {
		t.Logf("left by the istiod meshproof installed, as Istio's own uninstall leaves it: %s", k)
	}
	for _, k := range slices.Sorted(maps.Keys(before)) {
		b, a := before[k], after[k]
		switch {
		case a.uid == "":
			t.Errorf("gone after the feature: %s", k)
		case a.uid != b.uid:
			t.Errorf("replaced during the feature: %s", k)
		case k == "v1/namespaces /"+fixturesNamespace:
			// meshproof labels the fixtures' namespace for the run
			// (istio-injection) and restores its labels after.
			if !maps.Equal(a.labels, b.labels) || !maps.Equal(a.annotations, b.annotations) {
				t.Errorf("namespace %s: labels %v, annotations %v after the feature; before: %v, %v", fixturesNamespace, a.labels, a.annotations, b.labels, b.annotations)
			}
		case a.resourceVersion != b.resourceVersion:
			t.Errorf("changed during the feature: %s", k)
		}
	}
	t.Logf("%d objects checked after the feature", len(before))
	return ctx, nil
}

// added are the keys of after not in before, sorted: those istiod writes
// into every namespace (istiods), and the others (left).
func added(before, after map[string]object) (left, istiods []string) {
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if _, ok := before[k]; ok {
			continue
		}
		if name := k[strings.LastIndex(k, "/")+1:]; strings.HasPrefix(k, "v1/configmaps ") && slices.Contains(istiodWrites, name) {
			istiods = append(istiods, k)
		} else {
			left = append(left, k)
		}
	}
	return left, istiods
}

// istiodWrites are the ConfigMaps istiod writes into every namespace while
// it runs (the mesh's roots and revocation list, for the pods' proxies);
// Istio's own uninstall leaves them, since another control plane may share
// them (istio/istio#23706, #38497), and so does meshproof's teardown of the
// Istio it installed.
var istiodWrites = []string{"istio-ca-root-cert", "istio-ca-crl"}

// churning are resources whose objects the cluster's own components keep
// rewriting (heartbeats, leader election, events), with or without
// meshproof.
var churning = []schema.GroupResource{
	{Resource: "events"}, {Group: "events.k8s.io", Resource: "events"},
	{Group: "coordination.k8s.io", Resource: "leases"},
	{Resource: "nodes"},
	// Computed when listed (the control plane's health), not stored.
	{Resource: "componentstatuses"},
}

// listObjects lists every object of every resource that can be listed,
// except churning ones, by "group/version/resource namespace/name".
func listObjects(ctx context.Context, cfg *envconf.Config) (map[string]object, error) {
	rc := cfg.Client().RESTConfig()
	disco, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		return nil, err
	}
	meta, err := metadata.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	lists, err := disco.ServerPreferredResources()
	if err != nil {
		return nil, err
	}
	out := map[string]object{}
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			return nil, err
		}
		for _, res := range l.APIResources {
			gr := schema.GroupResource{Group: gv.Group, Resource: res.Name}
			if strings.Contains(res.Name, "/") || !slices.Contains(res.Verbs, "list") || slices.Contains(churning, gr) {
				continue
			}
			items, err := meta.Resource(gv.WithResource(res.Name)).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, fmt.Errorf("listing %s: %w", gr, err)
			}
			for _, o := range items.Items {
				key := fmt.Sprintf("%s/%s %s/%s", l.GroupVersion, res.Name, o.Namespace, o.Name)
				out[key] = object{uid: string(o.UID), resourceVersion: o.ResourceVersion, labels: o.Labels, annotations: o.Annotations}
			}
		}
	}
	return out, nil
}
