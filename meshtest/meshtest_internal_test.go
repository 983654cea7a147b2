package meshtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/scenario"
)

// WithKubeconfig turns the file's one cluster into that existing cluster,
// keeping its Istio settings; a file with two clusters is refused.
func TestUseExistingMakesTheFilesClusterExisting(t *testing.T) {
	suite, err := scenario.LoadFile("../scenarios.yaml")
	if err != nil {
		t.Fatal(err)
	}
	mode := suite.Clusters[0].Istio.Mode
	if err := useExisting(suite, "scenarios.yaml", "/home/me/.kube/staging", "staging"); err != nil {
		t.Fatal(err)
	}
	c := suite.Clusters[0]
	if c.Provider != scenario.ProviderExisting || c.Kind != nil || c.Existing == nil ||
		c.Existing.Kubeconfig != "/home/me/.kube/staging" || c.Existing.Context != "staging" || c.Istio.Mode != mode {
		t.Errorf("cluster after useExisting: %+v (existing %+v), want existing at the kubeconfig's context, Istio mode %s", c, c.Existing, mode)
	}

	two, err := scenario.Load("two.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- {name: east, istio: {version: 1.30.3}}
- {name: west, istio: {version: 1.30.3}}
scenarios:
- {name: a, cluster: east, steps: [{mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}}]}
- {name: b, cluster: west, steps: [{mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := useExisting(two, "two.yaml", "", ""); err == nil || !strings.Contains(err.Error(), "2 clusters") {
		t.Errorf("useExisting on a file with two clusters: %v, want it refused", err)
	}
}

// fakeProvider is an environment's cluster: it counts what the run asks of
// it.
type fakeProvider struct {
	support.E2EClusterProvider
	kubeconfig       string
	destroyed, loads int
}

func (p *fakeProvider) GetKubeconfig() string         { return p.kubeconfig }
func (p *fakeProvider) Destroy(context.Context) error { p.destroyed++; return nil }
func (p *fakeProvider) Create(context.Context, ...string) (string, error) {
	return "", errors.New("the environment created it already")
}

type fakeLoader struct{ *fakeProvider }

func (l fakeLoader) LoadImage(context.Context, string, ...string) error { l.loads++; return nil }
func (l fakeLoader) LoadImageArchive(context.Context, string, ...string) error {
	l.loads++
	return nil
}
func (fakeLoader) WaitForControlPlane(context.Context, klient.Client) error { return nil }

// A cluster the environment created is the run's as it is: Create gives
// its kubeconfig, Destroy leaves it to the environment, image archives load
// through it when it can load them, and the run's image delivery refuses
// (with its own advice) when it cannot.
func TestEnvClusterIsBorrowed(t *testing.T) {
	p := &fakeProvider{kubeconfig: "/tmp/env-kubeconfig"}
	b := envCluster(fakeLoader{p})
	if k, err := b.Create(t.Context()); err != nil || k != p.kubeconfig {
		t.Errorf("Create = %q, %v; want the environment's kubeconfig", k, err)
	}
	if err := b.Destroy(t.Context()); err != nil || p.destroyed != 0 {
		t.Errorf("Destroy = %v and destroyed the environment's cluster %d times; want it left alone", err, p.destroyed)
	}
	loader, ok := b.(support.E2EClusterProviderWithImageLoader)
	if !ok {
		t.Fatal("a borrowed provider that loads images does not load images")
	}
	if err := loader.LoadImageArchive(t.Context(), "echo.tar"); err != nil || p.loads != 1 {
		t.Errorf("LoadImageArchive = %v, %d loads; want it passed to the environment's provider", err, p.loads)
	}
	if _, ok := envCluster(p).(support.E2EClusterProviderWithImageLoader); ok {
		t.Error("a borrowed provider that cannot load images claims it can")
	}
	if _, err := envCluster(&fakeProvider{}).Create(t.Context()); err == nil {
		t.Error("a borrowed provider without kubeconfig was created")
	}
}

// Feature says what is missing when the environment's cluster cannot be
// found.
func TestEnvTargetSaysWhatIsMissing(t *testing.T) {
	suite, err := scenario.LoadFile("../scenarios.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		set  settings
		cfg  *envconf.Config
		want string
	}{
		{"no kubeconfig", settings{}, envconf.New(), "has no kubeconfig"},
		{"rehearse without a cluster", settings{rehearse: true}, envconf.New().WithKubeconfigFile("/k"), "WithEnvCluster"},
		{"no such cluster", settings{envCluster: "mesh"}, envconf.New(), `envfuncs.CreateCluster(provider, "mesh")`},
	} {
		if _, err := envTarget(t.Context(), c.cfg, suite, "scenarios.yaml", c.set); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	ctx := context.WithValue(t.Context(), support.ClusterNameContextKey("mesh"), support.E2EClusterProvider(&fakeProvider{}))
	if _, err := envTarget(ctx, envconf.New(), suite, "scenarios.yaml", settings{envCluster: "mesh", rehearse: true}); err == nil || !strings.Contains(err.Error(), "not a rehearsal.Cluster") {
		t.Errorf("Rehearse on an environment's cluster that is not a rehearsal: %v", err)
	}
	if _, err := envTarget(ctx, envconf.New(), suite, "scenarios.yaml", settings{envCluster: "mesh"}); err != nil {
		t.Errorf("the environment's own provider: %v", err)
	}
}

// bufferTB is a test whose output is a buffer.
type bufferTB struct {
	testing.TB
	out *bytes.Buffer
}

func (b bufferTB) Output() io.Writer { return b.out }

// The run's lines go to the innermost test pushed, then back to its parent
// once it is popped, and nowhere once the output is closed.
func TestTestOutputFollowsTheRunningTest(t *testing.T) {
	top, step := bufferTB{out: &bytes.Buffer{}}, bufferTB{out: &bytes.Buffer{}}
	var o testOutput
	popTop := o.push(top)
	io.WriteString(&o, "setup\n")
	pop := o.push(step)
	io.WriteString(&o, "step\n")
	pop()
	io.WriteString(&o, "teardown\n")
	popTop()
	o.close()
	if n, err := io.WriteString(&o, "late\n"); err != nil || n != 5 {
		t.Errorf("a line after close: %d, %v; want it dropped quietly", n, err)
	}
	if got := top.out.String(); got != "setup\nteardown\n" {
		t.Errorf("the top test got %q", got)
	}
	if got := step.out.String(); got != "step\n" {
		t.Errorf("the step got %q", got)
	}
}
