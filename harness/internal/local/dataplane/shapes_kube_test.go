package dataplane_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
)

// deployRendered stores the suite's fixtures as meshproof renders them
// (plan.FixtureOptions, manifests.Render): ServiceAccounts and Services as
// rendered, and for each Deployment one running pod of its template, with
// an istio-proxy container when the workload is in the mesh, as injection
// would store it. ips are the pod IPs in workload order (a proxyless
// workload's client pod gets none).
func deployRendered(t *testing.T, s *scenario.Suite, ips ...string) {
	t.Helper()
	ctx := context.Background()
	env.EnsureNamespace(t, scenario.IstioRootNamespace)
	// The engine runs these scenarios in the fixtures' own namespace,
	// one at a time, as --parallel 1 plans them.
	p, err := plan.Build(s, "dataplane-shapes", plan.WithParallel(1))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for _, o := range p.Clusters[0].Fixtures {
		switch obj := o.(type) {
		case *corev1.Namespace:
			continue // the test's namespace exists
		case *appsv1.Deployment:
			w := s.Workload(obj.Name)
			clientOf := obj.Labels[manifests.ClientOfLabel]
			if clientOf != "" {
				w = s.Workload(clientOf) // a proxyless workload's client pods
			}
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: obj.Name + "-0", Namespace: obj.Namespace, Labels: obj.Spec.Template.Labels},
				Spec:       *obj.Spec.Template.Spec.DeepCopy(),
			}
			switch {
			case w.Proxyless:
				// What Istio's grpc-agent template stores: pilot-agent as
				// a regular istio-proxy container without Envoy, and the
				// bootstrap's path on the app container.
				pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.30.3",
					Env: []corev1.EnvVar{{Name: "ISTIO_META_GENERATOR", Value: "grpc"}, {Name: "DISABLE_ENVOY", Value: "true"}}})
				pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "GRPC_XDS_BOOTSTRAP", Value: "/etc/istio/proxy/grpc-bootstrap.json"})
			case w.InMesh():
				always := corev1.ContainerRestartPolicyAlways
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.30.3", RestartPolicy: &always})
			}
			if err := env.Client.Create(ctx, pod); err != nil {
				t.Fatal(err)
			}
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning,
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
			if clientOf == "" {
				// ips are the workloads' own pods'; client pods serve
				// nothing, so nothing reaches them by address.
				pod.Status.PodIP = ips[i]
				i++
			}
			if err := env.Client.Status().Update(ctx, pod); err != nil {
				t.Fatal(err)
			}
		default:
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The new shapes decided from the stored objects: a mesh-wide
// DestinationRule (host "*" in istio-system) for every service without a
// rule of its own, shadowed by a workload's rule on every port; a Service
// port 80 forwarded to container port 18080, whose PeerAuthentication
// port-level mode is keyed by 18080; a mesh-wide SIMPLE, whose one-way TLS
// nothing on the server side terminates.
func TestMeshWideDestinationRuleAndTargetPortFromTheCluster(t *testing.T) {
	ns := namespaceFor(t)
	s, err := scenario.Load("dataplane.yaml", []byte(fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
defaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 5s}
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: %s
  workloads:
  - {name: service-a}
  - {name: service-b, ports: [{name: http, number: 80, targetPort: 18080}, {name: http-alt, number: 9090}]}
  - {name: legacy, mesh: false}
scenarios:
- name: s
  steps:
  - mtls:
      peerAuthentications:
      - {scope: workload, workload: service-b, mode: STRICT, ports: [{port: 18080, mode: DISABLE}]}
      destinationRules: [{scope: mesh, mode: ISTIO_MUTUAL}]
  - expect:
    - {from: service-a, to: service-b, port: 80, result: fail, reason: upstream-503}
    - {from: service-a, to: service-b, port: 9090, result: mtls}
    - {from: service-a, to: legacy, port: 8080, result: fail, reason: upstream-503}
    - {from: legacy, to: service-b, port: 80, result: plaintext}
    - {from: legacy, to: service-b, port: 9090, result: fail, reason: reset}
  - mtls:
      peerAuthentications:
      - {scope: workload, workload: service-b, mode: STRICT, ports: [{port: 18080, mode: DISABLE}]}
      destinationRules:
      - {scope: mesh, mode: DISABLE}
      - {workload: service-b, mode: ISTIO_MUTUAL, port: 9090}
  - expect:
    - {from: service-a, to: legacy, port: 8080, result: plaintext}
    - {from: service-b, to: service-a, port: 8080, result: plaintext}
    - {from: service-a, to: service-b, port: 9090, result: mtls}
    - {from: service-a, to: service-b, port: 80, result: plaintext}
  - mtls: {destinationRules: [{scope: mesh, mode: SIMPLE}]}
  - expect:
    - {from: service-a, to: service-b, port: 9090, result: fail, reason: upstream-503}
    - {from: service-b, to: legacy, port: 8080, result: fail, reason: upstream-503}
    - {from: legacy, to: service-b, port: 80, result: plaintext}
`, ns)))
	if err != nil {
		t.Fatal(err)
	}
	deployRendered(t, s, "10.40.0.1", "10.40.0.2", "10.40.0.3")
	errs, _ := run(t, s, newTestCA(t))
	for i, err := range errs {
		if err != nil {
			t.Errorf("step %d: %v", i+1, err)
		}
	}
}

// examples/istio-reachability.yaml, every scenario, rehearsed on its
// rendered fixtures (echo-shaped ports 80 -> 18080 and a tcp port 9000 ->
// 19000): the mesh-wide rules, the container-port override and the tcp
// rows are decided from the stored objects.
func TestReachabilityExampleRehearsed(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "examples", "istio-reachability.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ns := namespaceFor(t)
	src := strings.Replace(string(data), "namespace: reachability", "namespace: "+ns, 1)
	src = strings.Replace(src, "apiVersion: meshproof.dev/v1alpha1\n", "apiVersion: meshproof.dev/v1alpha1\ndefaults: {interval: 50ms, consecutive: 2, requests: 2, timeout: 10s}\n", 1)
	s, err := scenario.Load("istio-reachability.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	deployRendered(t, s, "10.41.0.1", "10.41.0.2", "10.41.0.3")
	dp := dataplane.New(env.Client, newTestCA(t))
	e, err := engine.New(s, "reachability", env.Client, probe.NewProber(dp), fmt.Sprint("run-", time.Now().UnixNano()),
		engine.WithLogger(testsupport.Logger(t)), engine.WithCertReader(probe.NewCertReader(dp)), engine.WithConnectionWitness(probe.NewStatsReader(dp)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.RemovePolicies(context.Background()); err != nil {
			t.Error(err)
		}
	})
	rows := 0
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j := range sc.Steps {
			if err := e.RunStep(context.Background(), sc, j); err != nil {
				t.Errorf("%s: %v", sc.Name, err)
			}
			if x := sc.Steps[j].Expect; x != nil {
				rows += len(x.Table)
			}
		}
	}
	if rows != 12 {
		t.Errorf("rehearsed %d rows, want the example's 12", rows)
	}
}
