package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/klient/k8s/resources"
	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
	kindlog "sigs.k8s.io/kind/pkg/log"
)

// fakeKind stands in for kind's *cluster.Provider and records the calls.
type fakeKind struct {
	clusters    []string
	createErr   error
	onCreate    func() // runs inside kind's Create, e.g. to interrupt it
	createCalls []string
	createOpts  int
	deleteCalls []string // "name kubeconfigPath"
	nodes       []nodes.Node
	logsDirs    []string
}

const fakeKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: kind-mp
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: kind-mp
  user: {token: secret}
contexts:
- name: kind-mp
  context: {cluster: kind-mp, user: kind-mp}
current-context: kind-mp
`

func (f *fakeKind) List() ([]string, error) { return f.clusters, nil }
func (f *fakeKind) Create(name string, opts ...kindcluster.CreateOption) error {
	f.createCalls = append(f.createCalls, name)
	f.createOpts = len(opts)
	if f.onCreate != nil {
		f.onCreate()
	}
	if f.createErr != nil {
		return f.createErr
	}
	f.clusters = append(f.clusters, name)
	return nil
}
func (f *fakeKind) Delete(name, path string) error {
	f.deleteCalls = append(f.deleteCalls, name+" "+path)
	return nil
}
func (f *fakeKind) KubeConfig(name string, internal bool) (string, error) {
	if internal {
		return "", errors.New("internal kubeconfig requested")
	}
	if !slices.Contains(f.clusters, name) {
		return "", errors.New("no such cluster")
	}
	return fakeKubeconfig, nil
}
func (f *fakeKind) ListInternalNodes(string) ([]nodes.Node, error) { return f.nodes, nil }
func (f *fakeKind) CollectLogs(name, dir string) error {
	f.logsDirs = append(f.logsDirs, dir)
	return nil
}

// newTestKind returns a Kind driving fk, whose API server is a fake one
// holding objs.
func newTestKind(t *testing.T, fk *fakeKind, objs []runtime.Object, opts ...Option) *Kind {
	t.Helper()
	k, err := NewKind("mp", opts...)
	if err != nil {
		t.Fatal(err)
	}
	k.check = func(context.Context) (kindcluster.ProviderOption, error) {
		return kindcluster.ProviderWithDocker(), nil
	}
	k.newProvider = func(kindcluster.ProviderOption, kindlog.Logger) kindProvider { return fk }
	k.newClientset = func(rc *rest.Config) (kubernetes.Interface, error) {
		if rc == nil || rc.Host != "https://127.0.0.1:6443" {
			t.Errorf("client built for %+v, want the kubeconfig's server", rc)
		}
		return fake.NewClientset(objs...), nil
	}
	k.pollInterval = testInterval
	return k
}

func TestKindCreateAndDestroy(t *testing.T) {
	runDir := filepath.Join(t.TempDir(), "run")
	fk := &fakeKind{}
	k := newTestKind(t, fk, readyCluster(), WithKubeconfigDir(runDir), WithNodeImage("kindest/node:v1.33.1"))
	ctx := context.Background()

	path, err := k.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(runDir, "mp.kubeconfig"); path != want || k.GetKubeconfig() != want {
		t.Errorf("kubeconfig at %s (GetKubeconfig %s), want %s", path, k.GetKubeconfig(), want)
	}
	if got, _ := os.ReadFile(path); string(got) != fakeKubeconfig {
		t.Errorf("kubeconfig content = %q", got)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("kubeconfig mode %04o, want 0600", m)
	}
	// kubeconfig path, no usage, no salutation, node image
	if !slices.Equal(fk.createCalls, []string{"mp"}) || fk.createOpts != 4 {
		t.Errorf("kind Create calls %v with %d options, want one for mp with 4", fk.createCalls, fk.createOpts)
	}
	if k.Reused() || k.KubernetesRestConfig() == nil {
		t.Errorf("reused=%v restConfig=%v after creating", k.Reused(), k.KubernetesRestConfig())
	}

	// Idempotent: a second Create neither creates nor fails.
	if again, err := k.Create(ctx); err != nil || again != path || len(fk.createCalls) != 1 {
		t.Errorf("second Create = %q, %v; kind Create called %d times", again, err, len(fk.createCalls))
	}

	if err := k.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fk.deleteCalls, []string{"mp " + path}) {
		t.Errorf("kind Delete calls %v, want one for mp with the run's kubeconfig", fk.deleteCalls)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the kubeconfig in the run directory should stay: %v", err)
	}
	// Deleted once; a second Destroy has nothing to delete.
	if err := k.Destroy(ctx); err != nil || len(fk.deleteCalls) != 1 {
		t.Errorf("second Destroy: %v, %d deletes", err, len(fk.deleteCalls))
	}
}

func TestKindReuseKeepsCluster(t *testing.T) {
	fk := &fakeKind{clusters: []string{"mp"}}
	k := newTestKind(t, fk, readyCluster(), WithReuse(true))
	ctx := context.Background()
	path, err := k.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fk.createCalls) != 0 || !k.Reused() {
		t.Fatalf("kind Create called %v, reused=%v; want the existing cluster reused", fk.createCalls, k.Reused())
	}
	tempDir := filepath.Dir(path)
	if !strings.Contains(filepath.Base(tempDir), "meshproof-kubeconfig-") {
		t.Errorf("kubeconfig %s not in a private temporary directory", path)
	}
	if err := k.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if len(fk.deleteCalls) != 0 {
		t.Errorf("a reused cluster was deleted: %v", fk.deleteCalls)
	}
	if _, err := os.Stat(tempDir); !os.IsNotExist(err) {
		t.Errorf("temporary kubeconfig directory %s left behind", tempDir)
	}
}

func TestKindDeleteReusedOnRequest(t *testing.T) {
	fk := &fakeKind{clusters: []string{"mp"}}
	k := newTestKind(t, fk, readyCluster(), WithReuse(true), WithDeleteReused(true), WithKubeconfigDir(t.TempDir()))
	ctx := context.Background()
	if _, err := k.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if err := k.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if len(fk.deleteCalls) != 1 || !strings.HasPrefix(fk.deleteCalls[0], "mp ") {
		t.Errorf("kind Delete calls %v, want the reused cluster deleted as asked", fk.deleteCalls)
	}
}

func TestKindExistingClusterWithoutReuse(t *testing.T) {
	fk := &fakeKind{clusters: []string{"mp"}}
	k := newTestKind(t, fk, readyCluster(), WithKubeconfigDir(t.TempDir()))
	_, err := k.Create(context.Background())
	if err == nil || !strings.Contains(err.Error(), `kind cluster "mp" already exists`) {
		t.Fatalf("Create = %v, want the already-exists error", err)
	}
	if len(fk.createCalls) != 0 {
		t.Error("kind Create was called for an existing cluster")
	}
	if err := k.Destroy(context.Background()); err != nil || len(fk.deleteCalls) != 0 {
		t.Errorf("Destroy deleted a cluster it neither created nor reused: %v %v", err, fk.deleteCalls)
	}
}

func TestKindCreateFailure(t *testing.T) {
	fk := &fakeKind{createErr: errors.New("failed to pull image")}
	k := newTestKind(t, fk, readyCluster(), WithKubeconfigDir(t.TempDir()))
	_, err := k.Create(context.Background())
	if err == nil || !strings.Contains(err.Error(), `create kind cluster "mp": failed to pull image`) {
		t.Fatalf("Create = %v", err)
	}
	// kind cleans up a failed create itself, but only if the process
	// lives to do it: Destroy deletes by name whatever may be left.
	if err := k.Destroy(context.Background()); err != nil || len(fk.deleteCalls) != 1 {
		t.Errorf("Destroy after a failed create: %v, deletes %v, want one", err, fk.deleteCalls)
	}
}

func TestKindCreateInterruptedDeletesTheCluster(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	fk := &fakeKind{onCreate: cancel} // Ctrl-C while kind creates the nodes
	k := newTestKind(t, fk, readyCluster(), WithKubeconfigDir(t.TempDir()))
	_, err := k.Create(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "interrupted; the cluster kind made was deleted") {
		t.Fatalf("Create = %v, want the interruption saying the cluster was deleted", err)
	}
	if len(fk.deleteCalls) != 1 || !strings.HasPrefix(fk.deleteCalls[0], "mp ") {
		t.Fatalf("kind Delete calls %v, want one for mp as soon as kind's Create returned", fk.deleteCalls)
	}
	if err := k.Destroy(context.Background()); err != nil || len(fk.deleteCalls) != 1 {
		t.Errorf("Destroy after the interrupted create: %v, deletes %v (already deleted)", err, fk.deleteCalls)
	}
}

func TestKindCreateWaitsForReadiness(t *testing.T) {
	fk := &fakeKind{}
	k := newTestKind(t, fk, []runtime.Object{notReadyNode("mp-control-plane")},
		WithKubeconfigDir(t.TempDir()), WithWaitTimeout(30*time.Millisecond))
	_, err := k.Create(context.Background())
	if err == nil || !strings.Contains(err.Error(), "node/mp-control-plane (Ready=False") {
		t.Fatalf("Create = %v, want the readiness error naming the node", err)
	}
	// The cluster was created, so Destroy must remove it.
	if err := k.Destroy(context.Background()); err != nil || len(fk.deleteCalls) != 1 {
		t.Errorf("Destroy after a readiness timeout: %v, deletes %v", err, fk.deleteCalls)
	}
}

func TestKindRefusesCLIArguments(t *testing.T) {
	k := newTestKind(t, &fakeKind{}, readyCluster())
	if _, err := k.Create(context.Background(), "--retain"); err == nil || !strings.Contains(err.Error(), "takes no CLI arguments") {
		t.Errorf("Create with args = %v", err)
	}
	if _, err := k.GenerateKubeconfig("--internal"); err == nil || !strings.Contains(err.Error(), "takes no CLI arguments") {
		t.Errorf("GenerateKubeconfig with args = %v", err)
	}
	if err := k.LoadImage(context.Background(), "busybox"); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("LoadImage = %v, want ErrUnsupported", err)
	}
	k.WithName("Bad_Name")
	if _, err := k.Create(context.Background()); err == nil || !strings.Contains(err.Error(), "only lower-case letters") {
		t.Errorf("Create with invalid name = %v", err)
	}
}

func TestKindExportLogs(t *testing.T) {
	fk := &fakeKind{}
	k := newTestKind(t, fk, nil)
	dest := filepath.Join(t.TempDir(), "report", "kind-logs")
	if err := k.ExportLogs(context.Background(), dest); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fk.logsDirs, []string{dest}) {
		t.Errorf("logs collected into %v, want %s", fk.logsDirs, dest)
	}
}

// restOnlyClient is the part of e2e-framework's klient.Client that
// WaitForControlPlane uses.
type restOnlyClient struct{ rc *rest.Config }

func (c restOnlyClient) RESTConfig() *rest.Config                 { return c.rc }
func (c restOnlyClient) Resources(...string) *resources.Resources { return nil }

func TestKindWaitForControlPlane(t *testing.T) {
	k := newTestKind(t, &fakeKind{}, readyCluster())
	client := restOnlyClient{&rest.Config{Host: "https://127.0.0.1:6443"}}
	if err := k.WaitForControlPlane(context.Background(), client); err != nil {
		t.Fatal(err)
	}
	k = newTestKind(t, &fakeKind{}, nil, WithWaitTimeout(20*time.Millisecond))
	if err := k.WaitForControlPlane(context.Background(), client); err == nil || !strings.Contains(err.Error(), "no nodes registered yet") {
		t.Errorf("WaitForControlPlane on an empty cluster = %v", err)
	}
}

func TestKindCreateWithConfig(t *testing.T) {
	cfgFile := filepath.Join(t.TempDir(), "kind.yaml")
	fk := &fakeKind{}
	k := newTestKind(t, fk, readyCluster(), WithKubeconfigDir(t.TempDir()))
	if _, err := k.CreateWithConfig(context.Background(), cfgFile); err != nil {
		t.Fatal(err)
	}
	// kubeconfig path, no usage, no salutation, config file
	if k.configFile != cfgFile || fk.createOpts != 4 {
		t.Errorf("config file %q, %d create options", k.configFile, fk.createOpts)
	}

	k = newTestKind(t, &fakeKind{}, readyCluster(), WithConfig([]byte("kind: Cluster")))
	if _, err := k.CreateWithConfig(context.Background(), cfgFile); err == nil || !strings.Contains(err.Error(), "conflicts with the WithConfig option") {
		t.Errorf("CreateWithConfig with WithConfig = %v", err)
	}
}

func TestKindGenerateKubeconfigRestoresMode(t *testing.T) {
	k := newTestKind(t, &fakeKind{}, readyCluster(), WithKubeconfigDir(t.TempDir()))
	path, err := k.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	again, err := k.GenerateKubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	if again != path || fileMode(t, path) != 0o600 || mustRead(t, path) != fakeKubeconfig {
		t.Errorf("GenerateKubeconfig wrote %s mode %04o", again, fileMode(t, path))
	}
}
