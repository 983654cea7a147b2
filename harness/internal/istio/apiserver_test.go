package istio_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
)

// TestAgainstAPIServer drives the Installer against a real kube-apiserver
// (no nodes, no controllers): the Helm releases are really applied, upgraded
// and uninstalled, and the purge is checked object by object. Readiness
// cannot be reached without a kubelet, so WaitReady is checked for its
// failure report only.
func TestAgainstAPIServer(t *testing.T) {
	// Each of the API server tests has an API server of its own.
	t.Parallel()
	root := testsupport.IstioCharts(t)
	ctrllog.SetLogger(logr.Discard())
	// No Istio CRDs from the test control plane: the base release must create (and own)
	// them, as on a fresh cluster. (Deleting the control plane's right after it
	// installed them sometimes waited minutes on the CRD finalizer.)
	env := testsupport.Start(t, controlplane.WithoutIstioCRDs())

	t.Run("install then uninstall with purge", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		c := env.Client
		foreign := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "meshproof-test-not-istio"}}
		if err := c.Create(ctx, foreign); err != nil {
			t.Fatal(err)
		}
		in := newInstaller(t, env, root, "1.30.3", istio.WithWorkloadCertTTL(time.Minute), istio.WithReadyTimeout(5*time.Second))
		if err := in.Install(ctx); err != nil {
			t.Fatal(err)
		}

		ns := &corev1.Namespace{}
		if err := c.Get(ctx, client.ObjectKey{Name: "istio-system"}, ns); err != nil {
			t.Fatalf("namespace not created: %v", err)
		}
		if ns.Labels[ownership.ManagedByLabel] != ownership.ManagedByValue {
			t.Errorf("namespace labels %v lack %s=%s", ns.Labels, ownership.ManagedByLabel, ownership.ManagedByValue)
		}
		d := &appsv1.Deployment{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "istiod"}, d); err != nil {
			t.Fatal(err)
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "docker.io/istio/pilot:1.30.3" {
			t.Errorf("istiod image %q", img)
		}
		if d.Annotations["meta.helm.sh/release-name"] != "istiod" {
			t.Errorf("istiod Deployment not owned by release istiod: %v", d.Annotations)
		}
		cm := &corev1.ConfigMap{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "istio"}, cm); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(cm.Data["mesh"], "SECRET_TTL: 1m0s") {
			t.Errorf("mesh config lacks SECRET_TTL: 1m0s:\n%s", cm.Data["mesh"])
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.Get(ctx, client.ObjectKey{Name: "peerauthentications.security.istio.io"}, crd); err != nil {
			t.Fatal(err)
		}
		if crd.Annotations["meta.helm.sh/release-name"] != istio.BaseReleaseName {
			t.Errorf("PeerAuthentication CRD not owned by %s: %v", istio.BaseReleaseName, crd.Annotations)
		}
		if err := c.Get(ctx, client.ObjectKey{Name: "istio-sidecar-injector"}, &admissionv1.MutatingWebhookConfiguration{}); err != nil {
			t.Errorf("injector webhook: %v", err)
		}
		wantReleases(t, env, "istio-system", "istio-base", "istiod")

		// No kubelet: WaitReady must give up within its bound and say on
		// what, with the state it last saw.
		err := in.WaitReady(ctx)
		t.Logf("WaitReady without a kubelet: %v", err)
		if err == nil || !strings.Contains(err.Error(), "istiod Deployment istio-system/istiod") || !strings.Contains(err.Error(), "last observed") {
			t.Errorf("WaitReady without a kubelet: err = %v", err)
		}

		// What istiod would have written at run time is purged too.
		rootCert := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": "x"}}
		if err := c.Create(ctx, rootCert); err != nil {
			t.Fatal(err)
		}
		before, err := in.Leftovers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(before) == 0 {
			t.Fatal("Leftovers finds nothing while Istio is installed")
		}

		if err := in.Uninstall(ctx, true); err != nil {
			t.Fatal(err)
		}
		left, err := in.Leftovers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("after Uninstall(purge): %d Istio objects remain: %v", len(left), left)
		}
		wantReleases(t, env, "istio-system")
		if err := c.Get(ctx, client.ObjectKey{Name: "istio-system"}, ns); err == nil && ns.DeletionTimestamp == nil {
			t.Error("namespace istio-system, created by Install, was not deleted")
		}
		if err := c.Get(ctx, client.ObjectKey{Name: foreign.Name}, &rbacv1.ClusterRole{}); err != nil {
			t.Errorf("purge touched a ClusterRole that is not Istio's: %v", err)
		}
	})

	t.Run("in-place upgrade 1.29.6 to 1.30.3", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		c := env.Client
		const ns = "istio-upgrade"
		// A namespace meshproof did not create survives the purge.
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		in := newInstaller(t, env, root, "1.29.6", istio.WithNamespace(ns))
		if err := in.Install(ctx); err != nil {
			t.Fatal(err)
		}
		if got := istiodImage(t, env, ns, "istiod"); got != "docker.io/istio/pilot:1.29.6" {
			t.Errorf("before upgrade: image %q", got)
		}
		if err := in.Upgrade(ctx, "1.30.3", filepath.Join(root, "1.30.3")); err != nil {
			t.Fatal(err)
		}
		if got := istiodImage(t, env, ns, "istiod"); got != "docker.io/istio/pilot:1.30.3" {
			t.Errorf("after upgrade: image %q", got)
		}
		if in.Version() != "1.30.3" {
			t.Errorf("Version() = %s after upgrade", in.Version())
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.Get(ctx, client.ObjectKey{Name: "destinationrules.networking.istio.io"}, crd); err != nil {
			t.Fatal(err)
		}
		if v := crd.Labels["app.kubernetes.io/version"]; v != "1.30.3" {
			t.Errorf("CRDs not upgraded: app.kubernetes.io/version=%q", v)
		}
		wantReleases(t, env, ns, "istio-base", "istiod")
		wantSecret(t, env, ns, "sh.helm.release.v1.istio-base.v2")
		wantSecret(t, env, ns, "sh.helm.release.v1.istiod.v2")

		if err := in.Uninstall(ctx, true); err != nil {
			t.Fatal(err)
		}
		if left, err := in.Leftovers(ctx); err != nil || len(left) > 0 {
			t.Errorf("after Uninstall(purge): leftovers %v, err %v", left, err)
		}
		got := &corev1.Namespace{}
		if err := c.Get(ctx, client.ObjectKey{Name: ns}, got); err != nil || got.DeletionTimestamp != nil {
			t.Errorf("namespace %s, not created by meshproof, was deleted (err %v)", ns, err)
		}
	})

	t.Run("ambient: install, in-place upgrade 1.29.6 to 1.30.3, uninstall in Istio's order", func(t *testing.T) {
		testAmbientLifecycle(t, env, root)
	})

	t.Run("canary from 1.29.6 to revision 1-30-3", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		c := env.Client
		const ns = "istio-canary"
		const rev = "1-30-3"
		in := newInstaller(t, env, root, "1.29.6", istio.WithNamespace(ns))
		if err := in.Install(ctx); err != nil {
			t.Fatal(err)
		}
		apps := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{"istio-injection": "enabled"}}}
		if err := c.Create(ctx, apps); err != nil {
			t.Fatal(err)
		}
		if err := in.InstallCanary(ctx, rev, "1.30.3", filepath.Join(root, "1.30.3")); err != nil {
			t.Fatal(err)
		}
		// Both control planes side by side.
		if got := istiodImage(t, env, ns, "istiod"); got != "docker.io/istio/pilot:1.29.6" {
			t.Errorf("old istiod image %q", got)
		}
		if got := istiodImage(t, env, ns, "istiod-"+rev); got != "docker.io/istio/pilot:1.30.3" {
			t.Errorf("canary istiod image %q", got)
		}
		for _, name := range []string{"istio-sidecar-injector-" + ns, "istio-sidecar-injector-" + rev + "-" + ns} {
			if err := c.Get(ctx, client.ObjectKey{Name: name}, &admissionv1.MutatingWebhookConfiguration{}); err != nil {
				t.Errorf("injector webhook %s: %v", name, err)
			}
		}
		wantReleases(t, env, ns, "istio-base", "istiod", "istiod-"+rev)

		if err := in.RelabelNamespaces(ctx, rev, "apps"); err != nil {
			t.Fatal(err)
		}
		if err := c.Get(ctx, client.ObjectKey{Name: "apps"}, apps); err != nil {
			t.Fatal(err)
		}
		if _, ok := apps.Labels["istio-injection"]; ok || apps.Labels["istio.io/rev"] != rev {
			t.Errorf("apps labels after relabel: %v", apps.Labels)
		}

		if err := in.RemoveRevision(ctx, ""); err != nil {
			t.Fatal(err)
		}
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, &appsv1.Deployment{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("old istiod Deployment still there after RemoveRevision: %v", err)
		}
		if got := istiodImage(t, env, ns, "istiod-"+rev); got != "docker.io/istio/pilot:1.30.3" {
			t.Errorf("canary istiod image after removing the old one: %q", got)
		}
		vwc := &admissionv1.ValidatingWebhookConfiguration{}
		if err := c.Get(ctx, client.ObjectKey{Name: "istiod-default-validator"}, vwc); err != nil {
			t.Fatal(err)
		}
		if svc := vwc.Webhooks[0].ClientConfig.Service; svc == nil || svc.Name != "istiod-"+rev {
			t.Errorf("default validator still calls %+v, want istiod-%s", svc, rev)
		}
		if in.Revision() != rev || in.Version() != "1.30.3" {
			t.Errorf("Installer now manages revision %q version %s, want %s 1.30.3", in.Revision(), in.Version(), rev)
		}
		wantReleases(t, env, ns, "istio-base", "istiod-"+rev)

		if err := in.Uninstall(ctx, true); err != nil {
			t.Fatal(err)
		}
		if left, err := in.Leftovers(ctx); err != nil || len(left) > 0 {
			t.Errorf("after Uninstall(purge): leftovers %v, err %v", left, err)
		}
		wantReleases(t, env, ns)
	})
}

func newInstaller(t *testing.T, env *testsupport.Env, root, version string, opts ...istio.Option) *istio.Installer {
	t.Helper()
	base := []istio.Option{istio.WithVersion(version), istio.WithChartsDir(filepath.Join(root, version)), istio.WithLogger(testsupport.Logger(t))}
	in, err := istio.New(env.Config, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func istiodImage(t *testing.T, env *testsupport.Env, ns, name string) string {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
		t.Fatalf("Deployment %s/%s: %v", ns, name, err)
	}
	return d.Spec.Template.Spec.Containers[0].Image
}

// wantReleases checks the deployed Helm releases in ns, read from Helm's
// release Secrets (label owner=helm, status=deployed).
func wantReleases(t *testing.T, env *testsupport.Env, ns string, names ...string) {
	t.Helper()
	secrets := &corev1.SecretList{}
	if err := env.Client.List(context.Background(), secrets, client.InNamespace(ns), client.MatchingLabels{"owner": "helm", "status": "deployed"}); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range secrets.Items {
		got[s.Labels["name"]] = true
	}
	for _, n := range names {
		if !got[n] {
			t.Errorf("release %s not deployed in %s; deployed: %v", n, ns, got)
		}
		delete(got, n)
	}
	if len(got) > 0 {
		t.Errorf("unexpected deployed releases in %s: %v", ns, got)
	}
}

func wantSecret(t *testing.T, env *testsupport.Env, ns, name string) {
	t.Helper()
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &corev1.Secret{}); err != nil {
		t.Errorf("Secret %s/%s: %v", ns, name, err)
	}
}
