package rehearsal

import (
	"context"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/local/cluster"
)

// Cluster is a local cluster of real parts with a real istiod, for a
// program that creates the cluster itself and rehearses runs on it
// (WithCluster): typically a test's e2e-framework environment, which
// creates it as it creates any cluster of its own —
// envfuncs.CreateCluster(rehearsal.NewCluster(), "mesh") — and destroys it
// at the end (envfuncs.DestroyCluster). It is an e2e-framework cluster
// provider (support.E2EClusterProvider) that loads image archives.
type Cluster struct{ local *cluster.Cluster }

var _ support.E2EClusterProviderWithImageLoader = (*Cluster)(nil)

// NewCluster returns a local cluster that Create starts, building its
// parts from source on first use (cached in $HOME/.cache/meshproof). Of
// the options it takes WithLogger (the cluster's progress) and
// WithBuildLog; the others configure runs.
func NewCluster(opts ...Option) *Cluster {
	r := New(opts...)
	return &Cluster{local: cluster.New(cluster.WithIstiod(), cluster.WithLogger(r.logger), cluster.WithBuildLog(r.buildLog))}
}

// Create starts the cluster's parts and istiod's supervisor, and returns
// the kubeconfig's path; args must be empty.
func (c *Cluster) Create(ctx context.Context, args ...string) (string, error) {
	return c.local.Create(ctx, args...)
}

// CreateWithConfig is Create; configFile must be empty.
func (c *Cluster) CreateWithConfig(ctx context.Context, configFile string) (string, error) {
	return c.local.CreateWithConfig(ctx, configFile)
}

// Destroy stops every process of the cluster and removes its directory.
func (c *Cluster) Destroy(ctx context.Context) error { return c.local.Destroy(ctx) }

// WaitForControlPlane waits until the cluster's nodes are Ready.
func (c *Cluster) WaitForControlPlane(ctx context.Context, client klient.Client) error {
	return c.local.WaitForControlPlane(ctx, client)
}

// GetKubeconfig is the path of the cluster's kubeconfig ("" before Create).
func (c *Cluster) GetKubeconfig() string { return c.local.GetKubeconfig() }

// GenerateKubeconfig returns the kubeconfig's path; args must be empty.
func (c *Cluster) GenerateKubeconfig(args ...string) (string, error) {
	return c.local.GenerateKubeconfig(args...)
}

// KubernetesRestConfig is the admin REST config (nil before Create).
func (c *Cluster) KubernetesRestConfig() *rest.Config { return c.local.KubernetesRestConfig() }

// GetKubectlContext is the kubeconfig's only context.
func (c *Cluster) GetKubectlContext() string { return c.local.GetKubectlContext() }

// ExportLogs copies every part's log into dest.
func (c *Cluster) ExportLogs(ctx context.Context, dest string) error {
	return c.local.ExportLogs(ctx, dest)
}

// LoadImageArchive loads an image archive, as kind's nodes do.
func (c *Cluster) LoadImageArchive(ctx context.Context, archive string, args ...string) error {
	return c.local.LoadImageArchive(ctx, archive, args...)
}

// LoadImage fails: images are loaded as archives (LoadImageArchive).
func (c *Cluster) LoadImage(ctx context.Context, image string, args ...string) error {
	return c.local.LoadImage(ctx, image, args...)
}

// SetDefaults has nothing to default: NewCluster does.
func (c *Cluster) SetDefaults() support.E2EClusterProvider { return c }

// WithName names the cluster (in logs).
func (c *Cluster) WithName(name string) support.E2EClusterProvider {
	c.local.WithName(name)
	return c
}

// WithVersion has no effect: the parts are pinned releases.
func (c *Cluster) WithVersion(string) support.E2EClusterProvider { return c }

// WithPath has no effect: the parts are built from source.
func (c *Cluster) WithPath(string) support.E2EClusterProvider { return c }

// WithOpts applies e2e-framework cluster options to the cluster.
func (c *Cluster) WithOpts(opts ...support.ClusterOpts) support.E2EClusterProvider {
	for _, o := range opts {
		o(c)
	}
	return c
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.local.Name() }
