package policy

import (
	"strings"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/scenario"
)

const suiteYAML = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
scenarios:
- name: "port[level=1]"
  steps:
  - mtls:
      peerAuthentications:
      - {scope: mesh, mode: STRICT}
      - {scope: namespace, mode: PERMISSIVE}
      - {scope: workload, workload: service-b, mode: STRICT, ports: [{port: 9090, mode: DISABLE}]}
      destinationRules:
      - {workload: service-b, mode: ISTIO_MUTUAL}
      - {workload: legacy, mode: DISABLE, port: 9090}
`

func objects(t *testing.T) []Object {
	t.Helper()
	s, err := scenario.Load("p.yaml", []byte(suiteYAML))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := ForMTLS(s, s.Scenarios[0].Steps[0].MTLS, Step{RunID: "run1", Scenario: s.Scenarios[0].Name, Index: 0})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestPeerAuthenticationsAtEveryScope(t *testing.T) {
	objs := objects(t)
	if len(objs) != 5 {
		t.Fatalf("got %d objects, want 5", len(objs))
	}
	mesh := objs[0].Object.(*securityv1.PeerAuthentication)
	if mesh.Namespace != "istio-system" || mesh.Spec.Selector != nil || mesh.Spec.Mtls.Mode.String() != "STRICT" {
		t.Errorf("mesh policy = %s/%s %v", mesh.Namespace, mesh.Name, &mesh.Spec)
	}
	ns := objs[1].Object.(*securityv1.PeerAuthentication)
	if ns.Namespace != "meshproof" || ns.Name != "meshproof-namespace" || ns.Spec.Mtls.Mode.String() != "PERMISSIVE" {
		t.Errorf("namespace policy = %s/%s %v", ns.Namespace, ns.Name, &ns.Spec)
	}
	wl := objs[2].Object.(*securityv1.PeerAuthentication)
	if wl.Name != "meshproof-service-b" || wl.Spec.Selector.MatchLabels["app"] != "service-b" || wl.Spec.PortLevelMtls[9090].Mode.String() != "DISABLE" {
		t.Errorf("workload policy = %v", &wl.Spec)
	}
	if objs[2].Source.Line != 11 {
		t.Errorf("source of the workload policy = %v, want line 11", objs[2].Source)
	}
}

func TestDestinationRules(t *testing.T) {
	objs := objects(t)
	b := objs[3].Object.(*networkingv1.DestinationRule)
	if b.Spec.Host != "service-b.meshproof.svc.cluster.local" || b.Spec.TrafficPolicy.Tls.Mode.String() != "ISTIO_MUTUAL" {
		t.Errorf("service-b rule = %v", &b.Spec)
	}
	l := objs[4].Object.(*networkingv1.DestinationRule)
	pl := l.Spec.TrafficPolicy.PortLevelSettings
	if l.Name != "meshproof-legacy" || len(pl) != 1 || pl[0].Port.Number != 9090 || pl[0].Tls.Mode.String() != "DISABLE" {
		t.Errorf("legacy rule = %v", &l.Spec)
	}
}

func TestOneDestinationRulePerWorkload(t *testing.T) {
	s, err := scenario.Load("p.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
scenarios:
- name: merged
  steps:
  - mtls:
      destinationRules:
      - {workload: service-b, mode: ISTIO_MUTUAL}
      - {workload: service-b, port: 9090, mode: DISABLE}
`))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := ForMTLS(s, s.Scenarios[0].Steps[0].MTLS, Step{RunID: "r", Scenario: "merged"})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("got %d DestinationRules for one host, want 1", len(objs))
	}
	tp := objs[0].Object.(*networkingv1.DestinationRule).Spec.TrafficPolicy
	if tp.Tls.Mode.String() != "ISTIO_MUTUAL" || len(tp.PortLevelSettings) != 1 || tp.PortLevelSettings[0].Port.Number != 9090 {
		t.Errorf("merged traffic policy = %v", tp)
	}
}

func TestLabelsAndYAML(t *testing.T) {
	for _, o := range objects(t) {
		for k, v := range o.GetLabels() {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("%s: label %s=%q: %v", o.GetName(), k, v, errs)
			}
		}
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		out := string(b)
		if !strings.Contains(out, "apiVersion: ") || !strings.Contains(out, "meshproof.dev/step: \"0\"") {
			t.Errorf("YAML of %s:\n%s", o.GetName(), out)
		}
	}
	b, _ := yaml.Marshal(objects(t)[2].Object)
	if !strings.Contains(string(b), "portLevelMtls:\n    \"9090\":\n      mode: DISABLE") {
		t.Errorf("port-level YAML:\n%s", b)
	}
}

func TestUnstructuredWritesZeroModes(t *testing.T) {
	s, err := scenario.Load("p.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
scenarios:
- name: zero
  steps:
  - mtls:
      peerAuthentications: [{scope: workload, workload: service-b, mode: UNSET, ports: [{port: 9090, mode: UNSET}]}]
      destinationRules: [{workload: service-b, mode: DISABLE}, {workload: legacy, mode: DISABLE, port: 9090}]
`))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := ForMTLS(s, s.Scenarios[0].Steps[0].MTLS, Step{RunID: "r", Scenario: "zero"})
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, o := range objs {
		u, err := o.Unstructured()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := yaml.Marshal(u.Object["spec"])
		docs = append(docs, string(b))
	}
	want := []string{
		"mtls:\n  mode: UNSET\nportLevelMtls:\n  \"9090\":\n    mode: UNSET\nselector:\n  matchLabels:\n    app: service-b\n",
		"host: service-b.meshproof.svc.cluster.local\ntrafficPolicy:\n  tls:\n    mode: DISABLE\n",
		"host: legacy.meshproof.svc.cluster.local\ntrafficPolicy:\n  portLevelSettings:\n  - port:\n      number: 9090\n    tls:\n      mode: DISABLE\n",
	}
	for i := range want {
		if docs[i] != want[i] {
			t.Errorf("object %d spec:\n%s\nwant:\n%s", i, docs[i], want[i])
		}
	}
}

// A mesh-wide DestinationRule is one object for host "*" in Istio's root
// namespace, beside the workloads' own; a PeerAuthentication's port key is
// the container port the scenario names, not the Service port.
func TestMeshWideDestinationRuleAndContainerPortKeys(t *testing.T) {
	s, err := scenario.Load("p.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  workloads:
  - {name: client}
  - {name: server, ports: [{name: http, number: 80, targetPort: 18080}]}
scenarios:
- name: s
  steps:
  - mtls:
      peerAuthentications:
      - {scope: workload, workload: server, mode: STRICT, ports: [{port: 18080, mode: PERMISSIVE}]}
      destinationRules:
      - {scope: mesh, mode: ISTIO_MUTUAL}
      - {workload: server, mode: DISABLE, port: 80}
      - {scope: mesh, mode: DISABLE, port: 80}
`))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := ForMTLS(s, s.Scenarios[0].Steps[0].MTLS, Step{RunID: "run1", Scenario: "s", Index: 0})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 3 {
		t.Fatalf("got %d objects, want a PeerAuthentication and two DestinationRules", len(objs))
	}
	pa := objs[0].Object.(*securityv1.PeerAuthentication)
	if _, ok := pa.Spec.PortLevelMtls[18080]; !ok || len(pa.Spec.PortLevelMtls) != 1 {
		t.Errorf("portLevelMtls = %v, want the container port 18080 only", pa.Spec.PortLevelMtls)
	}
	mesh := objs[1].Object.(*networkingv1.DestinationRule)
	if mesh.Namespace != scenario.IstioRootNamespace || mesh.Name != "meshproof-mesh" || mesh.Spec.Host != "*" ||
		mesh.Spec.TrafficPolicy.Tls.Mode.String() != "ISTIO_MUTUAL" ||
		len(mesh.Spec.TrafficPolicy.PortLevelSettings) != 1 || mesh.Spec.TrafficPolicy.PortLevelSettings[0].Port.Number != 80 ||
		mesh.Spec.TrafficPolicy.PortLevelSettings[0].Tls.Mode.String() != "DISABLE" {
		t.Errorf("mesh-wide rule = %s/%s %v", mesh.Namespace, mesh.Name, &mesh.Spec)
	}
	if objs[1].Source.Line != 15 {
		t.Errorf("mesh-wide rule's source line = %d, want 15 (its first entry)", objs[1].Source.Line)
	}
	wl := objs[2].Object.(*networkingv1.DestinationRule)
	if wl.Namespace != "meshproof" || wl.Spec.Host != "server.meshproof.svc.cluster.local" || wl.Spec.TrafficPolicy.PortLevelSettings[0].Port.Number != 80 {
		t.Errorf("workload rule = %s/%s %v", wl.Namespace, wl.Name, &wl.Spec)
	}
}
