package istio_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

// injectorStandIn answers the API server's calls to Istio's sidecar
// injector webhook as istiod would, adding an istio-proxy container of the
// image it is told: there is no istiod process here, but the admission
// chain, the chart's webhook configuration and its selectors are the real
// ones.
type injectorStandIn struct {
	image atomic.Value // string
	calls atomic.Int32
}

func (s *injectorStandIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	patch, _ := json.Marshal([]map[string]any{{"op": "add", "path": "/spec/containers/-",
		"value": corev1.Container{Name: "istio-proxy", Image: s.image.Load().(string)}}})
	review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true,
		Patch: patch, PatchType: ptr.To(admissionv1.PatchTypeJSONPatch)}
	review.Request = nil
	_ = json.NewEncoder(w).Encode(review)
}

// pointInjectorAt makes the chart's injector webhooks call url (trusting
// caPEM) instead of the istiod Service, which nothing serves here.
func pointInjectorAt(ctx context.Context, t *testing.T, env *testsupport.Env, url string, caPEM []byte) {
	t.Helper()
	var list admissionregv1.MutatingWebhookConfigurationList
	if err := env.Client.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range list.Items {
		cfg := &list.Items[i]
		if !strings.HasPrefix(cfg.Name, "istio-sidecar-injector") {
			continue
		}
		for j := range cfg.Webhooks {
			cfg.Webhooks[j].ClientConfig = admissionregv1.WebhookClientConfig{URL: ptr.To(url), CABundle: caPEM}
			n++
		}
		if err := env.Client.Update(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 {
		t.Fatal("the chart installed no sidecar injector webhook")
	}
}

// setDeploymentStatus writes what the Deployment controller would report.
func setDeploymentStatus(ctx context.Context, t *testing.T, env *testsupport.Env, d *appsv1.Deployment, replicas, updated, available int32) {
	t.Helper()
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(d), d); err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: replicas, UpdatedReplicas: updated,
		ReadyReplicas: available, AvailableReplicas: available,
		Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}}
	if err := env.Client.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
}

// TestInPlaceUpgradeReadinessAgainstAPIServer upgrades Istio in place with
// the real Helm installer and plays the Deployment controller's rollout of
// istiod step by step: the old istiod stays Available throughout, so only
// the ReplicaSets and pods tell when the rollout is over; then the real
// API server's admission chain calls the injector (a stand-in answering as
// istiod would), whose proxy tag must be the new version's.
func TestInPlaceUpgradeReadinessAgainstAPIServer(t *testing.T) {
	// Each of the API server tests has an API server of its own.
	t.Parallel()
	root := testsupport.IstioCharts(t)
	ctrllog.SetLogger(logr.Discard())
	env := testsupport.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	const ns = "istio-ready"
	if err := env.HandIstioCRDsToHelm(ctx, istio.BaseReleaseName, ns); err != nil {
		t.Fatal(err)
	}
	in := newInstaller(t, env, root, "1.29.6", istio.WithNamespace(ns), istio.WithReadyTimeout(3*time.Second))
	if err := in.Install(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := in.Uninstall(ctx, false); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	c := env.Client
	old := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, old); err != nil {
		t.Fatal(err)
	}
	oldRS, err := testsupport.ReplicaSetOf(ctx, c, old, "old", 1)
	if err != nil {
		t.Fatal(err)
	}
	oldPod, err := testsupport.PodOf(ctx, c, oldRS, "istiod-old-0")
	if err != nil {
		t.Fatal(err)
	}
	setDeploymentStatus(ctx, t, env, old, 1, 1, 1)

	if err := in.Upgrade(ctx, "1.30.3", root+"/1.30.3"); err != nil {
		t.Fatal(err)
	}
	injector := &injectorStandIn{}
	injector.image.Store("docker.io/istio/proxyv2:1.30.3")
	srv := httptest.NewTLSServer(injector)
	t.Cleanup(srv.Close)
	pointInjectorAt(ctx, t, env, srv.URL+"/inject", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))

	upgraded := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, upgraded); err != nil {
		t.Fatal(err)
	}
	if upgraded.Generation == old.Generation {
		t.Fatal("the upgrade did not change istiod's Deployment")
	}
	newRS, err := testsupport.ReplicaSetOf(ctx, c, upgraded, "new", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testsupport.PodOf(ctx, c, newRS, "istiod-new-0"); err != nil {
		t.Fatal(err)
	}

	notReady := func(phase string, want ...string) {
		t.Helper()
		err := in.WaitReady(ctx)
		t.Logf("%s: %v", phase, err)
		if err == nil {
			t.Fatalf("%s: WaitReady declared the upgraded control plane ready", phase)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error lacks %q", phase, w)
			}
		}
	}

	// Mid-rollout: the new pod is up, the old one still counted; the
	// Deployment is Available with its latest generation observed.
	setDeploymentStatus(ctx, t, env, upgraded, 2, 1, 2)
	notReady("mid-rollout", "istiod Deployment "+ns+"/istiod to roll out", "rollout in progress: 1 of 1 replicas updated, 2 in all")

	// The controller has scaled the old ReplicaSet down and counts only
	// the new pod, but the old istiod pod is still there (terminating).
	if _, err := testsupport.ReplicaSetOf(ctx, c, old, "old", 0); err != nil {
		t.Fatal(err)
	}
	setDeploymentStatus(ctx, t, env, upgraded, 1, 1, 1)
	notReady("old pod left", "1 pod(s) of older ReplicaSets still there: istiod-old-0 (ReplicaSet istiod-old)")
	if n := injector.calls.Load(); n != 0 {
		t.Errorf("the injection probe ran %d times before the rollout was over", n)
	}

	// The old pod is gone: the rollout is over, and the injector gives the
	// new proxy.
	if err := c.Delete(ctx, oldPod); err != nil {
		t.Fatal(err)
	}
	if err := in.WaitReady(ctx); err != nil {
		t.Fatalf("the rolled-out upgrade is not ready: %v", err)
	}
	if injector.calls.Load() == 0 {
		t.Error("the API server never called the injector: the dry-run pod was not injected by the webhook")
	}

	// An injector still handing out the old proxy is refused.
	injector.image.Store("docker.io/istio/proxyv2:1.29.6")
	notReady("old proxy injected", `the sidecar injector of revision "default" to inject istio-proxy of tag 1.30.3`,
		"last observed: injected istio-proxy docker.io/istio/proxyv2:1.29.6, not tag 1.30.3: the injector of another version answers")
}
