package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/e2e-framework/klient"
	"sigs.k8s.io/e2e-framework/support"
)

var _ support.E2EClusterProvider = (*Existing)(nil)

// Existing is an e2e-framework cluster provider for a cluster meshproof did
// not create, reached through a kubeconfig context. It never deletes the
// cluster: Destroy does nothing to it. What a run created there is removed
// by its run-id label only, with deploy.Sweep(deploy.RunSelector(runID))
// (package harness/internal/deploy), which looks across every resource type the API
// server reports.
type Existing struct {
	settings
	name        string
	contextName string
	source      string // the user's kubeconfig path
	config      *clientcmdapi.Config
	restConfig  *rest.Config

	newClientset   func(*rest.Config) (kubernetes.Interface, error)
	kubeconfigPath string
	tempDir        string
}

// NewExisting loads the kubeconfig the way kubectl does and selects
// contextName in it (its current context if empty), failing early if no
// file is found, or the context, or the context's cluster or user is
// missing; errors name the file(s) and the context. An empty
// kubeconfigPath means $KUBECONFIG (a list of files, merged, the first to
// set a value wins) and, when that is unset, ~/.kube/config. Kind-only
// options are refused. Nothing is contacted until Create or
// WaitForControlPlane, and the user's files are only read.
func NewExisting(kubeconfigPath, contextName string, opts ...Option) (*Existing, error) {
	e := &Existing{
		settings:     defaultSettings(),
		source:       kubeconfigPath,
		newClientset: func(rc *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(rc) },
	}
	if err := e.settings.apply(opts); err != nil {
		return nil, err
	}
	if len(e.kindOnly) > 0 {
		return nil, fmt.Errorf("existing cluster: %s only apply to kind clusters that meshproof creates", strings.Join(e.kindOnly, ", "))
	}
	cfg, source, err := loadKubeconfig(kubeconfigPath)
	if err != nil {
		return nil, err
	}
	kubeconfigPath = source
	e.source = source
	if contextName == "" {
		contextName = cfg.CurrentContext
		if contextName == "" {
			return nil, fmt.Errorf("existing cluster: kubeconfig %s has no current context; name the context to use", kubeconfigPath)
		}
	}
	kctx, ok := cfg.Contexts[contextName]
	if !ok {
		return nil, fmt.Errorf("existing cluster: kubeconfig %s has no context %q (it has: %s)", kubeconfigPath, contextName, strings.Join(contextNames(cfg), ", "))
	}
	if _, ok := cfg.Clusters[kctx.Cluster]; !ok {
		return nil, fmt.Errorf("existing cluster: context %q in %s names cluster %q, which the kubeconfig does not define", contextName, kubeconfigPath, kctx.Cluster)
	}
	if _, ok := cfg.AuthInfos[kctx.AuthInfo]; !ok {
		return nil, fmt.Errorf("existing cluster: context %q in %s names user %q, which the kubeconfig does not define", contextName, kubeconfigPath, kctx.AuthInfo)
	}
	// Make the file self-contained for the copy Create writes elsewhere:
	// relative paths are resolved against the original file, certificate
	// files are inlined, and only the chosen context is kept, as the
	// current one, so e2e-framework's client (which follows the current
	// context) talks to the right cluster.
	// (The loading rules resolved relative paths against the file each
	// entry came from.)
	cfg.CurrentContext = contextName
	if err := clientcmdapi.MinifyConfig(cfg); err != nil {
		return nil, fmt.Errorf("existing cluster: kubeconfig %s: %w", kubeconfigPath, err)
	}
	if err := clientcmdapi.FlattenConfig(cfg); err != nil {
		return nil, fmt.Errorf("existing cluster: kubeconfig %s: inline certificate files: %w", kubeconfigPath, err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*cfg, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("existing cluster: context %q in %s: %w", contextName, kubeconfigPath, err)
	}
	e.name, e.contextName, e.config, e.restConfig = kctx.Cluster, contextName, cfg, rc
	return e, nil
}

// loadKubeconfig reads the kubeconfig through client-go's loading rules
// and returns it with a description of where it came from, for errors: the
// explicit path, or the $KUBECONFIG list, or ~/.kube/config. Relative paths
// inside are resolved against the file that holds them.
func loadKubeconfig(explicitPath string) (*clientcmdapi.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	// The default rules migrate ~/.kube/.kubeconfig to ~/.kube/config by
	// writing the latter: a run only reads the user's files.
	rules.MigrationRules = nil
	var source string
	switch env := os.Getenv(clientcmd.RecommendedConfigPathEnvVar); {
	case explicitPath != "":
		rules.ExplicitPath = explicitPath
		source = explicitPath
		if _, err := os.Stat(explicitPath); err != nil {
			return nil, "", fmt.Errorf("existing cluster: load kubeconfig: %w", err) // names the file
		}
	case env != "":
		source = fmt.Sprintf("$%s (%s)", clientcmd.RecommendedConfigPathEnvVar, env)
	default:
		// Resolved now, not at package initialisation as client-go's
		// RecommendedHomeFile is, so that $HOME set later counts.
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, "", fmt.Errorf("existing cluster: no kubeconfig named, $%s is unset and the home directory is unknown: %w", clientcmd.RecommendedConfigPathEnvVar, err)
		}
		rules.Precedence = []string{filepath.Join(home, clientcmd.RecommendedHomeDir, clientcmd.RecommendedFileName)}
		source = rules.Precedence[0]
	}
	if explicitPath == "" && !slices.ContainsFunc(rules.Precedence, fileExists) {
		return nil, "", fmt.Errorf("existing cluster: no kubeconfig found: %s; name one with existing.kubeconfig or set $%s", describeMissing(rules.Precedence), clientcmd.RecommendedConfigPathEnvVar)
	}
	cfg, err := rules.Load()
	if err != nil {
		return nil, "", fmt.Errorf("existing cluster: load kubeconfig %s: %w", source, err)
	}
	return cfg, source, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func describeMissing(paths []string) string {
	if len(paths) == 1 {
		return paths[0] + " does not exist"
	}
	return "none of " + strings.Join(paths, ", ") + " exists"
}

func contextNames(cfg *clientcmdapi.Config) []string {
	names := make([]string, 0, len(cfg.Contexts))
	for name := range cfg.Contexts {
		names = append(names, name)
	}
	if len(names) == 0 {
		return []string{"no contexts"}
	}
	sort.Strings(names)
	return names
}

// Create creates nothing: it writes a self-contained kubeconfig holding only
// the chosen context (mode 0600) and returns its path. args must be empty.
// Call WaitForControlPlane to check that the cluster is ready.
func (e *Existing) Create(ctx context.Context, args ...string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if len(args) > 0 {
		return "", fmt.Errorf("existing cluster: Create takes no arguments (got %q)", args)
	}
	if e.kubeconfigPath != "" {
		return e.kubeconfigPath, nil
	}
	data, err := clientcmd.Write(*e.config)
	if err != nil {
		return "", fmt.Errorf("existing cluster: encode kubeconfig: %w", err)
	}
	dir := e.kubeconfigDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "meshproof-kubeconfig-"); err != nil {
			return "", fmt.Errorf("create a temporary kubeconfig directory: %w", err)
		}
		e.tempDir = dir
	}
	path, err := writeKubeconfig(dir, "existing.kubeconfig", data)
	if err != nil {
		return "", err
	}
	e.kubeconfigPath = path
	return path, nil
}

// CreateWithConfig is Create; a configuration file has no meaning for an
// existing cluster and is refused.
func (e *Existing) CreateWithConfig(ctx context.Context, configFile string) (string, error) {
	if configFile != "" {
		return "", fmt.Errorf("existing cluster: a cluster configuration (%s) cannot be applied to a cluster meshproof does not create", configFile)
	}
	return e.Create(ctx)
}

// WaitForControlPlane waits, within the wait timeout, until every node and
// every kube-system pod is Ready.
func (e *Existing) WaitForControlPlane(ctx context.Context, client klient.Client) error {
	rc := e.restConfig
	if client != nil {
		rc = client.RESTConfig()
	}
	cs, err := e.newClientset(rc)
	if err != nil {
		return fmt.Errorf("existing cluster %q: build a client: %w", e.name, err)
	}
	return waitUntilReady(ctx, cs, e.name, e.waitTimeout, e.pollInterval)
}

// Destroy never deletes the cluster; it says so in the log and removes only
// the temporary kubeconfig directory, if Create made one. Remove the run's
// objects with deploy.Sweep(deploy.RunSelector(runID)).
func (e *Existing) Destroy(ctx context.Context) error {
	e.logger.Info("not deleting the existing cluster: meshproof only removes the objects of its run, by label", "context", e.contextName)
	if e.tempDir == "" {
		return nil
	}
	if err := os.RemoveAll(e.tempDir); err != nil {
		return fmt.Errorf("remove temporary kubeconfig directory: %w", err)
	}
	e.tempDir, e.kubeconfigPath = "", ""
	return nil
}

// ExportLogs is not supported: the nodes of an existing cluster are not
// reachable the way kind's containers are. The error wraps
// errors.ErrUnsupported so callers can tell it from a failure.
func (e *Existing) ExportLogs(ctx context.Context, dest string) error {
	return fmt.Errorf("existing cluster (context %q): node logs cannot be exported: %w", e.contextName, errors.ErrUnsupported)
}

// GetKubeconfig is the path of the kubeconfig Create wrote ("" before).
func (e *Existing) GetKubeconfig() string { return e.kubeconfigPath }

// GenerateKubeconfig writes the kubeconfig as Create does. args must be
// empty.
func (e *Existing) GenerateKubeconfig(args ...string) (string, error) {
	return e.Create(context.Background(), args...)
}

// GetKubectlContext is the kubeconfig context in use.
func (e *Existing) GetKubectlContext() string { return e.contextName }

// KubernetesRestConfig is the REST config of the chosen context.
func (e *Existing) KubernetesRestConfig() *rest.Config { return e.restConfig }

// SetDefaults has nothing to default.
func (e *Existing) SetDefaults() support.E2EClusterProvider { return e }

// WithName has no effect: the cluster is the one the context names.
func (e *Existing) WithName(string) support.E2EClusterProvider { return e }

// WithVersion has no effect: the cluster's version is what it is.
func (e *Existing) WithVersion(string) support.E2EClusterProvider { return e }

// WithPath has no effect: no binary is used.
func (e *Existing) WithPath(string) support.E2EClusterProvider { return e }

// WithOpts applies e2e-framework cluster options.
func (e *Existing) WithOpts(opts ...support.ClusterOpts) support.E2EClusterProvider {
	for _, o := range opts {
		o(e)
	}
	return e
}

// Name is the name of the cluster entry the context points at.
func (e *Existing) Name() string { return e.name }
