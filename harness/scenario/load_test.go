package scenario

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const header = "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3}\n"

// shortCertsHeader is header with workload certificates that live a
// minute, so that a rotate step can finish within minutes.
var shortCertsHeader = strings.Replace(header, "{version: 1.30.3}", "{version: 1.30.3, workloadCertTTL: 1m}", 1)

func mustLoad(t *testing.T, src string) *Suite {
	t.Helper()
	s, err := Load("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("load failed:\n%v", err)
	}
	return s
}

func loadErrors(t *testing.T, src string) ErrorList {
	t.Helper()
	_, err := Load("test.yaml", []byte(src))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("want an ErrorList, got %v", err)
	}
	return list
}

func TestDefaultScenariosLoad(t *testing.T) {
	s, err := LoadFile(filepath.Join("..", "..", "scenarios.yaml"))
	if err != nil {
		t.Fatalf("scenarios.yaml does not load:\n%v", err)
	}
	var names []string
	for _, sc := range s.Scenarios {
		names = append(names, sc.Name)
	}
	want := []string{"strict", "permissive", "disable", "client-tls-towards-strict[tls=DISABLE]",
		"client-tls-towards-strict[tls=ISTIO_MUTUAL]", "mtls-forced-towards-legacy", "port-level-override", "workload-cert-rotation", "migrate-to-strict", "proxyless-grpc", "ambient"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("scenarios = %v, want %v", names, want)
	}
	if got := s.Clusters[0].Istio.WorkloadCertTTL.Duration; got != 3*time.Minute {
		t.Errorf("workloadCertTTL = %v, want 3m (the least that lets ztunnel renew every 30s rather than continuously)", got)
	}
}

// The acceptance case: three independent mistakes, three positioned lines.
func TestThreeMistakesAllReportedWithPositions(t *testing.T) {
	src := header + `scenarios:
- name: s
  steps:
  - mtls:
      peerAuthentications:
      - {scope: namespace, mode: STRCT}
  - expect:
    - {from: servce-a, to: service-b, result: mtls}
  - wait: {workloads: [service-a]}
    colour: blue
`
	errs := loadErrors(t, src)
	got := strings.Split(errs.Error(), "\n")
	want := []string{
		`test.yaml:11:34: scenarios[0].steps[0].mtls.peerAuthentications[0].mode: unknown value "STRCT"; want one of UNSET, DISABLE, PERMISSIVE, STRICT (did you mean "STRICT"?)`,
		`test.yaml:13:14: scenarios[0].steps[1].expect[0].from: no workload named "servce-a" (did you mean "service-a"?); the workloads are service-a, service-b, legacy`,
		`test.yaml:15:5: scenarios[0].steps[2].colour: unknown field "colour"`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%s", len(got), len(want), errs)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("error %d:\n got: %s\nwant: %s", i, got[i], want[i])
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"wrong type", header + "defaults: {requests: many}\nscenarios: []", `test.yaml:6:22: defaults.requests: must be an integer, got string "many"`},
		{"bad duration", header + "defaults: {timeout: 2 minutes}\nscenarios: []", `test.yaml:6:21: defaults.timeout: invalid duration "2 minutes"`},
		{"float version", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30}\nscenarios: []", `test.yaml:5:20: clusters[0].istio.version: must be a string, got number 1.30; quote it: "1.30"`},
		{"missing required", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\nscenarios: []", `test.yaml:4:3: clusters[0]: missing required field "istio"`},
		{"duplicate key", header + "defaults: {requests: 1, requests: 2}\nscenarios: []", `defaults.requests: duplicate field (first set at line 6)`},
		{"syntax", header + "scenarios: [", `test.yaml:`},
		{"two documents", header + "scenarios: []\n---\nkind: Suite\n", `a scenario file holds one document`},
		{"empty", "", `test.yaml:1:1: the file is empty`},
		{"not a mapping", "- a\n- b\n", `test.yaml:1:1: must be a mapping, got a list`},
		{"bad api version", strings.Replace(header, "v1alpha1", "v1", 1) + "scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]", `unsupported apiVersion "meshproof.dev/v1"`},
		{"negative duration", header + "defaults: {timeout: -1s}\nscenarios: []", `must be longer than zero, got -1s`},
		{"unknown provider", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  provider: minikube\n  istio: {version: 1.30.3}\nscenarios: []", `unknown value "minikube"; want one of kind, existing`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			if !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
		})
	}
}

func TestValidationErrors(t *testing.T) {
	step := func(s string) string { return header + "scenarios:\n- name: s\n  steps:\n  - " + s + "\n" }
	for _, tc := range []struct {
		name, src, want string
	}{
		{"no step kind", step("{name: x}"), "a step needs one of mtls, expect"},
		{"two step kinds", step("{wait: {duration: 1s}, restart: {workloads: [service-a]}}"), "exactly one kind; this one has restart, wait"},
		{"upgrade needs to", step("{upgrade: {}}"), `upgrade: missing required field "to"`},
		{"upgrade version", step("{upgrade: {to: latest}}"), `Istio version "latest" is not a full release version`},
		{"upgrade revision in place", step("{upgrade: {to: 1.30.3, revision: r1}}"), "a revision goes with method: canary"},
		{"upgrade method", step("{upgrade: {to: 1.30.3, method: blue-green}}"), `unknown value "blue-green"; want one of inPlace, canary`},
		{"rotateRoot needs plugged CA", step("{rotateRoot: {}}"), "rotating the root CA needs a CA meshproof controls: set istio.pluggedCA: true on cluster c1"},
		{"transition needs to", step("{transition: {}}"), `transition: missing required field "to"`},
		{"transition policies checked", step("{transition: {to: {peerAuthentications: [{scope: workload, mode: STRICT}]}}}"), "a workload policy needs workload"},
		{"traffic pairs checked", step("{transition: {to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}, traffic: {pairs: [{from: a, to: service-b}]}}}"), `no workload named "a"`},
		{"traffic failures", step("{upgrade: {to: 1.30.3, traffic: {maxFailures: -1}}}"), "maxFailures: must not be negative"},
		{"dangling to", step("{expect: [{from: service-a, to: service-c, result: mtls}]}"), `no workload named "service-c" (did you mean "service-a"?)`},
		{"missing port", step("{expect: [{from: service-a, to: service-b, port: 7070, result: mtls}]}"), `workload "service-b" has no Service port 7070; its ports are 8080, 9090`},
		{"reason without fail", step("{expect: [{from: service-a, to: service-b, result: mtls, reason: reset}]}"), "a reason goes only with result: fail"},
		{"unknown reason", step("{expect: [{from: service-a, to: service-b, result: fail, reason: resett}]}"), `unknown reason "resett"`},
		{"http reason ok but dup row", step("{expect: [{from: legacy, to: service-b, result: fail, reason: http-403}, {from: legacy, to: service-b, port: 8080, result: fail}]}"), "a second row for legacy -> service-b port 8080"},
		{"rotate out of mesh", step("{rotate: {workload: legacy}}"), `workload "legacy" is out of the mesh`},
		{"workload scope without workload", step("{mtls: {peerAuthentications: [{scope: workload, mode: STRICT}]}}"), "a workload policy needs workload"},
		{"ports need workload scope", step("{mtls: {peerAuthentications: [{scope: namespace, mode: STRICT, ports: [{port: 9090, mode: DISABLE}]}]}}"), "port-level modes need scope: workload"},
		{"port of workload", step("{mtls: {peerAuthentications: [{scope: workload, workload: service-b, mode: STRICT, ports: [{port: 1234, mode: DISABLE}]}]}}"), `workload "service-b" has no container port 1234; its container ports are 8080, 9090`},
		{"two namespace policies", step("{mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}, {scope: namespace, mode: DISABLE}]}}"), "Istio would apply only the oldest"},
		{"mesh scope namespace", step("{mtls: {peerAuthentications: [{scope: mesh, namespace: foo, mode: STRICT}]}}"), "a mesh-wide policy lives in Istio's root namespace istio-system"},
		{"dr dangling", step("{mtls: {destinationRules: [{workload: nobody, mode: DISABLE}]}}"), `no workload named "nobody"`},
		{"wait both", step("{wait: {duration: 1s, workloads: [service-a]}}"), "set either workloads or duration"},
		{"zero timeout", step("{timeout: 0s, wait: {duration: 1s}}"), "timeout: must be longer than zero"},
		{"decode and reference errors together", step("{expect: [{from: nobody, to: service-b, result: mtls, port: x}]}"), `no workload named "nobody"`},
		{"duplicate scenario", header + "scenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", `duplicate scenario name "s" (first at test.yaml:7:10)`},
		{"no steps", header + "scenarios:\n- {name: s, steps: []}\n", "a scenario needs at least one step"},
		{"unknown cluster", header + "scenarios:\n- {name: s, cluster: c2, steps: [{wait: {duration: 1s}}]}\n", `no cluster named "c2" (did you mean "c1"?)`},
		{"bad label", header + "scenarios:\n- {name: s, labels: [a&b], steps: [{wait: {duration: 1s}}]}\n", "Ginkgo label rules"},
		{"bad cluster name", strings.Replace(header, "c1", "C_1", 1) + "scenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", `cluster name "C_1" must be a DNS label`},
		{"bad version", strings.Replace(header, "1.30.3", "latest", 1) + "scenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", `Istio version "latest" is not a full release version`},
		{"istio port", header + "fixtures: {workloads: [{name: w, ports: [{name: http, number: 15006}]}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", "port 15006 is in the range 15000-15090"},
		{"client deployment name", header + "fixtures: {workloads: [{name: a-xds-client}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", `ends in -xds-client`},
		{"duplicate workload", header + "fixtures: {workloads: [{name: w}, {name: w}]}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", `duplicate workload name "w"`},
		{"kind config twice", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  kind: {config: x, configFile: y}\n  istio: {version: 1.30.3}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", "set either config or configFile, not both"},
		{"existing with kind block", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  provider: existing\n  kind: {reuse: true}\n  istio: {version: 1.30.3}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n", "only for provider kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			if !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
			for _, e := range errs {
				if !e.Pos.IsValid() {
					t.Errorf("error without a position: %v", e)
				}
			}
		})
	}
}

func TestErrorsAreSortedByPosition(t *testing.T) {
	src := header + `scenarios:
- name: s
  steps:
  - {expect: [{from: nobody, to: service-b, result: mtls}]}
  - {mtls: {peerAuthentications: [{scope: namespace, mode: NOPE}]}}
  - {wait: {duration: 1s}, bogus: 1}
`
	errs := loadErrors(t, src)
	for i := 1; i < len(errs); i++ {
		a, b := errs[i-1].Pos, errs[i].Pos
		if a.Line > b.Line || a.Line == b.Line && a.Column > b.Column {
			t.Errorf("errors out of order:\n%s", errs)
		}
	}
}

func TestDefaults(t *testing.T) {
	s := mustLoad(t, shortCertsHeader+"scenarios:\n- name: s\n  steps:\n  - expect: [{from: service-a, to: service-b, result: mtls}]\n  - {rotate: {workload: service-b}, timeout: 5m}\n  - mtls: {peerAuthentications: [{scope: mesh, mode: STRICT}, {scope: workload, workload: service-b, mode: STRICT}]}\n")
	if s.Defaults.Timeout.Duration != 2*time.Minute || s.Defaults.Requests != 3 || s.Defaults.Consecutive != 3 ||
		s.Defaults.Interval.Duration != 2*time.Second || s.Defaults.RequestTimeout.Duration != 3*time.Second {
		t.Errorf("defaults = %+v", s.Defaults)
	}
	c := s.Clusters[0]
	if c.Provider != ProviderKind || c.Kind == nil || c.Istio.Hub != DefaultHub || c.Istio.Tag != "1.30.3" || c.Istio.TrustDomain != "cluster.local" {
		t.Errorf("cluster defaults = %+v", c)
	}
	if len(s.Fixtures.Workloads) != 3 || s.Workload("legacy").InMesh() || !s.Workload("service-a").InMesh() {
		t.Errorf("workload defaults = %+v", s.Fixtures.Workloads)
	}
	a := s.Workload("service-a")
	if a.Namespace != "meshproof" || a.ServiceAccount != "service-a" || len(a.Ports) != 2 || a.SPIFFEID("cluster.local") != "spiffe://cluster.local/ns/meshproof/sa/service-a" {
		t.Errorf("service-a = %+v", a)
	}
	sc := s.Scenarios[0]
	if sc.Cluster != "c1" {
		t.Errorf("scenario cluster = %q", sc.Cluster)
	}
	if e := sc.Steps[0].Expect.Table[0]; e.Port != 8080 {
		t.Errorf("expectation port defaulted to %d, want the first port 8080", e.Port)
	}
	if r := sc.Steps[1]; r.Timeout.Duration != 5*time.Minute || r.Rotate.Within.Duration != 5*time.Minute {
		t.Errorf("rotate within should default to the step timeout: %+v", r)
	}
	pas := sc.Steps[2].MTLS.PeerAuthentications
	if pas[0].Namespace != "istio-system" || pas[1].Namespace != "meshproof" {
		t.Errorf("policy namespaces = %q, %q", pas[0].Namespace, pas[1].Namespace)
	}
	if sc.Steps[2].Name != "3 mtls mesh STRICT, service-b STRICT" {
		t.Errorf("step name = %q", sc.Steps[2].Name)
	}
}

func TestContinuousStepDefaults(t *testing.T) {
	src := strings.Replace(header, "{version: 1.30.3}", "{version: 1.29.6, pluggedCA: true}", 1) + `scenarios:
- name: s
  steps:
  - transition: {to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}}
  - upgrade: {to: 1.30.3, method: canary, charts: charts/1.30.3}
  - {rotateRoot: {}, timeout: 10m}
`
	root := t.TempDir()
	fakeCharts(t, filepath.Join(root, "dir", "charts", "1.30.3"))
	s, err := Load(filepath.Join(root, "dir", "test.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	steps := s.Scenarios[0].Steps
	tr := steps[0].Transition
	if tr.Observe.Duration != 30*time.Second || tr.Traffic.Every.Duration != 500*time.Millisecond || tr.To.PeerAuthentications[0].Namespace != "meshproof" {
		t.Errorf("transition defaults = %+v", tr)
	}
	if fmt.Sprint(tr.Traffic.Pairs) == "" || len(tr.Traffic.Pairs) != 2 || tr.Traffic.Pairs[0].From != "service-a" || tr.Traffic.Pairs[0].To != "service-b" || tr.Traffic.Pairs[0].Port != 8080 {
		t.Errorf("default pairs = %+v, want service-a <-> service-b on 8080", tr.Traffic.Pairs)
	}
	up := steps[1].Upgrade
	if up.Revision != "1-30-3" || up.Charts != filepath.Join(root, "dir", "charts", "1.30.3") {
		t.Errorf("upgrade defaults = %+v", up)
	}
	if steps[2].RotateRoot.Within.Duration != 10*time.Minute {
		t.Errorf("rotateRoot within = %v", steps[2].RotateRoot.Within)
	}
}

func TestRelativePathsResolveAgainstTheFile(t *testing.T) {
	src := "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  kind: {configFile: kind.yaml}\n  istio: {version: 1.30.3, charts: ../charts}\n- name: c2\n  provider: existing\n  existing: {kubeconfig: /abs/kubeconfig, context: ctx}\n  istio: {version: 1.30.3}\nscenarios:\n- {name: s, cluster: c2, steps: [{wait: {duration: 1s}}]}\n"
	root := t.TempDir()
	fakeCharts(t, filepath.Join(root, "dir", "charts"))
	writeFile(t, filepath.Join(root, "dir", "sub", "kind.yaml"), "kind: Cluster\n")
	s, err := Load(filepath.Join(root, "dir", "sub", "test.yaml"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Clusters[0].Kind.ConfigFile; got != filepath.Join(root, "dir", "sub", "kind.yaml") {
		t.Errorf("configFile = %q", got)
	}
	if got := s.Clusters[0].Istio.Charts; got != filepath.Join(root, "dir", "charts") {
		t.Errorf("charts = %q", got)
	}
	if got := s.Clusters[1].Existing.Kubeconfig; got != "/abs/kubeconfig" {
		t.Errorf("kubeconfig = %q", got)
	}
}

func TestSeveralClustersNeedScenarioCluster(t *testing.T) {
	src := header + "- name: c2\n  istio: {version: 1.29.6}\nscenarios:\n- {name: s, steps: [{wait: {duration: 1s}}]}\n"
	errs := loadErrors(t, src)
	if !strings.Contains(errs.Error(), "each scenario must name its cluster (one of c1, c2)") {
		t.Errorf("errors:\n%s", errs)
	}
}

func TestAliasesAndMergeKeys(t *testing.T) {
	src := header + `x-strict: &strict {scope: namespace, mode: STRICT}
`
	// x-strict is not a field: anchors must live inside known fields.
	if errs := loadErrors(t, src+"scenarios: []\n"); !strings.Contains(errs.Error(), `unknown field "x-strict"`) {
		t.Errorf("errors:\n%s", errs)
	}
	s := mustLoad(t, header+`scenarios:
- name: s
  steps:
  - mtls: {peerAuthentications: [&strict {scope: namespace, mode: STRICT}]}
  - mtls: {peerAuthentications: [*strict]}
  - mtls: {peerAuthentications: [{<<: *strict, mode: PERMISSIVE}]}
`)
	pas := []MTLSMode{}
	for _, st := range s.Scenarios[0].Steps {
		pas = append(pas, st.MTLS.PeerAuthentications[0].Mode)
	}
	if fmt.Sprint(pas) != "[STRICT STRICT PERMISSIVE]" {
		t.Errorf("modes = %v", pas)
	}
}

func TestSelfReferencingAliasesAreErrors(t *testing.T) {
	for name, steps := range map[string]string{
		"merge of itself": "  - mtls: {peerAuthentications: [&a {<<: *a, scope: mesh, mode: STRICT}]}\n",
		"matrix clone":    "  - mtls: {peerAuthentications: [&a {<<: *a, scope: mesh, mode: \"${m}\"}]}\n",
	} {
		src := header + "scenarios:\n- name: s\n"
		if name == "matrix clone" {
			src += "  matrix: {m: [STRICT]}\n"
		}
		errs := loadErrors(t, src+"  steps:\n"+steps)
		if !strings.Contains(errs.Error(), "this alias refers to a node that contains it") {
			t.Errorf("%s: errors:\n%s", name, errs)
		}
	}
}

func TestBillionLaughsIsAnError(t *testing.T) {
	var b strings.Builder
	b.WriteString(header + "scenarios:\n- name: s\n  labels: &l0 [a, a, a, a, a, a, a, a, a, a]\n  x0: &x0 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "  x%d: &x%d [*x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d, *x%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	_, err := Load("test.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("want an error")
	}
}

// The files in examples/ are documentation users copy: each must load, and
// the staging example must keep meaning what the README says of it.
func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, f := range files {
		s, err := LoadFile(f)
		if err != nil {
			t.Errorf("%s does not load:\n%v", f, err)
			continue
		}
		if filepath.Base(f) == "staging-upgrade.yaml" {
			c := s.Clusters[0]
			if c.Provider != ProviderExisting || c.Istio.Mode != IstioUseExisting || c.Existing.Image == nil || c.Existing.Image.Push == "" {
				t.Errorf("%s: cluster %+v, want an existing cluster in use-existing mode with a pushed image", f, c)
			}
		}
	}
}
