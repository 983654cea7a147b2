package mesh

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

var env *testsupport.Env

func TestMain(m *testing.M) {
	os.Exit(testsupport.Main(m, func(e *testsupport.Env) error {
		env = e
		// The base chart creates Istio's CRDs itself; Helm adopts the ones
		// the test environment installed once they are marked as its own.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return e.HandIstioCRDsToHelm(ctx, istio.BaseReleaseName, "istio-system")
	}))
}

// chartsRoot is the tests' Istio charts, also set as $MESHPROOF_ISTIO_CHARTS,
// where Install finds them.
func chartsRoot(t *testing.T) string {
	t.Helper()
	root := testsupport.IstioCharts(t)
	t.Setenv(ChartsEnv, root)
	return root
}

// logLines collects every log line, as a run's output would show them.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (l *logLines) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// keyFragments are pieces of the CA's private keys that must never appear:
// each PEM body line and the whole DER in base64.
func keyFragments(t *testing.T, b *ca.Bundle) []string {
	t.Helper()
	var out []string
	for _, k := range []*ca.PrivateKey{b.RootKey, b.IntermediateKey} {
		p, err := k.PEM()
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(p)
		out = append(out, base64.StdEncoding.EncodeToString(block.Bytes))
		for _, line := range strings.Split(string(p), "\n") {
			if len(line) >= 32 && !strings.HasPrefix(line, "-----") {
				out = append(out, line)
			}
		}
	}
	return out
}

func resourceVersion(t *testing.T, o client.Object) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(o.GetResourceVersion(), 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q of %s: %v", o.GetResourceVersion(), o.GetName(), err)
	}
	return v
}

func TestPluggedCAIsInPlaceBeforeIstiodAndNeverLogged(t *testing.T) {
	root := chartsRoot(t)
	src := fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3, pluggedCA: true, workloadCertTTL: 1m}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`)
	s, err := scenario.Load("mesh.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c := &s.Clusters[0]
	if got := ChartsDir(c); got != filepath.Join(root, "1.30.3") {
		t.Fatalf("ChartsDir = %q", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var logs logLines
	start := time.Now()
	m, err := Install(ctx, env.Client, env.Config, c, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed after %s", time.Since(start))
	t.Cleanup(func() {
		defer func(start time.Time) { t.Logf("uninstalled in %s", time.Since(start)) }(time.Now())
		// Releases only: purging (proven in harness/internal/istio) waits on the API
		// server's CRD finalizer, which was seen to take minutes here.
		if err := m.Istio.Uninstall(context.Background(), false); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})

	var secret corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: ca.SecretName}, &secret); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"} {
		if len(secret.Data[key]) == 0 {
			t.Errorf("cacerts lacks %s", key)
		}
	}
	// etcd orders every write: the secret's revision must precede the
	// istiod release record and the istiod Deployment.
	var release corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "sh.helm.release.v1." + istio.IstiodReleaseName + ".v1"}, &release); err != nil {
		t.Fatalf("the istiod release record: %v", err)
	}
	if resourceVersion(t, &secret) >= resourceVersion(t, &release) {
		t.Errorf("cacerts (revision %s) was not written before the istiod release (revision %s)", secret.ResourceVersion, release.ResourceVersion)
	}

	// No key material in any log line, in the error-prone formatting of the
	// bundle, or in a run's report folder.
	run, err := report.Open(t.TempDir(), "r1")
	if err != nil {
		t.Fatal(err)
	}
	run.Record(results.Observation{Time: time.Now(), Scenario: "s", Step: fmt.Sprintf("%v %+v", m.CA, m.CA)})
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	var everything bytes.Buffer
	for _, l := range logs.lines {
		everything.WriteString(l + "\n")
	}
	fmt.Fprintf(&everything, "%v %+v %#v %s\n", m.CA, m.CA, m.CA, m.CA)
	filepath.Walk(run.Dir, func(path string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(path)
			everything.Write(b)
		}
		return nil
	})
	if len(logs.lines) == 0 {
		t.Fatal("the install logged nothing; the check would prove nothing")
	}
	for _, frag := range keyFragments(t, m.CA) {
		if bytes.Contains(everything.Bytes(), []byte(frag)) {
			t.Fatalf("private key material appears in the logs or the report:\n%s", frag)
		}
	}
	// A second run on the same (reused) cluster converges: the releases are
	// upgraded in place and the CA istiod runs with is kept.
	again, err := Install(ctx, env.Client, env.Config, c, logs.logger())
	if err != nil {
		t.Fatalf("installing again on the reused cluster: %v", err)
	}
	if !again.CA.Root.Equal(m.CA.Root) {
		t.Error("a second run replaced the plugged CA of the running istiod")
	}
	var upgraded corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: "istio-system", Name: "sh.helm.release.v1." + istio.IstiodReleaseName + ".v2"}, &upgraded); err != nil {
		t.Errorf("the second run did not upgrade the istiod release in place: %v", err)
	}

	// The secret itself does hold the key: the check looks for the right thing.
	if !bytes.Contains(secret.Data["ca-key.pem"], []byte(keyFragments(t, m.CA)[len(keyFragments(t, m.CA))-1])) {
		t.Error("the fragments checked do not even match the secret's key")
	}
}
