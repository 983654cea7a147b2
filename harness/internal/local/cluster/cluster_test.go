package cluster_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// cluster is one local cluster for the tests that only use it.
var (
	lc   *cluster.Cluster
	kube kubernetes.Interface
)

func TestMain(m *testing.M) {
	proc.StopOnSignal(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute) // includes first-use builds
	lc = cluster.New(cluster.WithName("lc-test"))
	_, err := lc.Create(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "these tests need a local cluster:", err)
		os.Exit(1)
	}
	if kube, err = kubernetes.NewForConfig(lc.KubernetesRestConfig()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := lc.Destroy(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "destroying the local cluster:", err)
		code = 1
	}
	os.Exit(code)
}

func until(t *testing.T, within time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, within, true, cond); err != nil {
		t.Fatalf("%s: not within %s: %v", what, within, err)
	}
}

func namespace(t *testing.T) string {
	t.Helper()
	ns, err := kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "lc-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func deployment(t *testing.T, ns, name string, replicas int32) *appsv1.Deployment {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "app",
					Image: "registry.invalid/echo:never-pulled",
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}
	created, err := kube.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// rolledOut is kubectl rollout status's condition: the controller has seen the
// latest spec and every replica is updated and available, with no old ones left.
func rolledOut(ctx context.Context, ns, name string) (bool, error) {
	d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	want := *d.Spec.Replicas
	return d.Status.ObservedGeneration >= d.Generation &&
		d.Status.UpdatedReplicas == want && d.Status.Replicas == want && d.Status.AvailableReplicas == want, nil
}

func runningPods(t *testing.T, ns, app string) []corev1.Pod {
	t.Helper()
	pods, err := kube.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// A Deployment goes through the real controllers (ReplicaSet, Pods), the real
// scheduler (bound to a fake node) and kwok (Running, Ready, a pod IP).
func TestDeploymentRollsOut(t *testing.T) {
	ns := namespace(t)
	deployment(t, ns, "echo", 2)
	until(t, 2*time.Minute, "Deployment echo rolled out", func(ctx context.Context) (bool, error) { return rolledOut(ctx, ns, "echo") })

	_, podNet, _ := net.ParseCIDR(cluster.PodCIDR)
	pods := runningPods(t, ns, "echo")
	if len(pods) != 2 {
		t.Fatalf("%d pods, want 2", len(pods))
	}
	for _, p := range pods {
		if p.Spec.NodeName == "" || !strings.HasPrefix(p.Spec.NodeName, "lc-test-node-") {
			t.Errorf("pod %s is on node %q, want a fake node of the cluster", p.Name, p.Spec.NodeName)
		}
		if p.Status.Phase != corev1.PodRunning || !podReady(&p) {
			t.Errorf("pod %s: phase %s, ready %v; want Running and Ready", p.Name, p.Status.Phase, podReady(&p))
		}
		if ip := net.ParseIP(p.Status.PodIP); ip == nil || !podNet.Contains(ip) {
			t.Errorf("pod %s has IP %q, want one in %s", p.Name, p.Status.PodIP, cluster.PodCIDR)
		}
		if len(p.OwnerReferences) != 1 || p.OwnerReferences[0].Kind != "ReplicaSet" {
			t.Errorf("pod %s is owned by %v, want its ReplicaSet", p.Name, p.OwnerReferences)
		}
		if len(p.Spec.Volumes) == 0 {
			t.Errorf("pod %s has no service-account token volume: the ServiceAccount admission plugin did not run", p.Name)
		}
	}
}

// A rolling restart (kubectl rollout restart: a new template annotation) makes
// a new ReplicaSet whose pods replace every old one.
func TestRollingRestartReplacesPods(t *testing.T) {
	ns := namespace(t)
	deployment(t, ns, "web", 2)
	until(t, 2*time.Minute, "Deployment web rolled out", func(ctx context.Context) (bool, error) { return rolledOut(ctx, ns, "web") })
	old := map[types.UID]bool{}
	for _, p := range runningPods(t, ns, "web") {
		old[p.UID] = true
	}

	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	if _, err := kube.AppsV1().Deployments(ns).Patch(t.Context(), "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	until(t, 2*time.Minute, "the restart rolled out and only new pods remain", func(ctx context.Context) (bool, error) {
		done, err := rolledOut(ctx, ns, "web")
		if !done || err != nil {
			return false, err
		}
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if old[p.UID] {
				return false, nil
			}
		}
		return len(pods.Items) == 2, nil
	})
	for _, p := range runningPods(t, ns, "web") {
		if !podReady(&p) || p.Status.PodIP == "" {
			t.Errorf("new pod %s is not Ready with an IP", p.Name)
		}
	}
}

// Deleting a namespace with a Deployment finishes: the namespace controller
// deletes its contents, the garbage collector the ReplicaSet and Pods, kwok
// lets the pods go.
func TestNamespaceDeletionCompletes(t *testing.T) {
	ns := namespace(t)
	deployment(t, ns, "doomed", 2)
	until(t, 2*time.Minute, "Deployment doomed rolled out", func(ctx context.Context) (bool, error) { return rolledOut(ctx, ns, "doomed") })
	if err := kube.CoreV1().Namespaces().Delete(t.Context(), ns, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationForeground)}); err != nil {
		t.Fatal(err)
	}
	until(t, 3*time.Minute, "namespace "+ns+" gone", func(ctx context.Context) (bool, error) {
		_, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// Destroy stops every part, kube-apiserver and etcd included.
func TestDestroyStopsEveryPart(t *testing.T) {
	own := cluster.New(cluster.WithName("lc-destroy"))
	if _, err := own.Create(t.Context()); err != nil {
		t.Fatal(err)
	}
	pids := own.Pids()
	if len(pids) != 5 {
		t.Fatalf("parts running: %v, want etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok", pids)
	}
	if err := own.Destroy(t.Context()); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("%s (pid %d) still running after Destroy", name, pid)
		}
	}
	if own.GetKubeconfig() != "" {
		t.Error("a destroyed cluster still hands out a kubeconfig")
	}
}
