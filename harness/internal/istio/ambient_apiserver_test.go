package istio_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
)

// releaseEvents records, in the order the API server sends them, the
// creation and deletion of Helm's release records (Secrets
// sh.helm.release.v1.<name>.v<n>, labelled owner=helm) in a namespace:
// the order in which Helm installed, upgraded and uninstalled releases,
// as the API server saw it.
type releaseEvents struct {
	mu     sync.Mutex
	events []string // "ADDED istiod.v1", "DELETED ztunnel.v2", ...
}

func watchReleases(t *testing.T, env *testsupport.Env, ns string) *releaseEvents {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	w, err := cs.CoreV1().Secrets(ns).Watch(t.Context(), metav1.ListOptions{LabelSelector: "owner=helm"})
	if err != nil {
		t.Fatal(err)
	}
	r := &releaseEvents{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Secret)
			if !ok || (ev.Type != watch.Added && ev.Type != watch.Deleted) {
				continue
			}
			r.mu.Lock()
			r.events = append(r.events, fmt.Sprintf("%s %s.v%s", ev.Type, s.Labels["name"], s.Labels["version"]))
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return r
}

// order returns the position of each event's first occurrence, waiting a
// little for the watch to deliver them all; a missing event fails.
func (r *releaseEvents) order(t *testing.T, want ...string) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := slices.Clone(r.events)
		r.mu.Unlock()
		idx := make([]int, len(want))
		missing := ""
		for i, e := range want {
			if idx[i] = slices.Index(got, e); idx[i] < 0 {
				missing = e
			}
		}
		if missing == "" {
			return idx
		}
		if time.Now().After(deadline) {
			t.Fatalf("no event %q among %v", missing, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantOrder checks that the events happened in the order given.
func (r *releaseEvents) wantOrder(t *testing.T, what string, want ...string) {
	t.Helper()
	idx := r.order(t, want...)
	if !slices.IsSorted(idx) {
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Errorf("%s: want %v in that order; the API server saw %v", what, want, r.events)
	}
}

// testAmbientLifecycle installs ambient mode with the shared charts of
// 1.29.6, upgrades it in place to 1.30.3 and uninstalls it, and holds each
// to Istio's documented order as the API server saw it (Helm's release
// records): base, istiod, istio-cni, ztunnel to install and upgrade, the
// reverse to uninstall; every release in the run's ledger.
func testAmbientLifecycle(t *testing.T, env *testsupport.Env, root string) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	c := env.Client
	const ns = "istio-ambient"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	const coord = "mp-ambient-coord"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: coord}}); err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(ctx, c, ownership.NewRunID(time.Now()), t.TempDir(), ledger.WithNamespace(coord))
	if err != nil {
		t.Fatal(err)
	}
	events := watchReleases(t, env, ns)
	in := newInstaller(t, env, root, "1.29.6", istio.WithNamespace(ns), istio.WithAmbient(true), istio.WithLedger(l),
		istio.WithWorkloadCertTTL(time.Minute), istio.WithReadyTimeout(5*time.Second))
	if err := in.Install(ctx); err != nil {
		t.Fatal(err)
	}
	wantReleases(t, env, ns, istio.BaseReleaseName, istio.IstiodReleaseName, istio.CNIReleaseName, istio.ZtunnelReleaseName)
	events.wantOrder(t, "install", "ADDED istio-base.v1", "ADDED istiod.v1", "ADDED istio-cni.v1", "ADDED ztunnel.v1")
	// The order Render and `meshproof plan -o yaml` follow is this one.
	var planned []string
	for _, r := range in.ChartReleases() {
		planned = append(planned, r.Name)
	}
	if want := []string{istio.BaseReleaseName, istio.IstiodReleaseName, istio.CNIReleaseName, istio.ZtunnelReleaseName}; !slices.Equal(planned, want) {
		t.Errorf("ChartReleases() = %v, want the install order %v", planned, want)
	}
	checkAmbientObjects(t, env, ns, "1.29.6")
	var recorded []string
	for _, r := range l.Record().Releases {
		recorded = append(recorded, r.Namespace+"/"+r.Name)
	}
	for _, name := range []string{istio.BaseReleaseName, istio.IstiodReleaseName, istio.CNIReleaseName, istio.ZtunnelReleaseName} {
		if !slices.Contains(recorded, ns+"/"+name) {
			t.Errorf("ledger releases %v lack %s/%s", recorded, ns, name)
		}
	}

	// No kubelet here: WaitReady gives up on istiod, the first thing it
	// waits for, naming it.
	if err := in.WaitReady(ctx); err == nil || !strings.Contains(err.Error(), "istiod Deployment "+ns+"/istiod") {
		t.Errorf("WaitReady without a kubelet: %v", err)
	}
	if err := in.InstallCanary(ctx, "1-30-3", "1.30.3", filepath.Join(root, "1.30.3")); err == nil || !strings.Contains(err.Error(), "canary upgrade of ambient mode is not supported") {
		t.Errorf("InstallCanary on ambient: %v", err)
	}

	if err := in.Upgrade(ctx, "1.30.3", filepath.Join(root, "1.30.3")); err != nil {
		t.Fatal(err)
	}
	events.wantOrder(t, "upgrade", "ADDED istio-base.v2", "ADDED istiod.v2", "ADDED istio-cni.v2", "ADDED ztunnel.v2")
	checkAmbientObjects(t, env, ns, "1.30.3")

	if err := in.Uninstall(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Helm deletes a release's records when it uninstalls it; each
	// release's first deletion marks its turn.
	events.wantOrder(t, "uninstall", "DELETED ztunnel.v2", "DELETED istio-cni.v2", "DELETED istiod.v2", "DELETED istio-base.v2")
	wantReleases(t, env, ns)
	for _, name := range []string{istio.CNIDaemonSet, istio.ZtunnelDaemonSet} {
		err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &appsv1.DaemonSet{})
		if err == nil {
			t.Errorf("DaemonSet %s/%s still there after Uninstall", ns, name)
		}
	}
	if left, err := in.Leftovers(ctx); err != nil || len(left) > 0 {
		t.Errorf("after Uninstall(purge): leftovers %v, err %v", left, err)
	}
}

// checkAmbientObjects checks what the four releases applied for version:
// istiod with ambient on, the HBONE proxy metadata for injected sidecars,
// and both DaemonSets with the version's images and the certificate TTL.
func checkAmbientObjects(t *testing.T, env *testsupport.Env, ns, version string) {
	t.Helper()
	ctx := t.Context()
	c := env.Client
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, d); err != nil {
		t.Fatal(err)
	}
	env0 := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		env0[e.Name] = e.Value
	}
	if env0["PILOT_ENABLE_AMBIENT"] != "true" {
		t.Errorf("istiod %s: PILOT_ENABLE_AMBIENT=%q, want true", version, env0["PILOT_ENABLE_AMBIENT"])
	}
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istio"}, cm); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["mesh"], "ISTIO_META_ENABLE_HBONE") {
		t.Errorf("mesh config %s lacks ISTIO_META_ENABLE_HBONE:\n%s", version, cm.Data["mesh"])
	}
	for name, image := range map[string]string{istio.CNIDaemonSet: "docker.io/istio/install-cni:" + version + "-distroless", istio.ZtunnelDaemonSet: "docker.io/istio/ztunnel:" + version + "-distroless"} {
		ds := &appsv1.DaemonSet{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ds); err != nil {
			t.Fatalf("DaemonSet %s: %v", name, err)
		}
		if got := ds.Spec.Template.Spec.Containers[0].Image; got != image {
			t.Errorf("DaemonSet %s image %q, want %q", name, got, image)
		}
		if name != istio.ZtunnelDaemonSet {
			continue
		}
		var ttl string
		for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
			if e.Name == "SECRET_TTL" {
				ttl = e.Value
			}
		}
		if ttl != "60s" {
			t.Errorf("ztunnel %s SECRET_TTL %q, want 60s", version, ttl)
		}
	}
	cni := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istio-cni-config"}, cni); err != nil {
		t.Fatal(err)
	}
	if cni.Data["AMBIENT_ENABLED"] != "true" {
		t.Errorf("istio-cni-config %s: AMBIENT_ENABLED=%q, want true", version, cni.Data["AMBIENT_ENABLED"])
	}
}
