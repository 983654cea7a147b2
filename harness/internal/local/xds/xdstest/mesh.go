// Package xdstest starts, for tests, a local cluster with the real istiod,
// Istio's charts and meshproof's default fixtures, and connects xDS
// clients to it as the fixtures' sidecars: the setup of the tests that
// hold the xDS client and the Envoy evaluator to what istiod really
// serves. Tests only.
package xdstest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/xds"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Mesh is a running local cluster with istiod and the fixtures.
type Mesh struct {
	Cluster   *cluster.Cluster
	Kube      kubernetes.Interface
	Client    client.Client
	Namespace string
	// XDS is istiod's plaintext xDS address.
	XDS string
	// Pods are the fixtures' pods by workload name.
	Pods map[string]*corev1.Pod
	// Services are the fixtures' Services by workload name.
	Services map[string]*corev1.Service
	Suite    *scenario.Suite
	// workloads are the fixtures, as Start got them.
	workloads []manifests.Workload
}

// Start brings a mesh up for t and tears it down at its end: a local
// cluster named name with istiod, Istio's default charts with a plugged
// CA, and the suite's fixtures
// (default: service-a, service-b, legacy) in namespace ns, rolled out.
func Start(ctx context.Context, t *testing.T, name, ns string, workloads ...manifests.Workload) *Mesh {
	t.Helper()
	return start(ctx, t, name, ns, scenario.ProfileDefault, workloads)
}

// StartAmbient is Start with Istio's ambient profile: istiod, istio-cni
// and ztunnel's charts, so that the local cluster runs its simulated
// ztunnels (cluster.Ambient) and ambient workloads are enrolled.
func StartAmbient(ctx context.Context, t *testing.T, name, ns string, workloads ...manifests.Workload) *Mesh {
	t.Helper()
	return start(ctx, t, name, ns, scenario.ProfileAmbient, workloads)
}

func start(ctx context.Context, t *testing.T, name, ns string, profile scenario.IstioProfile, workloads []manifests.Workload) *Mesh {
	t.Helper()
	start := time.Now()
	if len(workloads) == 0 {
		workloads = manifests.StandardWorkloads(ns)
	}
	opts := []cluster.Option{cluster.WithName(name), cluster.WithIstiod(), cluster.WithLogger(testsupport.Logger(t))}
	if needsEcho(workloads) {
		opts = append(opts, cluster.WithEchoBinary(testsupport.EchoBinary(t)))
	}
	lc := cluster.New(opts...)
	t.Cleanup(func() {
		if err := lc.Destroy(context.Background()); err != nil {
			t.Errorf("destroying the local cluster: %v", err)
		}
	})
	if _, err := lc.Create(ctx); err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
	if err != nil {
		t.Fatal(err)
	}
	suite, err := scenario.Load("xdstest.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: `+istio.DefaultVersion+`, pluggedCA: true, profile: `+string(profile)+`}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	c := &suite.Clusters[0]
	c.Istio.Charts = filepath.Join(testsupport.IstioCharts(t), c.Istio.Version)
	env := lc.Env()
	m, err := mesh.Install(ctx, env.Client, lc.KubernetesRestConfig(), c, testsupport.Logger(t), istio.WithPostRenderer(lc.Istiod().PostRenderer()))
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.Istiod().WaitServing(ctx, "", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	addr, err := lc.Istiod().XDSAddress("")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("local cluster and istiod (module %s, xDS %s) ready in %s", lc.Istiod().Module(), addr, time.Since(start).Round(100*time.Millisecond))

	objs, err := manifests.Render(manifests.Options{RunID: "xdstest", Image: "meshproof.local/echo:test", Namespaces: []manifests.Namespace{{Name: ns}}, Workloads: workloads})
	if err != nil {
		t.Fatal(err)
	}
	if err := deploy.Fixtures(ctx, env.Client, objs); err != nil {
		t.Fatal(err)
	}
	var keys []client.ObjectKey
	for _, w := range workloads {
		keys = append(keys, client.ObjectKey{Namespace: w.Namespace, Name: w.Name})
	}
	if err := deploy.WaitRolledOut(ctx, env.Client, keys...); err != nil {
		t.Fatal(err)
	}
	out := &Mesh{Cluster: lc, Kube: kube, Client: env.Client, Namespace: ns, XDS: addr, Pods: map[string]*corev1.Pod{}, Services: map[string]*corev1.Service{}, Suite: suite, workloads: workloads}
	for _, w := range workloads {
		pods, err := kube.CoreV1().Pods(w.Namespace).List(ctx, metav1.ListOptions{LabelSelector: manifests.AppLabel + "=" + w.Name})
		if err != nil {
			t.Fatal(err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
				out.Pods[w.Name] = p
			}
		}
		if out.Pods[w.Name] == nil {
			t.Fatalf("no running pod of %s", w.Name)
		}
		if w.InMesh && !w.Ambient && sidecar.Proxy(out.Pods[w.Name]) == nil {
			t.Fatalf("pod %s was not injected", out.Pods[w.Name].Name)
		}
		svc, err := kube.CoreV1().Services(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out.Services[w.Name] = svc
	}
	t.Logf("fixtures %v rolled out %s after the start", keysOf(out.Pods), time.Since(start).Round(100*time.Millisecond))
	return out
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Sidecar is the local cluster's xDS client for the named workload's
// sidecar (Cluster.Sidecars), once its configuration is warm.
func (m *Mesh) Sidecar(ctx context.Context, t *testing.T, workload string) *xds.Sidecar {
	t.Helper()
	pod := m.Pods[workload]
	var sc *xds.Sidecar
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		var err error
		sc, err = m.Cluster.Sidecars().Client(pod)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("no xDS client for %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := sc.Wait(wctx, (*xds.Snapshot).Warm); err != nil {
		t.Fatalf("%v (stream %+v, NACKs %v)", err, sc.Status(), sc.NACKs())
	}
	return sc
}

// Apply replaces the policies of earlier Apply calls by step's, written as
// a run writes them (harness/policy), and returns when the API server has
// them.
func (m *Mesh) Apply(ctx context.Context, t *testing.T, step *scenario.MTLSStep, index int) time.Time {
	t.Helper()
	s := &scenario.Suite{Fixtures: scenario.Fixtures{Namespace: m.Namespace}}
	for _, w := range append(manifests.StandardWorkloads(m.Namespace), m.workloads...) {
		if s.Workload(w.Name) == nil {
			s.Fixtures.Workloads = append(s.Fixtures.Workloads, scenario.Workload{Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.Name, Mesh: &w.InMesh})
		}
	}
	ps := policy.Step{RunID: "xdstest", Scenario: "xdstest", Index: index}
	ours := client.MatchingLabels(ownership.Labels(ps.RunID))
	for _, ns := range []string{m.Namespace, scenario.IstioRootNamespace} {
		if err := m.Client.DeleteAllOf(ctx, &securityv1.PeerAuthentication{}, client.InNamespace(ns), ours); err != nil {
			t.Fatal(err)
		}
		if err := m.Client.DeleteAllOf(ctx, &networkingv1.DestinationRule{}, client.InNamespace(ns), ours); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := policy.ForMTLS(s, step, ps)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := m.Client.Create(ctx, o.Object); err != nil {
			t.Fatalf("applying %s/%s: %v", o.Object.GetNamespace(), o.Object.GetName(), err)
		}
	}
	return time.Now()
}

// Pod re-reads a fixture's pod.
func (m *Mesh) Pod(ctx context.Context, t *testing.T, workload string) *corev1.Pod {
	t.Helper()
	p := m.Pods[workload]
	var out corev1.Pod
	if err := m.Client.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// Settle waits until istiod has pushed what it will push after applied:
// until some client has accepted a push received after applied (at most
// firstPush; a change that concerns none of them brings none) and then no
// client has received one for quiet (istiod debounces a change's events
// for 100ms and pushes each proxy once, PILOT_DEBOUNCE_AFTER). It returns
// the last push's arrival.
func Settle(ctx context.Context, applied time.Time, clients ...*xds.Sidecar) (time.Time, error) {
	const firstPush, quiet, limit = 3 * time.Second, 400 * time.Millisecond, 30 * time.Second
	last := func() time.Time {
		var t time.Time
		for _, c := range clients {
			if r := c.Snapshot().Push.Received; r.After(t) {
				t = r
			}
			for _, n := range c.NACKs() {
				if n.Push.Received.After(t) {
					t = n.Push.Received
				}
			}
		}
		return t
	}
	deadline := time.Now().Add(limit)
	for {
		now := time.Now()
		l := last()
		pushed := l.After(applied)
		switch {
		case pushed && now.Sub(l) >= quiet, !pushed && now.Sub(applied) >= firstPush:
			return l, nil
		case now.After(deadline):
			return l, fmt.Errorf("istiod still pushing %s after the apply", limit)
		}
		select {
		case <-ctx.Done():
			return l, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// needsEcho says whether a workload runs as a process of the local cluster
// (a proxyless pod, or a pod outside the mesh serving gRPC, which a
// WorkloadEntry stands for): its echo must serve before istiod gives its
// endpoint as healthy. The echo is built with go (testsupport.EchoBinary),
// which Go's test cache does not see: a package whose tests start such
// workloads is in make test's UNCACHED_TEST_PACKAGES.
func needsEcho(workloads []manifests.Workload) bool {
	for _, w := range workloads {
		if w.Proxyless {
			return true
		}
		if w.InMesh {
			continue
		}
		for _, p := range w.Ports {
			if p.Protocol == "grpc" {
				return true
			}
		}
	}
	return false
}
