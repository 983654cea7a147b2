package plan_test

// These tests hold the plan to a real kube-apiserver with Istio's real CRDs
// (harness/internal/local/controlplane): every object `meshproof plan -o yaml` prints must be
// accepted by server-side apply, and a policy the CRD schema refuses must be
// reported with the API server's words at the scenario line it came from.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
)

var kube testsupport.Shared

func TestMain(m *testing.M) {
	os.Exit(kube.Main(m))
}

// scenariosFile is the repository's own scenario file.
const scenariosFile = "../../scenarios.yaml"

// loadRepoScenarios loads the repository's scenarios.yaml under the name a
// user running `meshproof` from the repository root sees in positions.
func loadRepoScenarios(t *testing.T) (*scenario.Suite, []string) {
	t.Helper()
	data, err := os.ReadFile(scenariosFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := scenario.Load("scenarios.yaml", data)
	if err != nil {
		t.Fatalf("the repository's scenarios.yaml does not load: %v", err)
	}
	return s, strings.Split(string(data), "\n")
}

// yamlDocuments parses multi-document YAML into objects. Documents holding
// only comments (the plan's header) yield nothing; any other document that
// is not an object is an error.
func yamlDocuments(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("reading the plan's YAML: %v", err)
		}
		var m map[string]any
		if err := sigsyaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("plan YAML document does not parse: %v\n%s", err, doc)
		}
		if m == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
			t.Fatalf("plan YAML document is not a Kubernetes object:\n%s", doc)
		}
		objs = append(objs, u)
	}
}

func TestEveryPlannedObjectIsAcceptedByTheAPIServer(t *testing.T) {
	s, _ := loadRepoScenarios(t)
	assertPlanAccepted(t, s, "plan-accept")
}

// The policy shapes scenarios.yaml does not use: a DestinationRule SIMPLE,
// a workload's rule with a port-level override (one object), a step that
// removes every policy, a matrix with exclude, a mesh-wide DestinationRule
// (host "*" in the root namespace) with a port-level setting, fixtures whose
// Service port differs from the container port (80 -> 18080, as Istio's
// echo) with a PeerAuthentication keyed by the container port and a
// DestinationRule by the Service port, and tcp ports (appProtocol tcp).
func TestNewPolicyShapesAreAcceptedByTheAPIServer(t *testing.T) {
	s, err := scenario.Load("shapes.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: plan-shapes
  workloads:
  - {name: service-a}
  - name: service-b
    ports:
    - {name: http, number: 80, targetPort: 18080}
    - {name: tcp-echo, number: 9000, targetPort: 19000}
    - {name: http-alt, number: 9090}
  - {name: legacy, mesh: false, ports: [{name: raw, number: 8080, protocol: tcp}]}
scenarios:
- name: simple
  steps:
  - mtls: {destinationRules: [{workload: service-b, mode: SIMPLE}]}
  - expect: [{from: service-a, to: service-b, port: 80, result: fail, reason: upstream-503}]
- name: port-override
  steps:
  - mtls:
      peerAuthentications: [{scope: workload, workload: service-b, mode: STRICT, ports: [{port: 9090, mode: PERMISSIVE}]}]
      destinationRules:
      - {workload: service-b, mode: ISTIO_MUTUAL}
      - {workload: service-b, mode: DISABLE, port: 9090}
      - {workload: legacy, mode: SIMPLE, port: 8080}
  - mtls: {}
- name: excluded
  matrix:
    mode: [STRICT, PERMISSIVE, DISABLE]
    exclude: [{mode: DISABLE}]
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: "${mode}"}]}
- name: mesh-wide
  steps:
  - mtls:
      peerAuthentications:
      - {scope: mesh, mode: STRICT}
      - {scope: workload, workload: service-b, mode: STRICT, ports: [{port: 18080, mode: PERMISSIVE}, {port: 19000, mode: DISABLE}]}
      destinationRules:
      - {scope: mesh, mode: ISTIO_MUTUAL}
      - {scope: mesh, mode: DISABLE, port: 8080}
      - {workload: service-b, mode: ISTIO_MUTUAL, port: 80}
  - expect:
    - {from: service-a, to: service-b, port: 80, result: mtls}
    - {from: service-a, to: service-b, port: 9000, result: plaintext}
    - {from: service-a, to: legacy, port: 8080, result: plaintext}
    - {from: legacy, to: service-b, port: 9090, result: fail}
`))
	if err != nil {
		t.Fatal(err)
	}
	assertPlanAccepted(t, s, "plan-shapes")

	// predict agrees with every row written for these shapes.
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j := range sc.Steps {
			if sc.Steps[j].Expect == nil {
				continue
			}
			preds, err := oracle.Predict(s, sc, j)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range sc.Steps[j].Expect.Table {
				if p, _ := oracle.Find(preds, x.From, x.To, x.Port); !p.Agrees(x) {
					t.Errorf("%s: row %s -> %s:%d %s, predicted %s (%s)", sc.Name, x.From, x.To, x.Port, x.Result, p, p.Why)
				}
			}
		}
	}

	// The shapes as stored (the last scenario's policies are the last
	// applied): the mesh-wide rule in the root namespace for
	// every host, the PeerAuthentication keyed by container ports, the
	// Service forwarding 80 to 18080 with appProtocol as declared.
	ctx := context.Background()
	c := kube.Get(t).Client
	dr := &unstructured.Unstructured{}
	dr.SetAPIVersion("networking.istio.io/v1")
	dr.SetKind("DestinationRule")
	if err := c.Get(ctx, client.ObjectKey{Namespace: scenario.IstioRootNamespace, Name: "meshproof-mesh"}, dr); err != nil {
		t.Fatalf("the mesh-wide DestinationRule is not stored: %v", err)
	}
	if host, _, _ := unstructured.NestedString(dr.Object, "spec", "host"); host != "*" {
		t.Errorf("mesh-wide DestinationRule host = %q, want *", host)
	}
	pa := &unstructured.Unstructured{}
	pa.SetAPIVersion("security.istio.io/v1")
	pa.SetKind("PeerAuthentication")
	if err := c.Get(ctx, client.ObjectKey{Namespace: "plan-shapes", Name: "meshproof-service-b"}, pa); err != nil {
		t.Fatal(err)
	}
	ports, _, _ := unstructured.NestedMap(pa.Object, "spec", "portLevelMtls")
	if _, ok := ports["18080"]; !ok || len(ports) != 2 {
		t.Errorf("stored portLevelMtls = %v, want container ports 18080 and 19000", ports)
	}
	svc := &corev1.Service{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "plan-shapes", Name: "service-b"}, svc); err != nil {
		t.Fatal(err)
	}
	sp := svc.Spec.Ports
	if sp[0].Port != 80 || sp[0].TargetPort.IntValue() != 18080 || *sp[0].AppProtocol != "http" || *sp[1].AppProtocol != "tcp" {
		t.Errorf("stored Service ports = %+v", sp)
	}
}

// assertPlanAccepted applies what `meshproof plan -o yaml` prints for s, and
// the typed objects, to the real API server with Istio's CRDs.
func assertPlanAccepted(t *testing.T, s *scenario.Suite, runID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := plan.Build(s, runID)
	if err != nil {
		t.Fatal(err)
	}
	planned := p.Objects()
	// The mesh-wide policies live in Istio's root namespace, which Istio's
	// install creates, not meshproof; the fixtures' namespace is in the plan.
	kube.Get(t).EnsureNamespace(t, scenario.IstioRootNamespace)

	// What `meshproof plan -o yaml` prints is applied as printed.
	var out bytes.Buffer
	if err := p.WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	printed := yamlDocuments(t, out.Bytes())
	if len(printed) != len(planned) {
		t.Fatalf("WriteYAML printed %d objects, Objects() has %d", len(printed), len(planned))
	}
	printedObjs := make([]client.Object, len(printed))
	for i, u := range printed {
		printedObjs[i] = u
	}
	if err := apply.Objects(ctx, kube.Get(t).Client, printedObjs...); err != nil {
		t.Fatalf("the API server refused the plan's YAML: %v", err)
	}

	// Every object is stored, labelled as this run's.
	stored := storedState(ctx, t, printedObjs, runID)
	// Several steps apply the same policy (same kind, namespace and name),
	// one after the other as a run does; the last one wins.
	t.Logf("applied %d objects (%d distinct) to kube-apiserver %s", len(printed), len(stored), kube.Get(t).ServerVersion.GitVersion)

	// The typed objects are the same objects: applied in the same order, as
	// the engine applies them, to
	// the same starting point, they are accepted and end in the same stored
	// state. The policies go first, so that each pass starts from no
	// policies: re-applying over a later step's policy is a different case.
	for _, o := range printed {
		if k := o.GetKind(); k == "PeerAuthentication" || k == "DestinationRule" {
			if err := kube.Get(t).Client.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
		}
	}
	// As a run applies them: fixtures as objects, each step's policies as
	// policies (with every TLS mode written out, policy.Object.Unstructured).
	for _, c := range p.Clusters {
		if err := apply.Objects(ctx, kube.Get(t).Client, c.Fixtures...); err != nil {
			t.Fatalf("the API server refused a planned fixture: %v", err)
		}
	}
	for _, sc := range p.Scenarios {
		for _, st := range sc.Steps {
			if err := apply.Policies(ctx, kube.Get(t).Client, st.Policies...); err != nil {
				t.Fatalf("the API server refused a planned policy: %v", err)
			}
		}
	}
	for name, want := range storedState(ctx, t, planned, runID) {
		if !reflect.DeepEqual(want, stored[name]) {
			t.Errorf("%s: applying the typed object stored\n%v\nbut its printed YAML stored\n%v", name, want, stored[name])
		}
	}
}

// storedState reads back every object as stored, checks that it carries the
// run's label, and returns what was applied of it (labels, annotations and
// everything outside metadata and status) by object name.
func storedState(ctx context.Context, t *testing.T, objs []client.Object, runID string) map[string]map[string]any {
	t.Helper()
	state := map[string]map[string]any{}
	for _, o := range objs {
		u, err := apply.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(u.GroupVersionKind())
		if err := kube.Get(t).Client.Get(ctx, client.ObjectKeyFromObject(u), got); err != nil {
			t.Fatalf("%s was applied but cannot be read back: %v", apply.Describe(u), err)
		}
		if got.GetLabels()[ownership.RunIDLabel] != runID {
			t.Errorf("%s: run-id label %q, want %q", apply.Describe(u), got.GetLabels()[ownership.RunIDLabel], runID)
		}
		s := map[string]any{"labels": got.GetLabels(), "annotations": got.GetAnnotations()}
		for k, v := range got.Object {
			if k != "metadata" && k != "status" {
				s[k] = v
			}
		}
		state[apply.Describe(u)] = s
	}
	return state
}

// firstPolicy returns the first policy of the suite's mtls steps for which
// pick returns true, with the line of scenarios.yaml it was written at.
func firstPolicy(t *testing.T, s *scenario.Suite, pick func(client.Object) bool) policy.Object {
	t.Helper()
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j := range sc.Steps {
			if sc.Steps[j].MTLS == nil {
				continue
			}
			objs, err := policy.ForMTLS(s, sc.Steps[j].MTLS, policy.Step{RunID: "plan-invalid", Scenario: sc.Name, Index: j})
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if pick(o.Object) {
					return o
				}
			}
		}
	}
	t.Fatal("scenarios.yaml has no policy of the kind this test needs")
	return policy.Object{}
}

// applyWithField applies the policy with one field of its spec replaced,
// as though the loader had let a bad value through, and returns the error.
func applyWithField(t *testing.T, o policy.Object, value string, field ...string) error {
	t.Helper()
	u, err := apply.ToUnstructured(o.Object)
	if err != nil {
		t.Fatal(err)
	}
	if _, found, err := unstructured.NestedFieldNoCopy(u.Object, field...); !found || err != nil {
		t.Fatalf("%s has no field %s (err %v):\n%v", apply.Describe(u), strings.Join(field, "."), err, u.Object)
	}
	if err := unstructured.SetNestedField(u.Object, value, field...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kube.Get(t).EnsureNamespace(t, u.GetNamespace())
	err = apply.Policies(ctx, kube.Get(t).Client, policy.Object{Object: u, Source: o.Source})
	if err == nil {
		t.Fatalf("the API server accepted %s with %s=%q", apply.Describe(u), strings.Join(field, "."), value)
	}
	return err
}

// assertRefusedAtLine checks that err is meshproof's report of the API
// server's refusal, at the scenario position of the policy, and that this
// position really is where the policy is written in the file.
func assertRefusedAtLine(t *testing.T, err error, o policy.Object, lines []string, apiMessage string) {
	t.Helper()
	var applyErr *apply.Error
	if !errors.As(err, &applyErr) {
		t.Fatalf("error is %T, not *apply.Error: %v", err, err)
	}
	if !apierrors.IsInvalid(err) {
		t.Errorf("error does not carry the API server's Invalid status: %v", err)
	}
	pos := applyErr.Source
	prefix := fmt.Sprintf("scenarios.yaml:%d:%d: ", pos.Line, pos.Column)
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("error does not start with the policy's position %q:\n%v", prefix, err)
	}
	if !strings.Contains(err.Error(), apiMessage) {
		t.Errorf("error does not contain the API server's message %q:\n%v", apiMessage, err)
	}
	if !strings.Contains(err.Error(), apply.Describe(o.Object)) {
		t.Errorf("error does not name the refused object %s:\n%v", apply.Describe(o.Object), err)
	}
	if pos.Line < 1 || pos.Line > len(lines) || pos.Column < 1 || pos.Column > len(lines[pos.Line-1]) {
		t.Fatalf("position %s is outside scenarios.yaml", pos)
	}
	at := lines[pos.Line-1][pos.Column-1:]
	t.Logf("refused at %s (%q): %v", pos, at, err)
	if !strings.Contains(at, "mode:") {
		t.Errorf("position %s points at %q, not at the policy mapping that sets its mode", pos, at)
	}
}

func TestInvalidPeerAuthenticationModeIsReportedAtItsScenarioLine(t *testing.T) {
	s, lines := loadRepoScenarios(t)
	pa := firstPolicy(t, s, func(o client.Object) bool {
		return o.GetObjectKind().GroupVersionKind().Kind == "PeerAuthentication"
	})
	err := applyWithField(t, pa, "STRCT", "spec", "mtls", "mode")
	assertRefusedAtLine(t, err, pa, lines, `Unsupported value: "STRCT"`)

	// The refused object did not reach storage.
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(pa.Object.GetObjectKind().GroupVersionKind())
	err = kube.Get(t).Client.Get(context.Background(), client.ObjectKeyFromObject(pa.Object), got)
	if err == nil {
		if mode, _, _ := unstructured.NestedString(got.Object, "spec", "mtls", "mode"); mode == "STRCT" {
			t.Errorf("the refused mode was stored")
		}
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func TestInvalidDestinationRuleTLSModeIsReportedAtItsScenarioLine(t *testing.T) {
	s, lines := loadRepoScenarios(t)
	dr := firstPolicy(t, s, func(o client.Object) bool {
		if o.GetObjectKind().GroupVersionKind().Kind != "DestinationRule" {
			return false
		}
		u, err := apply.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		_, found, _ := unstructured.NestedString(u.Object, "spec", "trafficPolicy", "tls", "mode")
		return found
	})
	err := applyWithField(t, dr, "ISTIO_MUTAL", "spec", "trafficPolicy", "tls", "mode")
	assertRefusedAtLine(t, err, dr, lines, `Unsupported value: "ISTIO_MUTAL"`)
}

// Proxyless gRPC fixtures: a proxyless workload (Istio's grpc-agent
// injection, the app held until pilot-agent is ready, the tlsMode label on
// request) and a sidecar workload with a gRPC port, all with appProtocol
// grpc; predict agrees with the rows written for them.
func TestProxylessFixturesAreAcceptedByTheAPIServer(t *testing.T) {
	s, err := scenario.Load("proxyless.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  namespace: plan-proxyless
  workloads:
  - {name: service-a, ports: [{name: http, number: 8080}, {name: grpc, number: 7070}]}
  - {name: grpc-a, proxyless: true}
  - {name: grpc-l, proxyless: true, tlsModeLabel: true, ports: [{name: grpc-echo, number: 80, targetPort: 17070}]}
scenarios:
- name: proxyless
  steps:
  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
      destinationRules: [{workload: grpc-a, mode: ISTIO_MUTUAL}]
  - expect:
    - {from: grpc-l, to: grpc-a, port: 7070, result: mtls}
    - {from: service-a, to: grpc-a, port: 7070, result: mtls}
    - {from: grpc-a, to: grpc-l, port: 80, result: fail}
    - {from: grpc-a, to: service-a, port: 8080, result: fail}
`))
	if err != nil {
		t.Fatal(err)
	}
	assertPlanAccepted(t, s, "plan-proxyless")

	sc := &s.Scenarios[0]
	preds, err := oracle.Predict(s, sc, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range sc.Steps[1].Expect.Table {
		if p, _ := oracle.Find(preds, x.From, x.To, x.Port); !p.Agrees(x) {
			t.Errorf("row %s -> %s:%d %s %s, predicted %s (%s)", x.From, x.To, x.Port, x.Result, x.Reason, p, p.Why)
		}
	}

	ctx := context.Background()
	c := kube.Get(t).Client
	dep := &appsv1.Deployment{}
	// The scenario runs isolated (--parallel's default): in its own copy
	// of the fixtures' namespace.
	copyNS := schedule.Namespace("plan-proxyless", "proxyless", "plan-proxyless")
	if err := c.Get(ctx, client.ObjectKey{Namespace: copyNS, Name: "grpc-l"}, dep); err != nil {
		t.Fatal(err)
	}
	pod := dep.Spec.Template
	if pod.Annotations[manifests.InjectTemplatesAnnotation] != manifests.GRPCAgentTemplate ||
		pod.Annotations[manifests.ProxyConfigAnnotation] != manifests.HoldApplicationConfig ||
		pod.Labels[manifests.TLSModeLabel] != manifests.TLSModeIstio {
		t.Errorf("stored proxyless pod template labels %v annotations %v", pod.Labels, pod.Annotations)
	}
	if args := pod.Spec.Containers[0].Args; !reflect.DeepEqual(args, []string{"serve", "--ports=", "--grpc-ports=17070"}) {
		t.Errorf("stored proxyless args %q", args)
	}
	for name, port := range map[string]int32{"grpc-a": 7070, "grpc-l": 80, "service-a": 7070} {
		svc := &corev1.Service{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: copyNS, Name: name}, svc); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, sp := range svc.Spec.Ports {
			found = found || sp.Port == port && sp.AppProtocol != nil && *sp.AppProtocol == "grpc"
		}
		if !found {
			t.Errorf("stored Service %s ports %+v, want %d with appProtocol grpc", name, svc.Spec.Ports, port)
		}
	}
}
