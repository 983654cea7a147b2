package controlplane_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/testsupport"

	"github.com/go-logr/logr"
	apisecurityv1beta1 "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1apply "istio.io/client-go/pkg/applyconfiguration/security/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// shared is one control plane for the tests that only need a working API server;
// starting one per test would cost seconds each on a shared CI machine.
var shared *testsupport.Env

const fieldOwner = client.FieldOwner("meshproof-testenv-test")

func TestMain(m *testing.M) {
	if p := os.Getenv(controlplane.ClaimChildEnv); p != "" {
		// A child of TestClaimedPortsAreNotHandedOutTwice: another
		// meshproof process trying to claim a port, without a control plane.
		port, _ := strconv.Atoi(p)
		if controlplane.ClaimPort(port) {
			fmt.Println("claimed")
		} else {
			fmt.Println("refused")
		}
		os.Exit(0)
	}
	// envtest logs through controller-runtime; without a logger it prints a warning
	// with a stack trace instead. Failures reach the tests as errors anyway.
	ctrllog.SetLogger(logr.Discard())
	proc.StopOnSignal(30 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	env, stop, err := controlplane.StartEnv(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
	shared = &testsupport.Env{Env: env}
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane: stopping the shared control plane:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func TestAPIServerReportsKubernetesV1372(t *testing.T) {
	ctx := t.Context()
	info, err := shared.Discovery.ServerVersionWithContext(ctx)
	if err != nil {
		t.Fatalf("GET /version: %v", err)
	}
	t.Logf("/version: gitVersion=%s major=%s minor=%s buildDate=%s goVersion=%s platform=%s",
		info.GitVersion, info.Major, info.Minor, info.BuildDate, info.GoVersion, info.Platform)
	if info.GitVersion != "v1.37.2" || info.Major != "1" || info.Minor != "37" {
		t.Errorf("/version = %s (major %q, minor %q), want v1.37.2 (1, 37)", info.GitVersion, info.Major, info.Minor)
	}
	if shared.ServerVersion.GitVersion != info.GitVersion {
		t.Errorf("Env.ServerVersion = %s, /version now says %s", shared.ServerVersion.GitVersion, info.GitVersion)
	}
}

func TestIstioCRDsAreInstalledAndEstablished(t *testing.T) {
	names := map[string]bool{}
	for _, crd := range shared.IstioCRDs {
		names[crd.Name] = true
		established := false
		for _, cond := range crd.Status.Conditions {
			if cond.Type == "Established" && cond.Status == "True" {
				established = true
			}
		}
		if !established {
			t.Errorf("CRD %s is not Established: %+v", crd.Name, crd.Status.Conditions)
		}
	}
	for _, want := range []string{
		"peerauthentications.security.istio.io",
		"authorizationpolicies.security.istio.io",
		"destinationrules.networking.istio.io",
		"virtualservices.networking.istio.io",
	} {
		if !names[want] {
			t.Errorf("CRD %s is not installed (have %d Istio CRDs)", want, len(names))
		}
	}
}

func TestStrictPeerAuthenticationIsAcceptedByServerSideApply(t *testing.T) {
	ctx := t.Context()
	ns := shared.NewNamespace(t, "pa-strict")

	apply := securityv1apply.PeerAuthentication("default", ns).
		WithLabels(map[string]string{"app.kubernetes.io/managed-by": "meshproof"}).
		WithSpec(apisecurityv1beta1.PeerAuthentication{
			Mtls: &apisecurityv1beta1.PeerAuthentication_MutualTLS{
				Mode: apisecurityv1beta1.PeerAuthentication_MutualTLS_STRICT,
			},
		})
	// Istio's generated apply configurations are served by Istio's clientset (they do
	// not implement controller-runtime's runtime.ApplyConfiguration).
	applied, err := shared.Istio.SecurityV1().PeerAuthentications(ns).Apply(ctx, apply, metav1.ApplyOptions{FieldManager: string(fieldOwner), Force: true})
	if err != nil {
		t.Fatalf("server-side apply of a STRICT PeerAuthentication: %v", err)
	}
	if applied.Spec.GetMtls().GetMode() != apisecurityv1beta1.PeerAuthentication_MutualTLS_STRICT {
		t.Errorf("apply response mTLS mode = %v, want STRICT", applied.Spec.GetMtls().GetMode())
	}

	got := &securityv1.PeerAuthentication{}
	if err := shared.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "default"}, got); err != nil {
		t.Fatalf("reading the applied PeerAuthentication back: %v", err)
	}
	if got.Spec.GetMtls().GetMode() != apisecurityv1beta1.PeerAuthentication_MutualTLS_STRICT {
		t.Errorf("stored mTLS mode = %v, want STRICT", got.Spec.GetMtls().GetMode())
	}
	owned := false
	for _, entry := range got.ManagedFields {
		if entry.Manager == string(fieldOwner) && entry.Operation == metav1.ManagedFieldsOperationApply {
			owned = true
		}
	}
	if !owned {
		t.Errorf("no Apply managed-fields entry for %s; the write was not a server-side apply: %+v", fieldOwner, got.ManagedFields)
	}
}

func TestMisspelledPeerAuthenticationModeIsRejectedByCRDSchema(t *testing.T) {
	ctx := t.Context()
	ns := shared.NewNamespace(t, "pa-invalid")

	// Typed Istio objects cannot hold an unknown enum value, so the invalid object is
	// written the way a user's YAML would arrive: unstructured.
	pa := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1",
		"kind":       "PeerAuthentication",
		"metadata":   map[string]any{"name": "default", "namespace": ns},
		"spec":       map[string]any{"mtls": map[string]any{"mode": "STRCT"}},
	}}
	err := shared.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(pa), fieldOwner, client.ForceOwnership)
	if err == nil {
		t.Fatal("the API server accepted mtls.mode STRCT; the CRD schema was not enforced")
	}
	t.Logf("API server rejected mode STRCT: %v", err)
	if !apierrors.IsInvalid(err) {
		t.Errorf("want a 422 Invalid from schema validation, got %v (reason %q)", err, apierrors.ReasonForError(err))
	}
	for _, want := range []string{"spec.mtls.mode", `"STRCT"`, `"STRICT"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("rejection %q does not mention %s", err, want)
		}
	}
	check := &securityv1.PeerAuthentication{}
	if err := shared.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "default"}, check); !apierrors.IsNotFound(err) {
		t.Errorf("after the rejection, reading the object gave %v; want NotFound", err)
	}
}

// deploy.Find is meshproof's lister of leftovers; here it runs against the
// real API server with Istio's CRDs.
func TestFindListsLabelledObjectsOfEveryScope(t *testing.T) {
	ctx := t.Context()
	ns := shared.NewNamespace(t, "leftovers")
	run := "run-" + ns // unique, as the namespace is
	mine := map[string]string{"meshproof.test/run": run}
	other := map[string]string{"meshproof.test/run": run + "-other"}

	objects := []client.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "labelled", Namespace: ns, Labels: mine}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "unlabelled", Namespace: ns}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other-run", Namespace: ns, Labels: other}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "leftover-" + run, Labels: mine}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "other-" + run, Labels: other}},
		// A CRD-defined type, to show custom resources are searched too.
		&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "labelled", Namespace: ns, Labels: mine}},
	}
	for _, obj := range objects {
		if err := shared.Client.Create(ctx, obj); err != nil {
			t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
		}
		// Cluster-scoped objects outlive the namespace; remove them so later tests in
		// this binary see a clean cluster.
		if obj.GetNamespace() == "" {
			t.Cleanup(func() {
				if err := shared.Client.Delete(context.Background(), obj); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("deleting %s: %v", obj.GetName(), err)
				}
			})
		}
	}

	found, err := deploy.Find(ctx, shared.Discovery, shared.Metadata, labels.SelectorFromSet(mine))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ref := range found {
		got = append(got, ref.String())
	}
	want := []string{
		"ClusterRole.rbac.authorization.k8s.io leftover-" + run,
		"ConfigMap " + ns + "/labelled",
		"PeerAuthentication.security.istio.io " + ns + "/labelled",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("deploy.Find(%s) found:\n  %s\nwant:\n  %s", labels.SelectorFromSet(mine), strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for _, ref := range found {
		if ref.UID == "" || ref.Resource.Resource == "" || ref.Resource.Version == "" {
			t.Errorf("incomplete reference %+v", ref)
		}
	}
}

// Start must tie the control plane's life to the test: once the test's cleanups have
// run, neither kube-apiserver nor etcd may still be listening.
func TestStartStopsControlPlaneInCleanup(t *testing.T) {
	var apiServer, etcd *url.URL
	t.Run("with control plane", func(t *testing.T) {
		env := testsupport.Start(t)
		var err error
		if apiServer, err = url.Parse(env.Config.Host); err != nil {
			t.Fatal(err)
		}
		etcd = controlplane.EtcdURL(env.Env)
		if _, err := env.Discovery.ServerVersionWithContext(t.Context()); err != nil {
			t.Fatalf("the second control plane does not answer: %v", err)
		}
		if sharedURL, err := url.Parse(shared.Config.Host); err != nil || apiServer.Host == sharedURL.Host {
			t.Fatalf("Start reused the shared control plane at %s", apiServer.Host)
		}
	})
	if apiServer == nil || etcd == nil {
		t.Fatal("the subtest did not start a control plane")
	}
	for name, u := range map[string]*url.URL{"kube-apiserver": apiServer, "etcd": etcd} {
		conn, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("%s still accepts connections at %s after the test's cleanup", name, u.Host)
		}
	}
}

// Without binaries the environment must fail, not skip, and say how to get them.
func TestStartEnvFailsWithFixWhenBinariesAreMissing(t *testing.T) {
	t.Setenv(binaries.AssetsEnv, t.TempDir())
	env, stop, err := controlplane.StartEnv(t.Context())
	if err == nil {
		stop()
		t.Fatalf("StartEnv succeeded without binaries: %+v", env)
	}
	t.Logf("StartEnv without binaries: %v", err)
	for _, want := range []string{binaries.AssetsEnv, "go run ./harness/internal/local/binaries/assets", binaries.KubeAPIServer} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
}
