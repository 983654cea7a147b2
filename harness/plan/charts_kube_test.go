package plan_test

// These tests hold what `meshproof plan -o yaml` prints of Istio's charts to
// a real kube-apiserver: every document of a suite, Istio's releases
// included, is applied in the order printed to an API server that has no
// Istio yet (the base chart's CRDs must create the custom resources' kinds),
// and the API server accepts them all; the chart objects are there where
// meshproof installs Istio, only the releases of the file's profile, and
// none where the file says use-existing. For one suite the cluster is first
// installed by the installer a run uses (harness/internal/mesh, Helm), and
// the plan's chart objects applied over it change nothing: the plan prints
// what the install applies.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// printedDoc is one object `meshproof plan -o yaml` printed, with the
// comment that heads it.
type printedDoc struct {
	header string
	obj    *unstructured.Unstructured
}

// planYAML runs what `meshproof plan -o yaml FILE` runs (Build with the
// run's installer's view of Istio's charts, then RenderCharts, then
// WriteYAML) on a file of the repository, with Istio's charts where the
// tests keep them, and returns the output and its objects.
func planYAML(t *testing.T, file string) (string, []printedDoc) {
	t.Helper()
	t.Setenv(istiocharts.Env, testsupport.IstioCharts(t))
	data, err := os.ReadFile("../../" + file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := scenario.Load(file, data)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(s, "plan-charts", plan.WithParallel(plan.DefaultParallel), plan.WithIstioCharts(run.IstioCharts))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := p.RenderCharts(ctx); err != nil {
		t.Fatalf("rendering the charts: %v", err)
	}
	var out bytes.Buffer
	if err := p.WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "NOT RENDERED") || strings.Contains(out.String(), "not rendered") {
		t.Fatalf("the plan of %s says a release is not rendered:\n%s", file, out.String())
	}
	return out.String(), printedDocs(t, out.Bytes())
}

// printedDocs parses multi-document YAML into objects with their first
// comment line; documents holding only comments yield nothing.
func printedDocs(t *testing.T, data []byte) []printedDoc {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs []printedDoc
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
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
		header, _, _ := strings.Cut(strings.TrimLeft(strings.TrimPrefix(string(doc), "---"), "\n"), "\n")
		if !strings.HasPrefix(header, "# ") {
			t.Fatalf("plan YAML document without a comment saying where it comes from:\n%s", doc)
		}
		docs = append(docs, printedDoc{header: strings.TrimPrefix(header, "# "), obj: &unstructured.Unstructured{Object: m}})
	}
}

// applyInOrder applies every document as printed, in order, with
// server-side apply as a run applies its objects; the CRDs applied are
// waited for (Established) before the first document after them, so that
// custom resources of their kinds are accepted.
func applyInOrder(t *testing.T, c client.Client, docs []printedDoc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var pending []string
	for _, d := range docs {
		isCRD := d.obj.GetKind() == "CustomResourceDefinition"
		if !isCRD && len(pending) > 0 {
			waitEstablished(ctx, t, c, pending)
			pending = nil
		}
		if err := apply.Objects(ctx, c, d.obj); err != nil {
			t.Fatalf("the API server refused a printed document (%s): %v", d.header, err)
		}
		if isCRD {
			pending = append(pending, d.obj.GetName())
		}
	}
	if len(pending) > 0 {
		waitEstablished(ctx, t, c, pending)
	}
}

func waitEstablished(ctx context.Context, t *testing.T, c client.Client, names []string) {
	t.Helper()
	var waiting []string
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		waiting = waiting[:0]
		for _, name := range names {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return false, err
			}
			established := false
			for _, cond := range crd.Status.Conditions {
				established = established || cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue
			}
			if !established {
				waiting = append(waiting, name)
			}
		}
		return len(waiting) == 0, nil
	})
	if err != nil {
		t.Fatalf("CRDs %v not Established: %v", waiting, err)
	}
}

// chartReleases are the chart headers of the documents, in the order
// printed, each once: "chart istiod 1.30.3 (release istiod, namespace
// istio-system)".
func chartReleases(docs []printedDoc, cluster string) []string {
	var out []string
	for _, d := range docs {
		r, ok := strings.CutPrefix(d.header, "cluster "+cluster+": chart ")
		if ok && !slices.Contains(out, "chart "+r) {
			out = append(out, "chart "+r)
		}
	}
	return out
}

func isChartDoc(d printedDoc) bool { return strings.Contains(d.header, ": chart ") }

// stored reads an object back; nil when it is not there.
func stored[T client.Object](t *testing.T, c client.Client, obj T, namespace, name string) T {
	t.Helper()
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: namespace, Name: name}, obj); err != nil {
		if apierrors.IsNotFound(err) {
			var none T
			return none
		}
		t.Fatal(err)
	}
	return obj
}

func envOf(c corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		out[e.Name] = e.Value
	}
	return out
}

// checkAmbientInstall checks what the ambient suites' plan put on the API
// server: istiod with ambient on and the file's Helm values, istio-cni and
// ztunnel DaemonSets with the file's images and certificate TTL, Istio's
// namespace as the run's.
func checkAmbientInstall(t *testing.T, c client.Client) {
	t.Helper()
	const ns = scenario.IstioRootNamespace
	d := stored(t, c, &appsv1.Deployment{}, ns, "istiod")
	if d == nil {
		t.Fatal("no istiod Deployment on the API server")
	}
	if env := envOf(d.Spec.Template.Spec.Containers[0]); env["PILOT_ENABLE_AMBIENT"] != "true" {
		t.Errorf("istiod PILOT_ENABLE_AMBIENT=%q, want true", env["PILOT_ENABLE_AMBIENT"])
	}
	for name, image := range map[string]string{istio.CNIDaemonSet: "docker.io/istio/install-cni:1.30.3-distroless", istio.ZtunnelDaemonSet: "docker.io/istio/ztunnel:1.30.3-distroless"} {
		ds := stored(t, c, &appsv1.DaemonSet{}, ns, name)
		if ds == nil {
			t.Fatalf("no DaemonSet %s/%s on the API server", ns, name)
		}
		if got := ds.Spec.Template.Spec.Containers[0].Image; got != image {
			t.Errorf("DaemonSet %s image %q, want %q", name, got, image)
		}
		if ttl := envOf(ds.Spec.Template.Spec.Containers[0])["SECRET_TTL"]; name == istio.ZtunnelDaemonSet && ttl != "180s" {
			t.Errorf("ztunnel SECRET_TTL %q, want 180s (the file's workloadCertTTL 3m)", ttl)
		}
	}
	// The file's own Helm values reach istiod's mesh config: the sidecars'
	// SECRET_TTL 1m over meshproof's 3m.
	if cm := stored(t, c, &corev1.ConfigMap{}, ns, "istio"); cm == nil || !strings.Contains(cm.Data["mesh"], "SECRET_TTL: 1m") {
		t.Errorf("istio ConfigMap as stored lacks the file's SECRET_TTL: 1m: %v", cm)
	}
	got := stored(t, c, &corev1.Namespace{}, "", ns)
	if got == nil || got.Labels["meshproof.dev/run-id"] != "plan-charts" {
		t.Errorf("Istio's namespace as stored: %v", got)
	}
}

var ambientReleases = []string{
	"chart base 1.30.3 (release istio-base, namespace istio-system)",
	"chart istiod 1.30.3 (release istiod, namespace istio-system)",
	"chart cni 1.30.3 (release istio-cni, namespace istio-system)",
	"chart ztunnel 1.30.3 (release ztunnel, namespace istio-system)",
}

// applyAmbientPlan prints the plan of file, checks that it names Istio's
// four ambient releases of cluster in install order, applies every
// document in order to a fresh API server with no Istio, and checks the
// ambient install as stored.
func applyAmbientPlan(t *testing.T, file, cluster string) ([]printedDoc, *testsupport.Env) {
	t.Helper()
	_, docs := planYAML(t, file)
	if got := chartReleases(docs, cluster); !reflect.DeepEqual(got, ambientReleases) {
		t.Errorf("chart releases printed:\n%s\nwant, in install order:\n%s", strings.Join(got, "\n"), strings.Join(ambientReleases, "\n"))
	}
	env := testsupport.Start(t, controlplane.WithoutIstioCRDs())
	applyInOrder(t, env.Client, docs)
	checkAmbientInstall(t, env.Client)
	return docs, env
}

// The ambient migration example on an API server with no Istio yet: every
// document, Istio's four releases in install order first, is accepted.
func TestPlannedAmbientSuiteIsAcceptedByTheAPIServer(t *testing.T) {
	start := time.Now()
	docs, env := applyAmbientPlan(t, "examples/ambient-migration.yaml", "ambient-migration")
	// The migrating namespace, with its sidecar and ambient workloads (in
	// each scenario's own copy of it, where the scenarios run isolated).
	carts := 0
	for _, d := range docs {
		if d.obj.GetKind() != "Deployment" || d.obj.GetName() != "cart" {
			continue
		}
		carts++
		if got := stored(t, env.Client, &appsv1.Deployment{}, d.obj.GetNamespace(), "cart"); got == nil || got.Spec.Template.Labels["istio.io/dataplane-mode"] != "ambient" {
			t.Errorf("ambient workload %s/cart as stored: %v", d.obj.GetNamespace(), got)
		}
	}
	if carts == 0 {
		t.Error("the plan prints no Deployment of the ambient workload cart")
	}
	t.Logf("%d documents accepted, %d of them Istio's charts, in %s", len(docs), countFunc(docs, isChartDoc), time.Since(start).Round(time.Millisecond))
}

// The repository's scenarios.yaml (ambient, sidecar, proxyless and
// out-of-mesh workloads) likewise.
func TestPlannedScenariosAreAcceptedByTheAPIServer(t *testing.T) {
	start := time.Now()
	docs, _ := applyAmbientPlan(t, "scenarios.yaml", "meshproof")
	t.Logf("%d documents accepted, %d of them Istio's charts, in %s", len(docs), countFunc(docs, isChartDoc), time.Since(start).Round(time.Millisecond))
}

// A sidecar-only suite installs base and istiod, never istio-cni or
// ztunnel; a use-existing cluster gets none of Istio's charts (its Istio is
// there: the shared API server, with Istio's CRDs, plays it).
func TestPlannedSidecarAndUseExistingSuites(t *testing.T) {
	t.Run("sidecar only", func(t *testing.T) {
		out, docs := planYAML(t, "examples/istio-reachability.yaml")
		want := ambientReleases[:2]
		if got := chartReleases(docs, "reachability"); !reflect.DeepEqual(got, want) {
			t.Errorf("chart releases printed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for _, bad := range []string{"chart cni", "chart ztunnel"} {
			if strings.Contains(out, bad) {
				t.Errorf("a sidecar-only plan prints %q", bad)
			}
		}
		for _, d := range docs {
			if isChartDoc(d) && d.obj.GetKind() == "DaemonSet" {
				t.Errorf("a sidecar-only plan prints a DaemonSet of Istio's charts: %s (%s)", d.obj.GetName(), d.header)
			}
		}
		env := testsupport.Start(t, controlplane.WithoutIstioCRDs())
		applyInOrder(t, env.Client, docs)
		if stored(t, env.Client, &appsv1.Deployment{}, scenario.IstioRootNamespace, "istiod") == nil {
			t.Error("no istiod Deployment on the API server")
		}
		var ds appsv1.DaemonSetList
		if err := env.Client.List(t.Context(), &ds, client.InNamespace(scenario.IstioRootNamespace)); err != nil || len(ds.Items) > 0 {
			t.Errorf("DaemonSets in %s on the API server of a sidecar-only plan: %d (err %v)", scenario.IstioRootNamespace, len(ds.Items), err)
		}
	})
	t.Run("use-existing", func(t *testing.T) {
		out, docs := planYAML(t, "examples/staging-upgrade.yaml")
		if got := chartReleases(docs, "staging"); len(got) > 0 {
			t.Errorf("a use-existing cluster's plan prints Istio's releases %v", got)
		}
		for _, bad := range []string{"kind: CustomResourceDefinition", "Istio's namespace", "Istio's charts from"} {
			if strings.Contains(out, bad) {
				t.Errorf("a use-existing plan prints %q", bad)
			}
		}
		if !strings.Contains(out, "# cluster staging: Istio is used as installed there (mode use-existing): meshproof installs none of its charts") {
			t.Errorf("a use-existing plan does not say why it shows no chart:\n%s", out)
		}
		kube.Get(t).EnsureNamespace(t, scenario.IstioRootNamespace)
		applyInOrder(t, kube.Get(t).Client, docs)
		if stored(t, kube.Get(t).Client, &appsv1.Deployment{}, scenario.IstioRootNamespace, "istiod") != nil {
			t.Error("an istiod Deployment on the API server after a use-existing plan")
		}
	})
}

// The plan's chart objects are what the installer a run uses applies: the
// file's cluster installed by mesh.Install (Helm, as a run installs it),
// each Helm release's record holds exactly the plan's objects of that
// release, in the plan's order, under the same release names and
// namespace; and the printed chart documents applied over the installed
// objects with their own field manager change none of them.
func TestPlannedChartsAreWhatTheInstallApplies(t *testing.T) {
	start := time.Now()
	const file = "examples/ambient-migration.yaml"
	_, docs := planYAML(t, file)
	data, err := os.ReadFile("../../" + file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := scenario.Load(file, data)
	if err != nil {
		t.Fatal(err)
	}
	env := testsupport.Start(t, controlplane.WithoutIstioCRDs())
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := mesh.Install(ctx, env.Client, env.Config, &s.Clusters[0], testsupport.Logger(t)); err != nil {
		t.Fatal(err)
	}
	var charts []printedDoc
	planned := map[string][]map[string]any{} // release -> objects, in order
	var releases []string
	for _, d := range docs {
		if !isChartDoc(d) {
			continue
		}
		charts = append(charts, d)
		release := d.header[strings.Index(d.header, "(release ")+len("(release ") : strings.Index(d.header, ", namespace ")]
		if !slices.Contains(releases, release) {
			releases = append(releases, release)
		}
		planned[release] = append(planned[release], d.obj.Object)
	}
	for _, release := range releases {
		installed := helmManifest(t, env.Client, scenario.IstioRootNamespace, release)
		if len(installed) != len(planned[release]) {
			t.Errorf("release %s: Helm applied %d objects, the plan prints %d", release, len(installed), len(planned[release]))
			continue
		}
		for i := range installed {
			if !reflect.DeepEqual(installed[i], planned[release][i]) {
				u := unstructured.Unstructured{Object: installed[i]}
				t.Errorf("release %s, object %d (%s %s): the plan's differs from what Helm applied, at %s", release, i, u.GetKind(), u.GetName(), strings.Join(differing(installed[i], planned[release][i], ""), ", "))
			}
		}
	}
	before := contentOf(t, env.Client, charts)
	applyInOrder(t, env.Client, charts)
	after := contentOf(t, env.Client, charts)
	for i, d := range charts {
		if !reflect.DeepEqual(before[i], after[i]) {
			t.Errorf("%s %s (%s): applying the plan's object changed what the install applied, at %s", d.obj.GetKind(), d.obj.GetName(), d.header, strings.Join(differing(before[i], after[i], ""), ", "))
		}
	}
	t.Logf("releases %v: %d chart objects, the ones Helm installed, in %s", releases, len(charts), time.Since(start).Round(time.Millisecond))
}

// helmManifest reads the objects Helm applied for a release from its
// record (Secret sh.helm.release.v1.<release>.v1: the release as JSON,
// gzipped, base64-encoded), parsed as the plan's documents are.
func helmManifest(t *testing.T, c client.Client, namespace, release string) []map[string]any {
	t.Helper()
	sec := stored(t, c, &corev1.Secret{}, namespace, "sh.helm.release.v1."+release+".v1")
	if sec == nil {
		t.Fatalf("no Helm record of release %s in %s", release, namespace)
	}
	gz, err := base64.StdEncoding.DecodeString(string(sec.Data["release"]))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	var rel struct {
		Manifest string `json:"manifest"`
	}
	if err := json.NewDecoder(zr).Decode(&rel); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, d := range printedDocs(t, []byte(rel.Manifest)) {
		out = append(out, d.obj.Object)
	}
	return out
}

// contentOf reads each document's object as stored, without the metadata
// the API server and field managers keep.
func contentOf(t *testing.T, c client.Client, docs []printedDoc) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range docs {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(d.obj.GroupVersionKind())
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(d.obj), got); err != nil {
			t.Fatalf("%s %s: %v", d.obj.GetKind(), d.obj.GetName(), err)
		}
		m := got.DeepCopy().Object
		unstructured.RemoveNestedField(m, "status")
		for _, f := range []string{"managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"} {
			unstructured.RemoveNestedField(m, "metadata", f)
		}
		out = append(out, m)
	}
	return out
}

// differing are the paths of the leaves, or of the lists, where a and b
// differ.
func differing(a, b map[string]any, prefix string) []string {
	var out []string
	for k := range a {
		if _, ok := b[k]; !ok {
			out = append(out, prefix+k+" (only installed)")
		}
	}
	for k, bv := range b {
		av, ok := a[k]
		switch am, isMap := av.(map[string]any); {
		case !ok:
			out = append(out, prefix+k+" (only planned)")
		case isMap:
			if bm, ok := bv.(map[string]any); ok {
				out = append(out, differing(am, bm, prefix+k+".")...)
				continue
			}
			out = append(out, prefix+k)
		case !reflect.DeepEqual(av, bv):
			out = append(out, prefix+k)
		}
	}
	slices.Sort(out)
	return out
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}
