package engine

// Helpers of the upgrade and rotateRoot tests: the real Istio installer
// against the test API server, and a stand-in for what a cluster's nodes
// and controllers would do (roll Deployments, start pods with the injected
// proxy, start istiod), since the test API server has neither.

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/scenario"

	"github.com/meshproof/meshproof/harness/internal/sidecar"
)

// The engine names only MeshControl; the installer the suites pass must
// satisfy it.
var _ MeshControl = (*istio.Installer)(nil)

var (
	fastOnce   sync.Once
	fastClient client.Client
)

// kubeFast is a client of the test API server without client-side rate
// limiting. The fake nodes poll every few milliseconds and the engine's
// continuous traffic resolves pods every round; on the shared client's
// default 5 requests per second they would starve each other's waits.
func kubeFast() client.Client {
	fastOnce.Do(func() {
		cfg := rest.CopyConfig(env.Config)
		cfg.QPS = -1 // no rate limiter
		c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
		if err != nil {
			panic(fmt.Sprintf("a client for the test API server: %v", err))
		}
		fastClient = c
	})
	return fastClient
}

// newMeshEngine is newEngine on the unthrottled client.
func newMeshEngine(t *testing.T, s *scenario.Suite, p Prober, opts ...Option) *Engine {
	t.Helper()
	e, err := New(s, "c", kubeFast(), p, fmt.Sprintf("run-%d", time.Now().UnixNano()), append([]Option{WithLogger(testsupport.Logger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// installIstio installs Istio version with the real Helm installer into
// namespace istioNS, and uninstalls it when the test ends: the releases'
// webhooks point at an istiod that never runs here and must not outlive the
// test. Istio's CRDs, which the other tests need, are kept (the base chart
// marks them keep).
func installIstio(t *testing.T, istioNS, version string, opts ...istio.Option) *istio.Installer {
	t.Helper()
	root := testsupport.IstioCharts(t)
	// Upgrade steps without charts of their own find them here.
	t.Setenv(chartsEnv, root)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if err := env.HandIstioCRDsToHelm(ctx, istio.BaseReleaseName, istioNS); err != nil {
		t.Fatal(err)
	}
	base := []istio.Option{istio.WithVersion(version), istio.WithChartsDir(filepath.Join(root, version)), istio.WithNamespace(istioNS),
		istio.WithLogger(testsupport.Logger(t))}
	in, err := istio.New(env.Config, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := in.Uninstall(ctx, false); err != nil {
			t.Errorf("uninstalling Istio from %s: %v", istioNS, err)
		}
	})
	if err := in.Install(ctx); err != nil {
		t.Fatal(err)
	}
	return in
}

// kubeletlessMesh is the real installer whose WaitReady waits only for the
// istiod Deployments to roll out: its other half, a dry-run pod that the
// injector webhook must answer, needs an istiod process, which cannot run
// here.
type kubeletlessMesh struct {
	*istio.Installer
	mu             sync.Mutex
	waitReadyCalls int
}

func (m *kubeletlessMesh) WaitReady(ctx context.Context) error {
	m.mu.Lock()
	m.waitReadyCalls++
	m.mu.Unlock()
	var ds appsv1.DeploymentList
	if err := kubeFast().List(ctx, &ds, client.InNamespace(m.Namespace()), client.MatchingLabels{"app": "istiod"}); err != nil {
		return err
	}
	var keys []client.ObjectKey
	for _, d := range ds.Items {
		keys = append(keys, client.ObjectKeyFromObject(&d))
	}
	if len(keys) == 0 {
		return fmt.Errorf("no istiod Deployment in %s", m.Namespace())
	}
	return deploy.WaitRolledOut(ctx, kubeFast(), keys...)
}

// fakeNodes plays, for an application namespace and Istio's namespace,
// what a cluster's controllers and kubelets do: a Deployment whose
// generation is ahead of its status gets a new pod (with the istio-proxy
// image the injector would give it, from proxyImage) that is marked
// running and ready, its old pods are deleted, and its status says rolled
// out. An istiod Deployment "starts" through istiodStarted, and is rolled
// out only once that succeeded.
type fakeNodes struct {
	t             *testing.T
	appNS         string
	istioNS       string
	proxyImage    func(ctx context.Context, ns string) string
	podStarted    func(ctx context.Context, workload, pod string)
	istiodStarted func(ctx context.Context, d *appsv1.Deployment) error
	cancel        context.CancelFunc
	done          chan struct{}
}

func (f *fakeNodes) start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go func() {
		defer close(f.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, ns := range []string{f.istioNS, f.appNS} {
				if ns != "" {
					f.reconcile(ctx, ns)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	f.t.Cleanup(f.stop)
}

func (f *fakeNodes) stop() {
	f.cancel()
	<-f.done
}

func (f *fakeNodes) reconcile(ctx context.Context, ns string) {
	var ds appsv1.DeploymentList
	if err := kubeFast().List(ctx, &ds, client.InNamespace(ns)); err != nil {
		return
	}
	for i := range ds.Items {
		d := &ds.Items[i]
		if d.Status.ObservedGeneration >= d.Generation {
			continue
		}
		if ns == f.appNS {
			if err := f.roll(ctx, d); err != nil {
				if ctx.Err() == nil {
					f.t.Logf("fake nodes: rolling %s/%s: %v", ns, d.Name, err)
				}
				continue
			}
		} else if f.istiodStarted != nil {
			if err := f.istiodStarted(ctx, d); err != nil {
				if ctx.Err() == nil {
					f.t.Logf("fake nodes: starting %s/%s: %v", ns, d.Name, err)
				}
				continue
			}
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		if ns == f.istioNS {
			// The installer's rollout check looks for the ReplicaSet of
			// the current template; istiod's pods play no part here.
			if _, err := testsupport.ReplicaSetOf(ctx, kubeFast(), d, fmt.Sprint(d.Generation), want); err != nil {
				if ctx.Err() == nil {
					f.t.Logf("fake nodes: ReplicaSet of %s/%s: %v", ns, d.Name, err)
				}
				continue
			}
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: want, UpdatedReplicas: want, ReadyReplicas: want, AvailableReplicas: want,
			Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}}
		_ = kubeFast().Status().Update(ctx, d) // a conflict is retried on the next tick
	}
}

// roll replaces a workload Deployment's pods by one of its generation.
func (f *fakeNodes) roll(ctx context.Context, d *appsv1.Deployment) error {
	name := fmt.Sprintf("%s-g%d", d.Name, d.Generation)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: d.Namespace,
			// The test plays the injector; the real one (whose webhook has
			// no istiod behind it) is told to stay out.
			Labels: map[string]string{"app": d.Name, "sidecar.istio.io/inject": "false"}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "meshproof.local/echo:test"}},
		},
	}
	if img := f.proxyImage(ctx, d.Namespace); img != "" {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: sidecar.ContainerName, Image: img})
	}
	if err := kubeFast().Create(ctx, pod); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return err
		}
		if err := kubeFast().Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return err
		}
	}
	if f.podStarted != nil {
		f.podStarted(ctx, d.Name, name)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.1.0.%d", d.Generation%250),
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := kubeFast().Status().Update(ctx, pod); err != nil {
		return err
	}
	var pods corev1.PodList
	if err := kubeFast().List(ctx, &pods, client.InNamespace(d.Namespace), client.MatchingLabels{"app": d.Name}); err != nil {
		return err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Name != name {
			if err := kubeFast().Delete(ctx, p); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
	}
	return nil
}

// chartInjector returns the proxy image Istio's injector gives a pod in
// namespace ns: the namespace's labels select a revision (istio.io/rev,
// else istio-injection=enabled for the default one), whose istiod image
// <hub>/pilot:<tag> goes with the proxy <hub>/proxyv2:<tag>.
func chartInjector(istioNS string) func(ctx context.Context, ns string) string {
	return func(ctx context.Context, ns string) string {
		var n corev1.Namespace
		if err := kubeFast().Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			return ""
		}
		istiod := ""
		switch rev := n.Labels["istio.io/rev"]; {
		case rev == "default" || rev == "" && n.Labels["istio-injection"] == "enabled":
			istiod = "istiod"
		case rev != "":
			istiod = "istiod-" + rev
		default:
			return ""
		}
		var d appsv1.Deployment
		if err := kubeFast().Get(ctx, client.ObjectKey{Namespace: istioNS, Name: istiod}, &d); err != nil {
			return ""
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name == "discovery" {
				return strings.Replace(c.Image, "/pilot:", "/proxyv2:", 1)
			}
		}
		return ""
	}
}

// workloadDeployment creates a one-replica Deployment for a workload.
func workloadDeployment(t *testing.T, ns, name string) {
	t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "meshproof.local/echo:test"}}},
			},
		},
	}
	if err := kubeFast().Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
}

// labelNamespace sets labels on a namespace.
func labelNamespace(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	var n corev1.Namespace
	if err := kubeFast().Get(context.Background(), client.ObjectKey{Name: ns}, &n); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(n.DeepCopy())
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	for k, v := range labels {
		n.Labels[k] = v
	}
	if err := kubeFast().Patch(context.Background(), &n, patch); err != nil {
		t.Fatal(err)
	}
}

// podProxies returns, per workload, the istio-proxy image of its pods.
func podProxies(t *testing.T, ns string, workloads ...string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, w := range workloads {
		var pods corev1.PodList
		if err := kubeFast().List(context.Background(), &pods, client.InNamespace(ns), client.MatchingLabels{"app": w}); err != nil {
			t.Fatal(err)
		}
		for i := range pods.Items {
			img := ""
			if c := sidecar.Proxy(&pods.Items[i]); c != nil {
				img = c.Image
			}
			out[w] = append(out[w], img)
		}
	}
	return out
}
