// Package testsupport is what meshproof's tests share and its binaries never
// link: a real control plane per test or per package
// (harness/internal/local/controlplane, started and stopped around
// *testing.T and *testing.M), namespaces for tests sharing it, Istio's Helm
// charts for tests (local, else pulled and cached, with one rule for
// skipping without them), and the Deployment controller's and kubelets'
// writes played by hand on a control plane that has neither.
package testsupport

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// stopTimeout bounds the stop of the control plane on a signal.
const stopTimeout = 30 * time.Second

// Env is a running control plane, with the helpers tests use on it.
type Env struct{ *controlplane.Env }

// Start starts a control plane for t (with opts, as controlplane.StartEnv)
// and stops it in t.Cleanup. It fails t (never skips it) when the control
// plane cannot be started, saying why and how to fix it.
func Start(t testing.TB, opts ...controlplane.Option) *Env {
	t.Helper()
	proc.StopOnSignal(stopTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, stop, err := controlplane.StartEnv(ctx, opts...)
	if err != nil {
		t.Fatalf("testsupport: %v", err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("testsupport: stopping the control plane: %v", err)
		}
	})
	t.Logf("testsupport: kube-apiserver %s (built %s) at %s with %d Istio CRDs", env.ServerVersion.GitVersion, env.ServerVersion.BuildDate, env.Config.Host, len(env.IstioCRDs))
	return &Env{env}
}

// HandIstioCRDsToHelm marks the Istio CRDs the control plane installed as
// belonging to a Helm release, the way Helm adopts existing objects, so
// that tests can install Istio's base chart over them. (Deleting them
// instead depends on the API server's CRD finalizer, which was seen to take
// over a minute.)
func (e *Env) HandIstioCRDsToHelm(ctx context.Context, release, namespace string) error {
	for _, crd := range e.IstioCRDs {
		var cur apiextensionsv1.CustomResourceDefinition
		if err := e.Client.Get(ctx, client.ObjectKey{Name: crd.Name}, &cur); err != nil {
			return err
		}
		patch := client.MergeFrom(cur.DeepCopy())
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Labels["app.kubernetes.io/managed-by"] = "Helm"
		cur.Annotations["meta.helm.sh/release-name"] = release
		cur.Annotations["meta.helm.sh/release-namespace"] = namespace
		if err := e.Client.Patch(ctx, &cur, patch); err != nil {
			return fmt.Errorf("handing CRD %s to Helm release %s: %w", cur.Name, release, err)
		}
	}
	return nil
}

// Logger is a logger whose records go to t's log, one line each.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
