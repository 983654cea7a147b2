package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

var kube testsupport.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// secondKubeconfig writes, in a directory of its own, a kubeconfig whose
// current context is "other" and whose cluster's CA is a path relative to
// the file.
func secondKubeconfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "other-ca.crt"), []byte("other-ca-bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "other.yaml")
	config := `apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://other.example:6443", certificate-authority: other-ca.crt}
users:
- name: other-admin
  user: {token: other-token}
contexts:
- name: other
  context: {cluster: other, user: other-admin}
current-context: other
`
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExistingEmptyPathUsesKUBECONFIGList(t *testing.T) {
	first, second := userKubeconfig(t), secondKubeconfig(t)
	missing := filepath.Join(t.TempDir(), "absent")
	t.Setenv("HOME", t.TempDir()) // must not be consulted
	t.Setenv(clientcmd.RecommendedConfigPathEnvVar, strings.Join([]string{missing, first, second}, string(os.PathListSeparator)))

	// The first file that sets current-context wins, as in kubectl.
	e, err := NewExisting("", "")
	if err != nil {
		t.Fatal(err)
	}
	if e.GetKubectlContext() != "staging" || e.KubernetesRestConfig().Host != "https://staging.example:6443" {
		t.Errorf("context %q host %q, want staging from the first file", e.GetKubectlContext(), e.KubernetesRestConfig().Host)
	}

	// An explicit context from the second file, its relative CA path
	// resolved against that file's directory, not the working directory.
	e, err = NewExisting("", "other")
	if err != nil {
		t.Fatal(err)
	}
	rc := e.KubernetesRestConfig()
	if rc.Host != "https://other.example:6443" || rc.BearerToken != "other-token" || string(rc.CAData) != "other-ca-bytes" {
		t.Errorf("REST config host %q token %q CA %q, want the other context's", rc.Host, rc.BearerToken, rc.CAData)
	}
}

func TestExistingEmptyPathFallsBackToHomeKubeconfig(t *testing.T) {
	path := userKubeconfig(t) // <tmp>/home/.kube/config
	t.Setenv("HOME", filepath.Dir(filepath.Dir(path)))
	t.Setenv(clientcmd.RecommendedConfigPathEnvVar, "")
	e, err := NewExisting("", "mesh-ctx")
	if err != nil {
		t.Fatal(err)
	}
	if rc := e.KubernetesRestConfig(); rc.Host != "https://mesh.example:6443" || string(rc.CAData) != "fake-ca-bytes" {
		t.Errorf("host %q CA %q, want ~/.kube/config's mesh-ctx", rc.Host, rc.CAData)
	}
}

func TestExistingLoadingRuleErrorsNameFileAndContext(t *testing.T) {
	emptyHome := t.TempDir()
	broken := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(broken, []byte("clusters: [this is not a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	cases := []struct {
		name, env, path, context string
		want                     []string
	}{
		{"no home kubeconfig", "", "", "", []string{"no kubeconfig found", filepath.Join(emptyHome, ".kube", "config") + " does not exist", "set $KUBECONFIG"}},
		{"KUBECONFIG files all missing", a + string(os.PathListSeparator) + b, "", "", []string{"none of " + a + ", " + b + " exists"}},
		{"unknown context in KUBECONFIG", secondKubeconfig(t), "", "prod", []string{"$KUBECONFIG (", `has no context "prod" (it has: other)`}},
		{"malformed file", broken, "", "", []string{"load kubeconfig $KUBECONFIG (" + broken + ")", broken}},
		{"malformed explicit file", "", broken, "x", []string{"load kubeconfig " + broken}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("HOME", emptyHome)
			t.Setenv(clientcmd.RecommendedConfigPathEnvVar, tc.env)
			_, err := NewExisting(tc.path, tc.context)
			if err == nil {
				t.Fatal("NewExisting succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("NewExisting = %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

// TestExistingReachesAPIServerThroughKUBECONFIG follows $KUBECONFIG to a
// real API server, and checks that the kubeconfig Create writes (which
// e2e-framework's client and Helm use) reaches it too.
func TestExistingReachesAPIServerThroughKUBECONFIG(t *testing.T) {
	env := kube.Get(t)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: env.Config.CertData, ClientKeyData: env.Config.KeyData, Token: env.Config.BearerToken}
	cfg.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	cfg.Contexts["elsewhere"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin", Namespace: "x"}
	cfg.CurrentContext = "elsewhere"
	path := filepath.Join(t.TempDir(), "envtest.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	t.Setenv(clientcmd.RecommendedConfigPathEnvVar, filepath.Join(t.TempDir(), "absent")+string(os.PathListSeparator)+path)

	e, err := NewExisting("", "envtest", WithKubeconfigDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	written, err := e.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, load := range map[string]func() (*kubernetes.Clientset, error){
		"REST config": func() (*kubernetes.Clientset, error) { return kubernetes.NewForConfig(e.KubernetesRestConfig()) },
		"written kubeconfig": func() (*kubernetes.Clientset, error) {
			rc, err := clientcmd.BuildConfigFromFlags("", written)
			if err != nil {
				return nil, err
			}
			return kubernetes.NewForConfig(rc)
		},
	} {
		cs, err := load()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := cs.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{}); err != nil {
			t.Errorf("%s does not reach the API server: %v", name, err)
		}
	}
	if got, err := clientcmd.LoadFromFile(written); err != nil || got.CurrentContext != "envtest" {
		t.Errorf("written kubeconfig current context = %v (%v), want envtest", got, err)
	}
}
