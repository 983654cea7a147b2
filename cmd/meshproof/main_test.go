package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/scenario"
)

var defaultScenarios = filepath.Join("..", "..", "scenarios.yaml")

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestValidateDefaultScenarios(t *testing.T) {
	code, out, errOut := runCLI("validate", defaultScenarios)
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if !strings.Contains(out, "valid: 11 scenarios, 30 steps, 1 cluster") {
		t.Errorf("stdout = %q", out)
	}
}

// The acceptance case: three independent mistakes, three file:line:col lines.
func TestValidateThreeMistakes(t *testing.T) {
	file := filepath.Join("testdata", "three-mistakes.yaml")
	code, out, errOut := runCLI("validate", file)
	if code != exitInvalid || out != "" {
		t.Fatalf("exit %d (want 1), stdout %q", code, out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	want := []string{file + ":11:34:", file + ":12:7:", file + ":14:14:"}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines, got:\n%s", len(want), errOut)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	for i, frag := range []string{`unknown value "STRCT"`, `unknown field "sidecar"`, `no workload named "servce-a"`} {
		if !strings.Contains(lines[i], frag) {
			t.Errorf("line %d = %q, want it to say %s", i, lines[i], frag)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"validate", "-no-such-flag"},
		{"plan", "-o", "json", defaultScenarios},
		{"plan", "a.yaml", "b.yaml"},
		{"schema", "-o", "xml"},
	} {
		if code, _, errOut := runCLI(args...); code != exitUsage || errOut == "" {
			t.Errorf("meshproof %v: exit %d (want 2), stderr %q", args, code, errOut)
		}
	}
	if code, _, errOut := runCLI("validate", "does-not-exist.yaml"); code != exitUnreadable || errOut != "meshproof: cannot read does-not-exist.yaml: no such file\n" {
		t.Errorf("missing file: exit %d, message %q", code, errOut)
	}
}

func TestValidateReportsEveryFile(t *testing.T) {
	code, out, errOut := runCLI("validate", defaultScenarios, filepath.Join("testdata", "three-mistakes.yaml"))
	if code != exitInvalid || !strings.Contains(out, "valid") || strings.Count(errOut, "\n") != 3 {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestPlanText(t *testing.T) {
	code, out, errOut := runCLI("plan", defaultScenarios, "--run-id", "r1")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"Run r1: 11 scenarios, 30 steps, 1 cluster",
		`install Istio 1.30.3`,
		"Scenario strict [strict, peer-authentication] on meshproof",
		// The scenario runs isolated, in its own copy of the namespace.
		"apply PeerAuthentication STRICT for meshproof-strict-",
		"legacy -> service-b:8080",
		"fail (reset)",
		"Scenario client-tls-towards-strict[tls=DISABLE]",
		"wait up to 2m0s for a new serial with the same identity spiffe://cluster.local/ns/meshproof-workload-cert-rotation-",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
}

func TestPlanYAMLDocuments(t *testing.T) {
	code, out, errOut := runCLI("plan", "-o", "yaml", "--run-id", "r1", defaultScenarios)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// Each document's first comment says where it comes from: Istio's
	// charts apart, the kinds of the run's own objects are counted.
	kinds := map[string]int{}
	chartKinds := map[string]int{}
	var releases []string // chart headers, in order, once each
	istioNamespace := 0
	for _, doc := range strings.Split(out, "\n---\n")[1:] {
		header, _, _ := strings.Cut(doc, "\n")
		m := regexp.MustCompile(`(?m)^kind: (\w+)$`).FindStringSubmatch(doc)
		switch origin := strings.TrimPrefix(header, "# cluster meshproof: "); {
		case strings.HasPrefix(origin, "chart "):
			if len(releases) == 0 || releases[len(releases)-1] != origin {
				releases = append(releases, origin)
			}
			if m != nil {
				chartKinds[m[1]]++
			}
		case strings.HasPrefix(origin, "Istio's namespace, created by the install when it is missing"):
			istioNamespace++
		case m != nil:
			kinds[m[1]]++
		}
	}
	if istioNamespace != 1 {
		t.Errorf("Istio's namespace printed %d times, want once", istioNamespace)
	}
	// Every scenario runs isolated (--parallel 4), so each has its own copy
	// of the workloads it uses, in a namespace of its own (11), beside the
	// wire witness's namespace and DaemonSet (the proxyless scenario watches
	// the wire); none of the fixtures is deployed at setup.
	want := map[string]int{"Namespace": 12, "DaemonSet": 1, "PeerAuthentication": 14, "DestinationRule": 4}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d objects of kind %s, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}
	if strings.Count(out, "meshproof.dev/run-id: r1") < kinds["Namespace"]+kinds["Deployment"]+kinds["Service"]+istioNamespace {
		t.Error("every object must carry the run id")
	}
	// Each policy is applied in a namespace the plan creates before it: the
	// scenario's copy, as the run applies it.
	created := map[string]bool{}
	for _, doc := range strings.Split(out, "\n---\n") {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name, Namespace string
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		switch obj.Kind {
		case "Namespace":
			created[obj.Metadata.Name] = true
		case "PeerAuthentication", "DestinationRule", "Deployment", "Service", "ServiceAccount":
			if !created[obj.Metadata.Namespace] && obj.Metadata.Namespace != scenario.IstioRootNamespace {
				t.Errorf("%s %s/%s comes before its namespace is created", obj.Kind, obj.Metadata.Namespace, obj.Metadata.Name)
			}
		}
	}
	if created["meshproof"] {
		t.Error("the fixtures' own namespace is deployed though every scenario runs in a copy")
	}
	// The cluster installs Istio in ambient mode: the four releases in
	// install order, rendered from where a run takes the charts. Without
	// MESHPROOF_ISTIO_CHARTS, a machine that cannot pull them gets each
	// release named as not rendered, and a warning.
	wantReleases := []string{
		"chart base 1.30.3 (release istio-base, namespace istio-system)",
		"chart istiod 1.30.3 (release istiod, namespace istio-system)",
		"chart cni 1.30.3 (release istio-cni, namespace istio-system)",
		"chart ztunnel 1.30.3 (release ztunnel, namespace istio-system)",
	}
	if os.Getenv("MESHPROOF_ISTIO_CHARTS") == "" && strings.Contains(out, "NOT RENDERED") {
		for _, r := range wantReleases {
			if !strings.Contains(out, "# cluster meshproof: "+r+": not rendered (see above)") {
				t.Errorf("the unrendered release %s is not named:\n%s", r, out)
			}
		}
		if !strings.Contains(errOut, "some of Istio's releases are not rendered") {
			t.Errorf("no warning on stderr: %q", errOut)
		}
		return
	}
	if strings.Join(releases, "\n") != strings.Join(wantReleases, "\n") {
		t.Errorf("chart releases printed:\n%s\nwant, in this order:\n%s", strings.Join(releases, "\n"), strings.Join(wantReleases, "\n"))
	}
	for kind, n := range map[string]int{"CustomResourceDefinition": 15, "Deployment": 1, "DaemonSet": 2, "MutatingWebhookConfiguration": 1} {
		if chartKinds[kind] < n {
			t.Errorf("%d chart objects of kind %s, want at least %d (all: %v)", chartKinds[kind], kind, n, chartKinds)
		}
	}
	if errOut != "" {
		t.Errorf("stderr: %s", errOut)
	}
}

func TestSchemaCommandPrintsTheCheckedInSchema(t *testing.T) {
	_, out, _ := runCLI("schema")
	onDisk, err := os.ReadFile(filepath.Join("..", "..", "scenarios.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if out != string(onDisk) {
		t.Error("meshproof schema differs from scenarios.schema.json")
	}
	if _, md, _ := runCLI("schema", "-o", "markdown"); md != scenario.Reference() {
		t.Error("meshproof schema -o markdown differs from the reference")
	}
}

func TestVersion(t *testing.T) {
	if code, out, _ := runCLI("version"); code != exitOK || !strings.HasPrefix(out, "meshproof ") || !strings.Contains(out, scenario.APIVersion) {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

// The plan of an existing cluster whose Istio is used as it is and whose
// echo image is published says what is detected and used, and neither
// installs Istio nor builds an image; its sweep line says what the ledger
// sweeps, nothing broader.
func TestPlanUseExistingWithImageRef(t *testing.T) {
	stdin = strings.NewReader(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: staging
  provider: existing
  existing: {context: staging, image: {ref: registry.example.com/echo:v1}}
  istio: {version: 1.30.3, mode: use-existing}
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`)
	t.Cleanup(func() { stdin = os.Stdin })
	code, out, errOut := runCLI("plan", "-", "--run-id", "r1")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, bad := range []string{"install Istio", "chart", "build the echo image", "push it", "remove leftovers", "every object labelled"} {
		if strings.Contains(out, bad) {
			t.Errorf("plan says %q:\n%s", bad, out)
		}
	}
	for _, want := range []string{
		`use existing cluster "staging" from $KUBECONFIG or ~/.kube/config (context staging); never deleted`,
		"use the Istio installed in istio-system: detect its istiod Deployments (revision, version, plugged CA) and wait until they are healthy; install, upgrade and remove nothing of Istio",
		"use the echo image registry.example.com/echo:v1 you published (a tag is resolved to its digest, which must exist); nothing is built or pushed",
		"undo the ledgers of earlier runs that are over (their Lease expired)",
		"then delete objects labelled app.kubernetes.io/managed-by=meshproof whose meshproof.dev/run-id is another run's",
		"cluster staging (existing: it stays):",
		"delete the run's other objects (its policies), labelled meshproof.dev/run-id=r1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
}

// validate is the gate run trusts: what the engine cannot run (a proxyless
// workload's rotation, a root rotation beside proxyless workloads) and a
// rotation that can never finish within its bound are refused here, each
// at its file:line:col with the numbers.
func TestValidateRefusesWhatRunCannotDo(t *testing.T) {
	file := filepath.Join(t.TempDir(), "gate.yaml")
	if err := os.WriteFile(file, []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, pluggedCA: true}}]
fixtures:
  workloads:
  - {name: service-a}
  - {name: grpc-a, proxyless: true}
scenarios:
- name: s
  steps:
  - {timeout: 13h, rotate: {workload: grpc-a, within: 12h30m}}
  - rotateRoot: {}
  - {timeout: 1h, rotate: {workload: service-a, within: 2m}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI("validate", file)
	if code != exitInvalid || out != "" {
		t.Fatalf("exit %d (want 1), stdout %q, stderr:\n%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	for i, want := range []string{
		file + `:11:39: scenarios[0].steps[0].rotate.workload: workload "grpc-a" is proxyless gRPC, and a rotate step needs to read the certificate it serves: a proxyless pod has no Envoy`,
		file + `:12:17: scenarios[0].steps[1].rotateRoot: rotateRoot needs to read the certificate it serves for every in-mesh workload, which meshproof cannot for proxyless gRPC grpc-a`,
		file + `:13:57: scenarios[0].steps[2].rotate.within: rotate.within 2m0s is shorter than a renewal can take: workload certificates on cluster c live 24h0m0s (Istio's default; istio.workloadCertTTL sets it), and istio-agent renews one up to 24h0m0s × (1 − 0.5 + 0.01) = 12h14m24s after it was issued`,
	} {
		if i >= len(lines) || !strings.HasPrefix(lines[i], want) {
			t.Errorf("line %d of:\n%s\nwant it to begin %q", i+1, errOut, want)
		}
	}
	if len(lines) != 3 {
		t.Errorf("%d lines, want 3:\n%s", len(lines), errOut)
	}
}

// The version line of a development build carries the VCS stamp of the
// build info: the commit, its time and whether the tree was modified.
func TestVersionReadsTheVCSStamp(t *testing.T) {
	bi, err := debug.ParseBuildInfo("path\tgithub.com/meshproof/meshproof/cmd/meshproof\nmod\tgithub.com/meshproof/meshproof\t(devel)\t\nbuild\tvcs=git\nbuild\tvcs.revision=773aad1d5a70188b693beddf7f34e1793d5bd557\nbuild\tvcs.time=2026-12-07T12:20:44Z\nbuild\tvcs.modified=true\n")
	if err != nil {
		t.Fatal(err)
	}
	bi.GoVersion = "go1.26.8"
	if got, want := versionOf(bi), "meshproof (devel) commit 773aad1d5a70 2026-12-07T12:20:44Z, with uncommitted changes (go1.26.8, scenarios "+scenario.APIVersion+")"; got != want {
		t.Errorf("versionOf = %q, want %q", got, want)
	}
	// Go ≥ 1.24 stamps a build in a clone with a pseudo-version (+dirty
	// when modified): still a development build, named by its commit.
	bi.Main.Version = "v0.0.0-20261207122044-773aad1d5a70+dirty"
	if got, want := versionOf(bi), "meshproof (devel) commit 773aad1d5a70 2026-12-07T12:20:44Z, with uncommitted changes (go1.26.8, scenarios "+scenario.APIVersion+")"; got != want {
		t.Errorf("versionOf a pseudo-version = %q, want %q", got, want)
	}
	bi.Main.Version = "v0.3.0"
	if got := versionOf(bi); !strings.HasPrefix(got, "meshproof v0.3.0 (go1.26.8") {
		t.Errorf("a release: %q", got)
	}
}
