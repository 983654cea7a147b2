package engine

import (
	"context"
	"os"
	"path/filepath"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/scenario"
)

// MeshControl is what the upgrade and rotateRoot steps need of the Istio
// installation. *istio.Installer satisfies it; the engine names only this
// interface so that it does not depend on Helm.
type MeshControl interface {
	// Upgrade upgrades the control plane in place to toVersion; chartsDir
	// holds that version's base/ and istiod/ charts ("" for the official
	// repository).
	Upgrade(ctx context.Context, toVersion, chartsDir string) error
	// InstallCanary installs toVersion's istiod as revision next to the
	// current control plane.
	InstallCanary(ctx context.Context, revision, toVersion, chartsDir string) error
	// RelabelNamespaces points namespaces at revision's injector.
	RelabelNamespaces(ctx context.Context, revision string, namespaces ...string) error
	// RemoveRevision uninstalls revision's istiod; removing the old one
	// after InstallCanary completes the canary.
	RemoveRevision(ctx context.Context, revision string) error
	// WaitReady waits until every control plane serves and injects: its
	// istiod rolled out (no pod of an older ReplicaSet left, as the old
	// istiod stays Available through an in-place upgrade) and its
	// injector gives pods the proxy of its version.
	WaitReady(ctx context.Context) error
	// RestartControlPlane restarts istiod and waits for its rollout; istiod
	// reads the plugged CA when it starts.
	RestartControlPlane(ctx context.Context) error
	// Revision is the current control plane's revision ("" for default).
	Revision() string
	// Version is the current control plane's Istio version.
	Version() string
	// Namespace is istiod's namespace, where the cacerts Secret lives.
	Namespace() string
	// MultiRoot reports whether istiod and the proxies were configured for
	// several trust roots (ISTIO_MULTIROOT_MESH, PROXY_CONFIG_XDS_AGENT).
	MultiRoot() bool
}

// meshState is what the engine knows of the mesh beyond the API server: how
// to change its control plane, and the plugged CA it runs with.
type meshState struct {
	control   MeshControl
	pluggedCA *ca.Bundle
}

// WithMeshControl lets upgrade and rotateRoot steps change the mesh.
func WithMeshControl(m MeshControl) Option { return func(e *Engine) { e.mesh.control = m } }

// WithPluggedCA is the CA the cacerts Secret was created from; a rotateRoot
// step checks that the Secret still holds it before replacing it. Without
// it the step trusts what the Secret holds.
func WithPluggedCA(b *ca.Bundle) Option { return func(e *Engine) { e.mesh.pluggedCA = b } }

// PluggedCA is the mesh's current plugged CA: the one given with
// WithPluggedCA, or the new one after a rotateRoot step replaced it. Its
// RootKey is set only for a CA the engine generated.
func (e *Engine) PluggedCA() *ca.Bundle { return e.mesh.pluggedCA }

// chartsEnv names a directory of Istio charts, <dir>/<version>/{base,istiod};
// harness/internal/mesh uses the same variable for the initial install.
const chartsEnv = istiocharts.Env

// upgradeCharts is the directory of the upgrade's target charts: the
// step's own, else $MESHPROOF_ISTIO_CHARTS/<version> when that holds the
// version (air-gapped machines), else "" for the official repository.
func upgradeCharts(u *scenario.UpgradeStep) string {
	if u.Charts != "" {
		return u.Charts
	}
	if root := os.Getenv(chartsEnv); root != "" {
		dir := filepath.Join(root, u.To)
		if _, err := os.Stat(filepath.Join(dir, "istiod")); err == nil {
			return dir
		}
	}
	return ""
}

// inMeshWorkloads are the names of the workloads with a sidecar.
func (e *Engine) inMeshWorkloads() []string {
	var out []string
	for _, w := range e.suite.Fixtures.Workloads {
		if w.InMesh() {
			out = append(out, w.Name)
		}
	}
	return out
}

// meshNamespaces are the namespaces holding in-mesh workloads, each once.
func (e *Engine) meshNamespaces() []string {
	seen := map[string]bool{}
	var out []string
	for _, w := range e.suite.Fixtures.Workloads {
		if w.InMesh() && !seen[w.Namespace] {
			seen[w.Namespace] = true
			out = append(out, w.Namespace)
		}
	}
	return out
}
