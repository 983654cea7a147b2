// Package mesh installs the mesh a scenario's cluster asks for, in the one
// order that works: the plugged CA's cacerts secret first (istiod reads it
// only when it starts), then Istio's base and istiod releases, then the
// explicit readiness phase. The suites and any other driver call Install
// rather than the pieces, so the order is proven once, here.
package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// ChartsEnv names a directory of Istio charts,
// <dir>/<version>/{base,istiod,cni,ztunnel},
// used when a scenario names no charts directory of its own (air-gapped
// machines, and this project's tests).
const ChartsEnv = istiocharts.Env

// Mesh is an installed (or installing) mesh.
type Mesh struct {
	// Istio is the installer, for upgrades and uninstall.
	Istio *istio.Installer
	// CA is the plugged CA, when the scenario asked for one.
	CA *ca.Bundle
}

// Install installs the mesh of cluster c. It does not wait for istiod to
// run: call Ready for that (it needs a kubelet, so it is a phase of its own).
//
// extra options come last: the run passes its ledger (istio.WithLedger), so
// that the installer refuses Istio releases it did not install and
// removes only what it did.
func Install(ctx context.Context, kube client.Client, cfg *rest.Config, c *scenario.Cluster, log *slog.Logger, extra ...istio.Option) (*Mesh, error) {
	m := &Mesh{}
	var err error
	if m.Istio, err = istio.New(cfg, append(installerOptions(c, log), extra...)...); err != nil {
		return nil, err
	}
	if c.Istio.PluggedCA {
		if m.CA, err = pluggedCA(ctx, kube, m.Istio.Namespace(), log); err != nil {
			return nil, err
		}
	}
	if err := m.Istio.Install(ctx); err != nil {
		return m, fmt.Errorf("installing Istio %s: %w", c.Istio.Version, err)
	}
	return m, nil
}

// Renderer is an Installer without a cluster for the Istio cluster c asks
// meshproof to install, with the options Install gives it: its
// ChartReleases are the releases Install installs, in that order, and its
// Render the objects Install applies (`meshproof plan -o yaml`). Only the
// options of a run's own settings (its ledger, a Helm post-renderer of the
// rehearsal) are not there: they decide which releases may be touched and,
// in a rehearsal, where webhooks point, not what a cluster is given.
func Renderer(c *scenario.Cluster) (*istio.Installer, error) {
	return istio.New(nil, installerOptions(c, slog.New(slog.DiscardHandler))...)
}

// installerOptions are the Installer's options for the Istio cluster c
// asks for: the one place Install and Renderer take them from.
func installerOptions(c *scenario.Cluster, log *slog.Logger) []istio.Option {
	opts := []istio.Option{istio.WithVersion(c.Istio.Version), istio.WithHub(c.Istio.Hub), istio.WithTag(c.Istio.Tag),
		istio.WithTrustDomain(c.Istio.TrustDomain), istio.WithLogger(log)}
	if charts := ChartsDir(c); charts != "" {
		opts = append(opts, istio.WithChartsDir(charts))
	}
	if c.Istio.Revision != "" {
		opts = append(opts, istio.WithRevision(c.Istio.Revision))
	}
	if len(c.Istio.Values) > 0 {
		opts = append(opts, istio.WithValues(c.Istio.Values))
	}
	if c.Istio.PluggedCA {
		// A CA meshproof controls can be rotated (rotateRoot): istiod and
		// the proxies must accept several roots for that.
		opts = append(opts, istio.WithMultiRoot(true))
	}
	if !c.Istio.WorkloadCertTTL.IsZero() {
		opts = append(opts, istio.WithWorkloadCertTTL(c.Istio.WorkloadCertTTL.Duration))
	}
	if c.Ambient() {
		opts = append(opts, istio.WithAmbient(true))
	}
	return opts
}

// pluggedCA creates the cacerts secret, or keeps the one a reused
// cluster's istiod already runs with: replacing it under running workloads
// would split the mesh between two roots until every certificate rotated.
func pluggedCA(ctx context.Context, kube client.Client, namespace string, log *slog.Logger) (*ca.Bundle, error) {
	var existing corev1.Secret
	err := kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ca.SecretName}, &existing)
	switch {
	case err == nil:
		b, err := ca.LoadSecret(&existing)
		if err != nil {
			return nil, fmt.Errorf("the cluster already has %s/%s, but: %w", namespace, ca.SecretName, err)
		}
		log.Info("plugged CA: keeping the secret already in the cluster", "namespace", namespace, "secret", ca.SecretName, "root", b.Root.Subject)
		return b, nil
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("reading %s/%s: %w", namespace, ca.SecretName, err)
	}
	b, err := ca.Generate()
	if err != nil {
		return nil, err
	}
	// Managed across runs (no run id): a later run's sweep of leftovers
	// must not take the CA from under a running istiod.
	labels := map[string]string{ownership.ManagedByLabel: ownership.ManagedByValue}
	if err := b.Install(ctx, kube, namespace, labels); err != nil {
		return nil, fmt.Errorf("creating the %s secret: %w", ca.SecretName, err)
	}
	log.Info("plugged CA: secret created before istiod", "namespace", namespace, "secret", ca.SecretName, "root", b.Root.Subject)
	return b, nil
}

// Ready waits until istiod is available and injects sidecars.
func (m *Mesh) Ready(ctx context.Context) error { return m.Istio.WaitReady(ctx) }

// ChartsDir is the scenario's charts directory, else $MESHPROOF_ISTIO_CHARTS/<version>
// when it holds that version, else "" (the official chart repository).
func ChartsDir(c *scenario.Cluster) string {
	if c.Istio.Charts != "" {
		return c.Istio.Charts
	}
	if root := os.Getenv(ChartsEnv); root != "" {
		dir := filepath.Join(root, c.Istio.Version)
		if _, err := os.Stat(filepath.Join(dir, "istiod")); err == nil {
			return dir
		}
	}
	return ""
}
