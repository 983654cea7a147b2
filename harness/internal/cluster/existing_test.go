package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/e2e-framework/support"
)

// userKubeconfig writes a kubeconfig with two contexts, the current one
// being "staging", and a CA file referenced by a relative path, as users'
// files often are.
func userKubeconfig(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "home", ".kube")
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "certs", "mesh-ca.crt"), []byte("fake-ca-bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	config := `apiVersion: v1
kind: Config
clusters:
- name: staging
  cluster: {server: "https://staging.example:6443"}
- name: mesh
  cluster:
    server: "https://mesh.example:6443"
    certificate-authority: certs/mesh-ca.crt
users:
- name: staging-admin
  user: {token: staging-token}
- name: mesh-admin
  user: {token: mesh-token}
contexts:
- name: staging
  context: {cluster: staging, user: staging-admin}
- name: mesh-ctx
  context: {cluster: mesh, user: mesh-admin}
- name: broken
  context: {cluster: nowhere, user: mesh-admin}
current-context: staging
`
	path := filepath.Join(dir, "config")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExistingSelectsContext(t *testing.T) {
	src := userKubeconfig(t)
	runDir := t.TempDir()
	e, err := NewExisting(src, "mesh-ctx", WithKubeconfigDir(runDir))
	if err != nil {
		t.Fatal(err)
	}
	rc := e.KubernetesRestConfig()
	if rc.Host != "https://mesh.example:6443" || rc.BearerToken != "mesh-token" || string(rc.CAData) != "fake-ca-bytes" {
		t.Errorf("REST config host %q token %q CA %q, want the mesh-ctx context's", rc.Host, rc.BearerToken, rc.CAData)
	}
	if e.GetKubectlContext() != "mesh-ctx" || e.Name() != "mesh" {
		t.Errorf("context %q, name %q", e.GetKubectlContext(), e.Name())
	}

	path, err := e.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != runDir || e.GetKubeconfig() != path {
		t.Errorf("kubeconfig written to %s, want inside %s", path, runDir)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("kubeconfig mode %04o, want 0600", m)
	}
	// The copy must work from anywhere and point e2e-framework (which
	// follows the current context) at the chosen cluster only.
	written, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if written.CurrentContext != "mesh-ctx" || len(written.Contexts) != 1 || len(written.Clusters) != 1 || len(written.AuthInfos) != 1 {
		t.Errorf("written kubeconfig holds current %q, %d contexts, %d clusters, %d users; want only mesh-ctx",
			written.CurrentContext, len(written.Contexts), len(written.Clusters), len(written.AuthInfos))
	}
	if c := written.Clusters["mesh"]; c == nil || string(c.CertificateAuthorityData) != "fake-ca-bytes" || c.CertificateAuthority != "" {
		t.Errorf("CA not inlined: %+v", c)
	}
	if strings.Contains(mustRead(t, path), "staging-token") {
		t.Error("the other context's credentials leaked into the run's kubeconfig")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExistingDefaultsToCurrentContext(t *testing.T) {
	e, err := NewExisting(userKubeconfig(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if e.GetKubectlContext() != "staging" || e.KubernetesRestConfig().Host != "https://staging.example:6443" {
		t.Errorf("context %q host %q, want the current context staging", e.GetKubectlContext(), e.KubernetesRestConfig().Host)
	}
}

func TestNewExistingErrors(t *testing.T) {
	src := userKubeconfig(t)
	noCurrent := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(noCurrent, []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		desc, path, context string
		opts                []Option
		want                string
	}{
		{"unknown context", src, "prod", nil, `has no context "prod" (it has: broken, mesh-ctx, staging)`},
		{"context without cluster", src, "broken", nil, `names cluster "nowhere", which the kubeconfig does not define`},
		{"no current context", noCurrent, "", nil, "has no current context; name the context to use"},
		{"missing file", filepath.Join(t.TempDir(), "nope"), "x", nil, "load kubeconfig: stat /"},
		{"kind-only options", src, "staging", []Option{WithReuse(true), WithNodeImage("kindest/node:v1")}, "WithReuse, WithNodeImage only apply to kind clusters"},
		{"bad option", src, "staging", []Option{WithWaitTimeout(0)}, "the timeout must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := NewExisting(tc.path, tc.context, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewExisting = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestExistingDestroyNeverDeletes(t *testing.T) {
	var logs bytes.Buffer
	runDir := t.TempDir()
	e, err := NewExisting(userKubeconfig(t), "mesh-ctx", WithKubeconfigDir(runDir), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	// Any API call Destroy made would go through this client; it must
	// make none.
	cs := fake.NewClientset(readyCluster()...)
	e.newClientset = func(*rest.Config) (kubernetes.Interface, error) { return cs, nil }
	path, err := e.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(cs.Actions()); n != 0 {
		t.Errorf("Destroy made %d API calls: %v", n, cs.Actions())
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Destroy removed the run's kubeconfig: %v", err)
	}
	if !strings.Contains(logs.String(), "not deleting the existing cluster") {
		t.Errorf("Destroy did not say it keeps the cluster; log:\n%s", logs.String())
	}
	if err := e.ExportLogs(context.Background(), t.TempDir()); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("ExportLogs = %v, want ErrUnsupported", err)
	}
	if _, err := e.CreateWithConfig(context.Background(), "kind.yaml"); err == nil {
		t.Error("CreateWithConfig accepted a configuration for an existing cluster")
	}
}

func TestExistingTemporaryKubeconfigRemoved(t *testing.T) {
	e, err := NewExisting(userKubeconfig(t), "staging")
	if err != nil {
		t.Fatal(err)
	}
	path, err := e.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("temporary kubeconfig directory %s left behind", filepath.Dir(path))
	}
}

func TestExistingWaitForControlPlane(t *testing.T) {
	e, err := NewExisting(userKubeconfig(t), "mesh-ctx", WithWaitTimeout(30*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	e.pollInterval = testInterval
	e.newClientset = func(rc *rest.Config) (kubernetes.Interface, error) {
		if rc.Host != "https://mesh.example:6443" {
			t.Errorf("client for %s", rc.Host)
		}
		return fake.NewClientset(readyCluster()...), nil
	}
	if err := e.WaitForControlPlane(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	e.newClientset = func(*rest.Config) (kubernetes.Interface, error) {
		return fake.NewClientset(notReadyNode("mesh-node-1")), nil
	}
	if err := e.WaitForControlPlane(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "node/mesh-node-1") {
		t.Errorf("WaitForControlPlane on an unready cluster = %v", err)
	}
}

func TestExistingE2EFrameworkMethods(t *testing.T) {
	e, err := NewExisting(userKubeconfig(t), "mesh-ctx")
	if err != nil {
		t.Fatal(err)
	}
	var p support.E2EClusterProvider = e
	p.SetDefaults().WithName("other").WithVersion("v1.30").WithPath("/bin/x")
	if e.Name() != "mesh" || e.KubernetesRestConfig().Host != "https://mesh.example:6443" {
		t.Errorf("name/version/path changed an existing cluster: %q %q", e.Name(), e.KubernetesRestConfig().Host)
	}
	applied := false
	p.WithOpts(func(c support.E2EClusterProvider) { applied = c == p })
	if !applied {
		t.Error("WithOpts did not apply the option to the provider")
	}
	path, err := e.GenerateKubeconfig()
	if err != nil || path == "" || path != e.GetKubeconfig() {
		t.Errorf("GenerateKubeconfig = %q, %v", path, err)
	}
	if _, err := e.GenerateKubeconfig("--minify"); err == nil {
		t.Error("GenerateKubeconfig accepted CLI arguments")
	}
	if err := e.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
}
