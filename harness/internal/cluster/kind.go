package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support"
	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	kindlog "sigs.k8s.io/kind/pkg/log"
)

var (
	_ support.E2EClusterProvider                = (*Kind)(nil)
	_ support.E2EClusterProviderWithImageLoader = (*Kind)(nil)
)

// kindProvider is the part of kind's *cluster.Provider that Kind uses; an
// interface so that unit tests can drive Kind's decisions without Docker.
type kindProvider interface {
	List() ([]string, error)
	Create(name string, options ...kindcluster.CreateOption) error
	Delete(name, explicitKubeconfigPath string) error
	KubeConfig(name string, internal bool) (string, error)
	ListInternalNodes(name string) ([]nodes.Node, error)
	CollectLogs(name, dir string) error
}

// Kind is an e2e-framework cluster provider that creates, reuses and deletes
// kind clusters through kind's Go library (no kind binary is run or
// installed). Create returns only when every node and every kube-system pod
// is Ready.
//
// kind's library calls cannot be cancelled: a context cancelled during
// Create, Destroy, ExportLogs or LoadImageArchive takes effect only between
// kind's steps. A Kind is not safe for concurrent use.
type Kind struct {
	settings
	name string

	check        runtimeCheck
	newProvider  func(kindcluster.ProviderOption, kindlog.Logger) kindProvider
	newClientset func(*rest.Config) (kubernetes.Interface, error)
	provider     kindProvider

	kubeconfigPath string
	tempDir        string // created by Create when no kubeconfig dir was given; removed by Destroy
	restConfig     *rest.Config
	created        bool // this Kind created the cluster
	reused         bool // the cluster existed and was reused
}

// NewKind returns a provider for the kind cluster called name (DefaultName
// if empty). Nothing is contacted until Create.
func NewKind(name string, opts ...Option) (*Kind, error) {
	if name == "" {
		name = DefaultName
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	k := &Kind{
		settings: defaultSettings(),
		name:     name,
		check:    checkContainerRuntime,
		newProvider: func(runtime kindcluster.ProviderOption, logger kindlog.Logger) kindProvider {
			return kindcluster.NewProvider(kindcluster.ProviderWithLogger(logger), runtime)
		},
		newClientset: func(rc *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(rc) },
	}
	if err := k.settings.apply(opts); err != nil {
		return nil, err
	}
	return k, nil
}

// Name is the cluster's name.
func (k *Kind) Name() string { return k.name }

// Reused reports whether Create found the cluster already there and used it
// instead of creating it.
func (k *Kind) Reused() bool { return k.reused }

// Ephemeral reports whether Destroy deletes the cluster: this provider
// created it, or reused it with WithDeleteReused(true). Whatever is on such
// a cluster goes with it.
func (k *Kind) Ephemeral() bool { return k.created || (k.reused && k.deleteReused) }

// ensureProvider runs the container runtime check once and builds kind's
// provider for the engine it found. Every operation that needs kind calls it
// first, so a missing engine is reported before any other work.
func (k *Kind) ensureProvider(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if k.provider != nil {
		return nil
	}
	runtime, err := k.check(ctx)
	if err != nil {
		return err
	}
	k.provider = k.newProvider(runtime, kindLogger{k.logger})
	return nil
}

// clusterLister lists kind clusters by name.
type clusterLister interface {
	List() ([]string, error)
}

// decideReuse says whether Create must reuse the cluster called name (true)
// or create it (false). An existing cluster without reuse is an error rather
// than a kind failure halfway through creation.
func decideReuse(l clusterLister, name string, reuse bool) (bool, error) {
	existing, err := l.List()
	if err != nil {
		return false, fmt.Errorf("list kind clusters: %w", err)
	}
	if !slices.Contains(existing, name) {
		return false, nil
	}
	if !reuse {
		return false, fmt.Errorf("kind cluster %q already exists: enable reuse to run against it, choose another name, or delete it (`kind delete cluster --name %s`)", name, name)
	}
	return true, nil
}

// Create creates the cluster, or with WithReuse uses an existing one of the
// same name, writes its kubeconfig (mode 0600) and waits until every node
// and kube-system pod is Ready. It returns the kubeconfig path. Calling it
// again after success returns the same path. args must be empty: they are
// kind CLI flags in e2e-framework's own provider, and here everything is set
// by options.
func (k *Kind) Create(ctx context.Context, args ...string) (string, error) {
	if err := k.ensureProvider(ctx); err != nil {
		return "", err
	}
	if len(args) > 0 {
		return "", fmt.Errorf("kind cluster %q: Create takes no CLI arguments (got %q); use this package's options instead", k.name, args)
	}
	if err := ValidateName(k.name); err != nil {
		return "", err
	}
	// A second call, e.g. after the readiness wait timed out, neither
	// creates nor re-decides: it only waits again.
	if !k.created && !k.reused {
		if err := k.createOrReuse(ctx); err != nil {
			return "", err
		}
	}
	if k.restConfig == nil {
		dir, err := k.kubeconfigDirectory()
		if err != nil {
			return "", err
		}
		if err := k.writeKubeconfig(filepath.Join(dir, k.name+".kubeconfig")); err != nil {
			return "", err
		}
	}
	cs, err := k.newClientset(k.restConfig)
	if err != nil {
		return "", fmt.Errorf("kind cluster %q: build a client: %w", k.name, err)
	}
	if err := waitUntilReady(ctx, cs, k.name, k.waitTimeout, k.pollInterval); err != nil {
		return "", err
	}
	return k.kubeconfigPath, nil
}

// createOrReuse creates the cluster, or marks it reused if it exists and
// reuse is enabled.
//
// The cluster counts as created before kind starts, so that Destroy deletes
// it whenever Create was called, even if kind failed or was interrupted
// half way (kind's own clean-up on failure does not run when the process is
// killed). kind's Create cannot be cancelled: if ctx ends while it runs,
// the cluster it made is deleted as soon as it returns.
func (k *Kind) createOrReuse(ctx context.Context) error {
	reuse, err := decideReuse(k.provider, k.name, k.reuse)
	if err != nil {
		return err
	}
	if reuse {
		k.reused = true
		k.logger.Info("reusing existing kind cluster", "cluster", k.name)
		return nil
	}
	dir, err := k.kubeconfigDirectory()
	if err != nil {
		return err
	}
	k.logger.Info("creating kind cluster", "cluster", k.name, "nodeImage", k.nodeImage)
	k.created = true
	kubeconfig := filepath.Join(dir, k.name+".kubeconfig")
	err = k.provider.Create(k.name, k.createOptions(kubeconfig)...)
	if ctx.Err() != nil {
		k.logger.Info("interrupted while kind created the cluster: deleting it", "cluster", k.name)
		if derr := k.provider.Delete(k.name, kubeconfig); derr != nil {
			return fmt.Errorf("create kind cluster %q: interrupted (%w), and deleting what kind made failed: %v; delete it with `kind delete cluster --name %s`", k.name, ctx.Err(), derr, k.name)
		}
		k.created = false
		return fmt.Errorf("create kind cluster %q: interrupted; the cluster kind made was deleted: %w", k.name, ctx.Err())
	}
	if err != nil {
		// kind deletes the nodes of a failed create itself (we never ask it
		// to retain them); Destroy's delete then finds nothing.
		return fmt.Errorf("create kind cluster %q: %w", k.name, err)
	}
	return nil
}

// createOptions translates the settings into kind's create options.
func (k *Kind) createOptions(kubeconfigPath string) []kindcluster.CreateOption {
	// kind merges the new cluster into ~/.kube/config unless given a path;
	// a test run must not touch the user's file.
	opts := []kindcluster.CreateOption{
		kindcluster.CreateWithKubeconfigPath(kubeconfigPath),
		kindcluster.CreateWithDisplayUsage(false),
		kindcluster.CreateWithDisplaySalutation(false),
	}
	if k.nodeImage != "" {
		opts = append(opts, kindcluster.CreateWithNodeImage(k.nodeImage))
	}
	switch {
	case k.rawConfig != nil:
		opts = append(opts, kindcluster.CreateWithRawConfig(k.rawConfig))
	case k.configFile != "":
		opts = append(opts, kindcluster.CreateWithConfigFile(k.configFile))
	}
	return opts
}

// kubeconfigDirectory returns the configured kubeconfig directory, or a
// private temporary one, creating it if needed.
func (k *Kind) kubeconfigDirectory() (string, error) {
	if k.kubeconfigDir != "" {
		if err := os.MkdirAll(k.kubeconfigDir, 0o700); err != nil {
			return "", fmt.Errorf("create the kubeconfig directory: %w", err)
		}
		return k.kubeconfigDir, nil
	}
	if k.tempDir == "" {
		dir, err := os.MkdirTemp("", "meshproof-kubeconfig-")
		if err != nil {
			return "", fmt.Errorf("create a temporary kubeconfig directory: %w", err)
		}
		k.tempDir = dir
	}
	return k.tempDir, nil
}

// writeKubeconfig fetches the cluster's external kubeconfig from kind,
// writes it to path with mode 0600 and loads the REST config from it.
func (k *Kind) writeKubeconfig(path string) error {
	raw, err := k.provider.KubeConfig(k.name, false)
	if err != nil {
		return fmt.Errorf("get kubeconfig of kind cluster %q: %w", k.name, err)
	}
	if _, err := writeKubeconfig(filepath.Dir(path), filepath.Base(path), []byte(raw)); err != nil {
		return err
	}
	rc, err := clientcmd.RESTConfigFromKubeConfig([]byte(raw))
	if err != nil {
		return fmt.Errorf("kubeconfig of kind cluster %q: %w", k.name, err)
	}
	k.kubeconfigPath, k.restConfig = path, rc
	return nil
}

// CreateWithConfig is Create with the kind configuration read from
// configFile (as WithConfigFile); an empty path means kind's default.
func (k *Kind) CreateWithConfig(ctx context.Context, configFile string) (string, error) {
	if err := k.ensureProvider(ctx); err != nil {
		return "", err
	}
	if configFile != "" {
		if k.rawConfig != nil {
			return "", fmt.Errorf("kind cluster %q: CreateWithConfig(%q) conflicts with the WithConfig option; give the configuration one way only", k.name, configFile)
		}
		k.configFile = configFile
	}
	return k.Create(ctx)
}

// WaitForControlPlane waits, within the wait timeout, until every node and
// every kube-system pod of the cluster client talks to is Ready.
func (k *Kind) WaitForControlPlane(ctx context.Context, client klient.Client) error {
	cs, err := k.newClientset(client.RESTConfig())
	if err != nil {
		return fmt.Errorf("kind cluster %q: build a client: %w", k.name, err)
	}
	return waitUntilReady(ctx, cs, k.name, k.waitTimeout, k.pollInterval)
}

// Destroy deletes the cluster if this Kind created it, or if it was reused
// and WithDeleteReused(true) was given; a reused cluster is otherwise kept.
// A temporary kubeconfig directory is removed; a kubeconfig in the
// directory given by WithKubeconfigDir stays (kind removes the cluster's
// entries from it on deletion).
func (k *Kind) Destroy(ctx context.Context) error {
	switch {
	case !k.created && !k.reused:
		k.logger.Info("nothing to delete: this provider did not create or reuse a cluster", "cluster", k.name)
		return k.removeTempDir()
	case k.reused && !k.deleteReused:
		k.logger.Info("keeping reused kind cluster", "cluster", k.name)
		return k.removeTempDir()
	}
	if err := k.ensureProvider(ctx); err != nil {
		return err
	}
	k.logger.Info("deleting kind cluster", "cluster", k.name)
	if err := k.provider.Delete(k.name, k.kubeconfigPath); err != nil {
		return fmt.Errorf("delete kind cluster %q: %w", k.name, err)
	}
	k.created, k.reused = false, false
	return k.removeTempDir()
}

func (k *Kind) removeTempDir() error {
	if k.tempDir == "" {
		return nil
	}
	if err := os.RemoveAll(k.tempDir); err != nil {
		return fmt.Errorf("remove temporary kubeconfig directory: %w", err)
	}
	k.tempDir = ""
	return nil
}

// ExportLogs writes kind's logs of every node (journal, kubelet,
// containerd, container logs under /var/log, the node image's versions) into
// dest, one folder per node, as `kind export logs` does.
func (k *Kind) ExportLogs(ctx context.Context, dest string) error {
	if err := k.ensureProvider(ctx); err != nil {
		return err
	}
	if err := k.provider.CollectLogs(k.name, dest); err != nil {
		return fmt.Errorf("export logs of kind cluster %q to %s: %w", k.name, dest, err)
	}
	return nil
}

// LoadImageArchive loads the image archive (a `docker save` / OCI tarball)
// into the containerd of every node of the cluster, in parallel, as `kind
// load image-archive` does. args, if given, name the nodes to load into
// instead of all. Every node's failure is reported.
func (k *Kind) LoadImageArchive(ctx context.Context, archivePath string, args ...string) error {
	if err := k.ensureProvider(ctx); err != nil {
		return err
	}
	info, err := os.Stat(archivePath)
	if err != nil {
		return fmt.Errorf("load image archive into kind cluster %q: %w", k.name, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("load image archive into kind cluster %q: %s is not a regular file", k.name, archivePath)
	}
	all, err := k.provider.ListInternalNodes(k.name)
	if err != nil {
		return fmt.Errorf("list nodes of kind cluster %q: %w", k.name, err)
	}
	selected, err := selectNodes(k.name, all, args)
	if err != nil {
		return err
	}
	return loadArchiveIntoNodes(ctx, archivePath, selected)
}

// selectNodes picks the nodes named in want, or all nodes if want is empty.
func selectNodes(clusterName string, all []nodes.Node, want []string) ([]nodes.Node, error) {
	if len(all) == 0 {
		return nil, fmt.Errorf("kind cluster %q has no nodes: does it exist?", clusterName)
	}
	if len(want) == 0 {
		return all, nil
	}
	byName := map[string]nodes.Node{}
	var names []string
	for _, n := range all {
		byName[n.String()] = n
		names = append(names, n.String())
	}
	var selected []nodes.Node
	for _, name := range want {
		n, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("kind cluster %q has no node %q; its nodes are %s", clusterName, name, strings.Join(names, ", "))
		}
		selected = append(selected, n)
	}
	return selected, nil
}

// loadArchiveIntoNodes streams the archive into each node concurrently, each
// from its own open file, and joins the failures.
func loadArchiveIntoNodes(ctx context.Context, archivePath string, targets []nodes.Node) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, node := range targets {
		wg.Go(func() {
			f, err := os.Open(archivePath)
			if err != nil {
				errs[i] = fmt.Errorf("node %s: %w", node, err)
				return
			}
			defer f.Close()
			if err := nodeutils.LoadImageArchive(node, f); err != nil {
				errs[i] = fmt.Errorf("node %s: load %s: %w", node, archivePath, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// LoadImage is not supported: it would need the engine's image store
// (`docker save`), while meshproof builds its images as archives. Save the
// image to a file and use LoadImageArchive.
func (k *Kind) LoadImage(ctx context.Context, image string, args ...string) error {
	return fmt.Errorf("kind cluster %q: loading image %q from the container engine: %w; save it to an archive and use LoadImageArchive",
		k.name, image, errors.ErrUnsupported)
}

// GetKubeconfig is the path of the kubeconfig Create wrote ("" before).
func (k *Kind) GetKubeconfig() string { return k.kubeconfigPath }

// GenerateKubeconfig fetches the kubeconfig from kind again and rewrites it
// (mode 0600) at the same path. args must be empty.
func (k *Kind) GenerateKubeconfig(args ...string) (string, error) {
	ctx := context.Background()
	if err := k.ensureProvider(ctx); err != nil {
		return "", err
	}
	if len(args) > 0 {
		return "", fmt.Errorf("kind cluster %q: GenerateKubeconfig takes no CLI arguments (got %q)", k.name, args)
	}
	path := k.kubeconfigPath
	if path == "" {
		dir, err := k.kubeconfigDirectory()
		if err != nil {
			return "", err
		}
		path = filepath.Join(dir, k.name+".kubeconfig")
	}
	if err := k.writeKubeconfig(path); err != nil {
		return "", err
	}
	return path, nil
}

// GetKubectlContext is the kubeconfig context kind names the cluster by.
func (k *Kind) GetKubectlContext() string { return "kind-" + k.name }

// KubernetesRestConfig is the REST config of the cluster (nil before
// Create).
func (k *Kind) KubernetesRestConfig() *rest.Config { return k.restConfig }

// SetDefaults gives the cluster DefaultName if it has none.
func (k *Kind) SetDefaults() support.E2EClusterProvider {
	if k.name == "" {
		k.name = DefaultName
	}
	return k
}

// WithName renames the cluster; call it before Create, which validates the
// name.
func (k *Kind) WithName(name string) support.E2EClusterProvider {
	k.name = name
	return k
}

// WithVersion selects the Kubernetes version, as
// WithNodeImage("kindest/node:"+version); kind itself is the version
// compiled into meshproof.
func (k *Kind) WithVersion(version string) support.E2EClusterProvider {
	if version != "" {
		k.nodeImage = "kindest/node:" + version
	}
	return k
}

// WithPath has no effect: no kind binary is used.
func (k *Kind) WithPath(string) support.E2EClusterProvider { return k }

// WithOpts applies e2e-framework cluster options.
func (k *Kind) WithOpts(opts ...support.ClusterOpts) support.E2EClusterProvider {
	for _, o := range opts {
		o(k)
	}
	return k
}
