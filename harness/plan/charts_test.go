package plan_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// A release whose chart cannot be rendered is not left out silently: the
// releases before it are printed, it is named with the reason in the YAML,
// RenderCharts returns the reason, and the plan is still written. Here the
// charts directory's ztunnel chart refuses to render (a template that
// fails, as one does on values it does not accept); base, istiod and cni
// are Istio's.
func TestUnrenderedReleaseIsNamedWithItsReason(t *testing.T) {
	real := filepath.Join(testsupport.IstioCharts(t), "1.30.3")
	dir := t.TempDir()
	for _, name := range []string{istiocharts.Base, istiocharts.Istiod, istiocharts.CNI} {
		if err := os.Symlink(filepath.Join(real, name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for path, content := range map[string]string{
		"ztunnel/Chart.yaml":            "apiVersion: v2\nname: ztunnel\nversion: 1.30.3\n",
		"ztunnel/templates/refuse.yaml": `{{ fail "this ztunnel chart renders nothing" }}`,
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, path), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s, err := scenario.Load("partial.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, profile: ambient, charts: `+dir+`}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(s, "r", plan.WithIstioCharts(run.IstioCharts))
	if err != nil {
		t.Fatal(err)
	}
	err = p.RenderCharts(t.Context())
	if err == nil || !strings.Contains(err.Error(), "cluster c: Istio's charts:") || !strings.Contains(err.Error(), "this ztunnel chart renders nothing") {
		t.Fatalf("RenderCharts: %v", err)
	}
	var out bytes.Buffer
	if err := p.WriteYAML(&out); err != nil {
		t.Fatal(err)
	}
	y := out.String()
	for _, want := range []string{
		"# cluster c: Istio's charts from " + dir + ",",
		"# cluster c: NOT RENDERED, so their objects are missing below: releases ztunnel, because ",
		"this ztunnel chart renders nothing",
		"# cluster c: chart ztunnel 1.30.3 (release ztunnel, namespace istio-system): not rendered (see above)\n",
		"# cluster c: chart istiod 1.30.3 (release istiod, namespace istio-system)\napiVersion: apps/v1\nkind: Deployment\n",
		"# cluster c: chart cni 1.30.3 (release istio-cni, namespace istio-system)\napiVersion: apps/v1\nkind: DaemonSet\n",
	} {
		if !strings.Contains(y, want) {
			t.Errorf("the plan's YAML lacks %q", want)
		}
	}
	if strings.Contains(y, "chart ztunnel 1.30.3 (release ztunnel, namespace istio-system)\napiVersion") {
		t.Error("the plan prints an object of the release it could not render")
	}
	// The text plan names the same source and releases.
	out.Reset()
	if err := p.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"install Istio 1.30.3 from " + dir + " with profile ambient",
		"Helm releases, in this order, in namespace istio-system: istio-base (chart base 1.30.3), istiod (chart istiod 1.30.3), istio-cni (chart cni 1.30.3), ztunnel (chart ztunnel 1.30.3)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the text plan lacks %q:\n%s", want, out.String())
		}
	}
}

// A plan built without the installer's view of Istio's charts names no
// release in its text and says in its YAML that Istio's releases are not
// there and why, rather than printing the namespace alone as if that were
// the install.
func TestPlanWithoutIstioChartsSaysSo(t *testing.T) {
	s, err := scenario.Load("bare.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, profile: ambient}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(s, "r")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RenderCharts(t.Context()); err != nil {
		t.Errorf("RenderCharts without charts to render: %v", err)
	}
	var y, text bytes.Buffer
	if err := p.WriteYAML(&y); err != nil {
		t.Fatal(err)
	}
	if want := "# cluster c: NOT RENDERED, so their objects are missing below: Istio's releases, because the plan was built without Istio's charts (plan.WithIstioCharts)\n"; !strings.Contains(y.String(), want) {
		t.Errorf("the YAML lacks %q:\n%s", want, y.String())
	}
	if err := p.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text.String(), "Helm releases") {
		t.Errorf("the text names releases it does not know:\n%s", text.String())
	}
	if want := "install Istio 1.30.3 from the charts a run takes (istio.charts, else $MESHPROOF_ISTIO_CHARTS/<version>, else Istio's chart repository) with profile ambient"; !strings.Contains(text.String(), want) {
		t.Errorf("the text lacks %q:\n%s", want, text.String())
	}
}

// An upgrade step's releases are not rendered: the YAML says so at the
// step, and the text says which releases an ambient in-place upgrade
// upgrades.
func TestUpgradeStepReleasesAreNamedNotRendered(t *testing.T) {
	data, err := os.ReadFile("../../examples/ambient-upgrade.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := scenario.Load("examples/ambient-upgrade.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(s, "r")
	if err != nil {
		t.Fatal(err)
	}
	var y, text bytes.Buffer
	if err := p.WriteYAML(&y); err != nil {
		t.Fatal(err)
	}
	if want := "the Istio 1.30.3 releases this upgrade installs or upgrades are not rendered here; `meshproof plan` lists what it does\n"; !strings.Contains(y.String(), want) {
		t.Errorf("the YAML lacks %q", want)
	}
	if err := p.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if want := "helm upgrade base, then istiod, istio-cni and ztunnel, to 1.30.3"; !strings.Contains(text.String(), want) {
		t.Errorf("the text lacks %q:\n%s", want, text.String())
	}
}
