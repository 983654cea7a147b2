package istio_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	release "helm.sh/helm/v4/pkg/release/v1"
	networkingapi "istio.io/api/networking/v1"
	securityapi "istio.io/api/security/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/lease"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

const userVersion = "1.30.3"

// TestUsersIstioIsLeftAlone is issue 13's regression recipe: a cluster
// holding a user's Istio, installed with Helm as the CLI does (field
// manager "helm", custom values, webhooks pointed at a closed port with
// failurePolicy Ignore since no istiod runs), the user's DestinationRule
// and VirtualService in namespace shop and a mesh-wide PeerAuthentication.
// Then what a run does on setup and teardown, in use-existing mode and in
// install mode (refused), must leave the releases' values, the objects and
// the CRDs exactly as they were.
func TestUsersIstioIsLeftAlone(t *testing.T) {
	// Not parallel: installing the user's Istio sets Helm's global field
	// manager, which the other tests' installs would then use.
	root := testsupport.IstioCharts(t)
	ctrllog.SetLogger(logr.Discard())
	// No Istio CRDs from the test control plane: the user's base release
	// creates (and owns) them, as on the user's cluster.
	env := testsupport.Start(t, controlplane.WithoutIstioCRDs())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	installUsersIstio(t, ctx, env, root)
	before := clusterState(t, ctx, env)
	if !strings.Contains(before["release/istiod"], `"USER_MARK":"keep-me"`) {
		t.Fatalf("the user's istiod release lacks its values: %s", before["release/istiod"])
	}
	t.Logf("the user's Istio: %d objects and CRDs recorded", len(before))

	// A run's own coordination objects: the Lease, its ledger. Each run
	// gets a coordination namespace of its own: the first run's teardown
	// deletes the one it created, and the test API server has no namespace
	// controller to finish that.
	startRun := func(t *testing.T) (*ledger.Ledger, func()) {
		runID := ownership.NewRunID(time.Now())
		coord := "mp-coord-" + runID[len(runID)-8:]
		held, err := lease.Acquire(ctx, cs, runID, lease.WithNamespace(coord), lease.WithWait(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		l, err := ledger.Open(ctx, env.Client, runID, t.TempDir(), ledger.WithNamespace(coord))
		if err != nil {
			t.Fatal(err)
		}
		if held.CreatedNamespace() {
			if err := l.RecordCreatedNamespace(ctx, held.Namespace()); err != nil {
				t.Fatal(err)
			}
		}
		// The fixtures' namespace, new, labelled for injection.
		if _, err := l.EnsureNamespace(ctx, "meshproof-"+strings.ToLower(runID[len(runID)-8:]), map[string]string{"istio-injection": "enabled"}); err != nil {
			t.Fatal(err)
		}
		return l, func() {
			if err := held.Release(ctx); err != nil {
				t.Error(err)
			}
		}
	}
	newInstaller := func(t *testing.T, l *ledger.Ledger) *istio.Installer {
		in, err := istio.New(env.Config, istio.WithVersion(userVersion), istio.WithChartsDir(filepath.Join(root, userVersion)),
			istio.WithLedger(l), istio.WithLogger(testsupport.Logger(t)))
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	teardown := func(t *testing.T, l *ledger.Ledger, in *istio.Installer) {
		// Everything a teardown may do with Istio: the full uninstall with
		// purge, then the ledger's undo with Istio's uninstaller.
		if err := in.Uninstall(ctx, true); err != nil {
			t.Errorf("Uninstall: %v", err)
		}
		if err := l.Undo(ctx, in.UninstallRelease); err != nil {
			t.Errorf("ledger Undo: %v", err)
		}
	}

	t.Run("use-existing", func(t *testing.T) {
		l, release := startRun(t)
		defer release()
		inst, err := istio.UseExisting(ctx, env.Config, "istio-system", 30*time.Second, false)
		if err != nil {
			t.Fatalf("UseExisting: %v", err)
		}
		cp := inst.Revision("")
		if cp == nil || cp.Version != userVersion || cp.Deployment != "istiod" || cp.MultiRoot || inst.PluggedCA || !cp.Available {
			t.Errorf("detected %+v, control plane %+v; want istiod %s, default revision, Available, no plugged CA, not multi-root", inst, cp, userVersion)
		}
		var names []string
		for _, r := range inst.Releases {
			names = append(names, r.Name)
		}
		if !slices.Equal(names, []string{"istio-base", "istiod"}) {
			t.Errorf("detected releases %v", inst.Releases)
		}
		teardown(t, l, newInstaller(t, l))
		assertUnchanged(t, before, clusterState(t, ctx, env))
	})

	t.Run("install refused", func(t *testing.T) {
		l, release := startRun(t)
		defer release()
		in := newInstaller(t, l)
		var foreign *istio.ForeignReleasesError
		if err := in.CheckInstall(ctx); !errors.As(err, &foreign) || len(foreign.Releases) != 2 {
			t.Fatalf("CheckInstall = %v, want both of the user's releases refused", err)
		} else if !strings.Contains(err.Error(), "istio-base (chart base 1.30.3, deployed), istiod (chart istiod 1.30.3, deployed)") || !strings.Contains(err.Error(), "istio.mode: use-existing") {
			t.Errorf("refusal does not name the releases and the way out: %v", err)
		}
		// Install and Upgrade refuse by themselves too, before applying.
		if err := in.Install(ctx); !errors.As(err, &foreign) {
			t.Errorf("Install over the user's releases = %v, want a ForeignReleasesError", err)
		}
		if err := in.Upgrade(ctx, userVersion, filepath.Join(root, userVersion)); !errors.As(err, &foreign) {
			t.Errorf("Upgrade of the user's releases = %v, want a ForeignReleasesError", err)
		}
		if rec := l.Record(); len(rec.Releases) != 0 || len(rec.CRDs) != 0 {
			t.Errorf("the refused run recorded %+v as its own", rec)
		}
		teardown(t, l, in)
		assertUnchanged(t, before, clusterState(t, ctx, env))
	})

	// The same recipe through the run library, as `meshproof run` does it
	// on an existing cluster: setup (Lease, ledger, leftover sweep, Istio
	// in the file's mode, fixtures) and teardown leave the user's Istio as
	// it was; install mode is refused before it touches a release.
	runOnce := func(t *testing.T, mode string) error {
		// The subtests before left namespaces terminating; no namespace
		// controller finishes them here, and the run would wait for them.
		if err := env.FinalizeTerminating(ctx); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		suite, err := scenario.Load(filepath.Join(dir, "staging.yaml"), []byte(fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: staging
  provider: existing
  existing: {kubeconfig: %s}
  istio: {version: %s, mode: %s, charts: %s}
fixtures: {namespace: staging-check-%s}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
`, env.Kubeconfig, userVersion, mode, filepath.Join(root, userVersion), strings.ReplaceAll(mode, "-", ""))))
		if err != nil {
			t.Fatal(err)
		}
		fixtures, stop := context.WithCancel(ctx)
		defer stop()
		go testsupport.PlayDeploymentStatus(fixtures, env.Client, "staging-check-"+strings.ReplaceAll(mode, "-", ""))
		r, err := run.New(suite, run.WithReports(dir), run.WithImageDelivery(publishedImage("registry.example.com/echo@sha256:0123")),
			run.WithLogger(slog.New(run.NewProgressHandler(testWriter{t}))))
		if err != nil {
			t.Fatal(err)
		}
		setupErr := r.Setup(ctx)
		if err := r.Teardown(ctx); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Errorf("closing the run: %v", err)
		}
		if err := env.FinalizeTerminating(ctx); err != nil { // no namespace controller here
			t.Error(err)
		}
		return setupErr
	}
	t.Run("run, use-existing", func(t *testing.T) {
		if err := runOnce(t, "use-existing"); err != nil {
			t.Fatalf("setup in use-existing mode: %v", err)
		}
		assertUnchanged(t, before, clusterState(t, ctx, env))
	})
	t.Run("run, install refused", func(t *testing.T) {
		err := runOnce(t, "install")
		var foreign *istio.ForeignReleasesError
		if !errors.As(err, &foreign) {
			t.Fatalf("setup in install mode = %v, want the user's releases refused", err)
		}
		assertUnchanged(t, before, clusterState(t, ctx, env))
	})

	// The control: the same teardown by an Installer without a ledger
	// (meshproof before issue 13) removes the user's releases and purges
	// their CRDs, and clusterState sees it. Runs last: it destroys.
	t.Run("control without a ledger", func(t *testing.T) {
		in, err := istio.New(env.Config, istio.WithVersion(userVersion), istio.WithChartsDir(filepath.Join(root, userVersion)))
		if err != nil {
			t.Fatal(err)
		}
		if err := in.Uninstall(ctx, true); err != nil {
			t.Fatal(err)
		}
		after := clusterState(t, ctx, env)
		for _, k := range []string{"release/istiod", "release/istio-base", "crd//destinationrules.networking.istio.io", "destinationrule/shop/reviews", "destinationrule"} {
			if after[k] == before[k] {
				t.Errorf("%s unchanged by an unguarded uninstall: the recipe no longer shows the damage it guards against", k)
			}
		}
	})

	// Install mode on a cluster without anyone else's Istio (the control
	// removed the user's): what meshproof installs, its ledger lists, and
	// its teardown removes again, CRDs included.
	t.Run("install owns what it installs", func(t *testing.T) {
		l, release := startRun(t)
		defer release()
		in := newInstaller(t, l)
		if err := in.CheckInstall(ctx); err != nil {
			t.Fatalf("CheckInstall on a cluster without foreign releases: %v", err)
		}
		if err := in.Install(ctx); err != nil {
			t.Fatal(err)
		}
		rec := l.Record()
		if want := []ledger.Release{{Namespace: "istio-system", Name: "istio-base"}, {Namespace: "istio-system", Name: "istiod"}}; !slices.Equal(rec.Releases, want) {
			t.Errorf("ledger releases %v, want %v", rec.Releases, want)
		}
		// The cluster had no CRDs of Istio's before (the control purged the
		// user's): every one it has now, the base release created.
		var crds apiextensionsv1.CustomResourceDefinitionList
		if err := env.Client.List(ctx, &crds); err != nil {
			t.Fatal(err)
		}
		var created, listed []string
		for _, crd := range crds.Items {
			if strings.HasSuffix(crd.Spec.Group, "istio.io") {
				created = append(created, crd.Name)
			}
		}
		for _, o := range rec.CRDs {
			listed = append(listed, o.Name)
		}
		slices.Sort(created)
		slices.Sort(listed)
		if len(created) == 0 || !slices.Equal(listed, created) {
			t.Errorf("ledger lists CRDs %v, want the %d the base release created: %v", listed, len(created), created)
		}
		if foreign, err := in.ForeignReleases(ctx); err != nil || len(foreign) != 0 {
			t.Errorf("ForeignReleases after meshproof's own install = %v, %v", foreign, err)
		}
		teardown(t, l, in)
		if left, err := in.Leftovers(ctx); err != nil || len(left) > 0 {
			t.Errorf("after teardown: leftovers %v, %v", left, err)
		}
		if rels, err := in.Releases(ctx); err != nil || len(rels) > 0 {
			t.Errorf("after teardown: releases %v, %v", rels, err)
		}
	})
}

// installUsersIstio installs the user's Istio as `helm install` would:
// the Helm SDK's install action with Helm's field manager, on a cluster
// without Istio's CRDs.
func installUsersIstio(t *testing.T, ctx context.Context, env *testsupport.Env, root string) {
	t.Helper()
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Labels: map[string]string{"owner": "platform-team"}}}); err != nil {
		t.Fatal(err)
	}
	closed := closedPort(t)
	validation := map[string]any{"validationURL": fmt.Sprintf("https://127.0.0.1:%d/validate", closed), "validationFailurePolicy": "Ignore"}
	kube.ManagedFieldsManager = "helm"
	defer func() { kube.ManagedFieldsManager = "" }()
	for _, r := range []struct {
		name, chart string
		values      map[string]any
	}{
		{"istio-base", "base", map[string]any{"base": validation}},
		{"istiod", "istiod", map[string]any{
			"global":       map[string]any{"hub": "docker.io/istio", "tag": userVersion},
			"pilot":        map[string]any{"env": map[string]any{"USER_MARK": "keep-me"}},
			"istiodRemote": map[string]any{"injectionURL": fmt.Sprintf("https://127.0.0.1:%d/inject", closed)},
			"base":         validation,
		}},
	} {
		ch, err := loader.Load(filepath.Join(root, userVersion, r.chart))
		if err != nil {
			t.Fatal(err)
		}
		// Istio's source charts say version 1.0.0; the published ones a
		// user installs carry the release's version.
		ch.Metadata.Version, ch.Metadata.AppVersion = userVersion, userVersion
		cfg := helmConfig(t, env)
		in := action.NewInstall(cfg)
		in.ReleaseName, in.Namespace = r.name, "istio-system"
		in.WaitStrategy = kube.HookOnlyStrategy
		in.ServerSideApply = true // the Helm v4 CLI's default
		if _, err := in.RunWithContext(ctx, ch, r.values); err != nil {
			t.Fatalf("the user's helm install %s: %v", r.name, err)
		}
	}
	// istiod "runs": the status a kubelet and the Deployment controller
	// would write (the test API server has neither).
	var d appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "istiod"}, &d); err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1,
		Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", LastUpdateTime: metav1.Now(), LastTransitionTime: metav1.Now()}}}
	if err := env.Client.Status().Update(ctx, &d); err != nil {
		t.Fatal(err)
	}

	// The user's own configuration, through the (ignored) webhooks.
	if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio-injection": "enabled"}}}); err != nil {
		t.Fatal(err)
	}
	objs := []client.Object{
		&networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop"}, Spec: networkingapi.DestinationRule{
			Host: "reviews.shop.svc.cluster.local", TrafficPolicy: &networkingapi.TrafficPolicy{Tls: &networkingapi.ClientTLSSettings{Mode: networkingapi.ClientTLSSettings_ISTIO_MUTUAL}}}},
		&networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Name: "reviews", Namespace: "shop"}, Spec: networkingapi.VirtualService{
			Hosts: []string{"reviews"}, Http: []*networkingapi.HTTPRoute{{Route: []*networkingapi.HTTPRouteDestination{{Destination: &networkingapi.Destination{Host: "reviews"}}}}}}},
		&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "istio-system"}, Spec: securityapi.PeerAuthentication{
			Mtls: &securityapi.PeerAuthentication_MutualTLS{Mode: securityapi.PeerAuthentication_MutualTLS_STRICT}}},
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatalf("the user's %T: %v", o, err)
		}
	}
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func helmConfig(t *testing.T, env *testsupport.Env) *action.Configuration {
	t.Helper()
	cfg := action.NewConfiguration()
	if err := cfg.Init(istio.HelmGetter(env.Config, "istio-system"), "istio-system", "secret"); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// clusterState is everything of the user's that must survive, as
// comparable strings: each release's revision, status and values; the
// user's objects, the releases' objects and every Istio CRD by UID and
// resourceVersion; the namespaces' labels.
func clusterState(t *testing.T, ctx context.Context, env *testsupport.Env) map[string]string {
	t.Helper()
	state := map[string]string{}
	cfg := helmConfig(t, env)
	for _, name := range []string{"istio-base", "istiod"} {
		r, err := action.NewGet(cfg).Run(name)
		if err != nil {
			state["release/"+name] = "error: " + err.Error()
			continue
		}
		rel := r.(*release.Release)
		values, err := json.Marshal(rel.Config)
		if err != nil {
			t.Fatal(err)
		}
		state["release/"+name] = fmt.Sprintf("revision %d %s values %s", rel.Version, rel.Info.Status, values)
	}
	add := func(kind string, o client.Object) {
		state[kind+"/"+o.GetNamespace()+"/"+o.GetName()] = fmt.Sprintf("uid %s rv %s deleting %v labels %v", o.GetUID(), o.GetResourceVersion(), o.GetDeletionTimestamp() != nil, o.GetLabels())
	}
	lists := []struct {
		kind string
		list client.ObjectList
		opts []client.ListOption
	}{
		{"crd", &apiextensionsv1.CustomResourceDefinitionList{}, nil},
		{"destinationrule", &networkingv1.DestinationRuleList{}, nil},
		{"virtualservice", &networkingv1.VirtualServiceList{}, nil},
		{"peerauthentication", &securityv1.PeerAuthenticationList{}, nil},
		{"deployment", &appsv1.DeploymentList{}, []client.ListOption{client.InNamespace("istio-system")}},
		{"configmap", &corev1.ConfigMapList{}, []client.ListOption{client.InNamespace("istio-system")}},
		{"secret", &corev1.SecretList{}, []client.ListOption{client.InNamespace("istio-system")}},
		{"serviceaccount", &corev1.ServiceAccountList{}, []client.ListOption{client.InNamespace("istio-system")}},
		{"mutatingwebhook", &admissionv1.MutatingWebhookConfigurationList{}, nil},
		{"validatingwebhook", &admissionv1.ValidatingWebhookConfigurationList{}, nil},
		{"namespace", &corev1.NamespaceList{}, nil},
	}
	for _, l := range lists {
		if err := env.Client.List(ctx, l.list, l.opts...); err != nil {
			state[l.kind] = "cannot list: " + err.Error() // e.g. its CRD is gone
			continue
		}
		items, err := metaItems(l.list)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range items {
			if l.kind == "crd" && !strings.HasSuffix(o.GetName(), "istio.io") {
				continue
			}
			if l.kind == "namespace" && o.GetLabels()[ownership.ManagedByLabel] == ownership.ManagedByValue {
				continue // the runs' own namespaces
			}
			add(l.kind, o)
		}
	}
	return state
}

func metaItems(list client.ObjectList) ([]client.Object, error) {
	var out []client.Object
	switch l := list.(type) {
	case *apiextensionsv1.CustomResourceDefinitionList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *networkingv1.DestinationRuleList:
		for i := range l.Items {
			out = append(out, l.Items[i])
		}
	case *networkingv1.VirtualServiceList:
		for i := range l.Items {
			out = append(out, l.Items[i])
		}
	case *securityv1.PeerAuthenticationList:
		for i := range l.Items {
			out = append(out, l.Items[i])
		}
	case *appsv1.DeploymentList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.ConfigMapList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.SecretList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.ServiceAccountList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *admissionv1.MutatingWebhookConfigurationList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *admissionv1.ValidatingWebhookConfigurationList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case *corev1.NamespaceList:
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	default:
		return nil, fmt.Errorf("unhandled list %T", list)
	}
	return out, nil
}

func assertUnchanged(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed:\nbefore %s\nafter  %s", k, v, after[k])
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s appeared: %s", k, v)
		}
	}
}

// publishedImage is an echo image the user published: delivered as is.
type publishedImage string

func (p publishedImage) Deliver(context.Context, support.E2EClusterProvider, *scenario.Cluster, *slog.Logger) (string, error) {
	return string(p), nil
}

// testWriter sends the run's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
