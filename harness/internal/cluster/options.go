package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// DefaultName is the cluster name used when none is given.
const DefaultName = "meshproof"

// DefaultWaitTimeout bounds the wait for every node and every kube-system pod
// to become Ready after a cluster is created or connected to.
const DefaultWaitTimeout = 5 * time.Minute

// defaultPollInterval is how often readiness is re-checked while waiting.
const defaultPollInterval = 2 * time.Second

// Option configures a Kind or Existing provider, in the functional-option
// style of kind's own CreateOption. Options marked "kind only" are refused by
// NewExisting, since they have no meaning for a cluster meshproof did not
// create.
type Option func(*settings) error

// settings is what the options fill in; both providers embed it.
type settings struct {
	nodeImage     string
	rawConfig     []byte
	configFile    string
	reuse         bool
	deleteReused  bool
	waitTimeout   time.Duration
	pollInterval  time.Duration
	kubeconfigDir string
	logger        *slog.Logger

	// kindOnly names the kind-only options that were given, so that
	// NewExisting can say which one it refuses.
	kindOnly []string
}

func defaultSettings() settings {
	return settings{
		waitTimeout:  DefaultWaitTimeout,
		pollInterval: defaultPollInterval,
		logger:       slog.New(slog.DiscardHandler),
	}
}

func (s *settings) apply(opts []Option) error {
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(s); err != nil {
			return err
		}
	}
	if s.rawConfig != nil && s.configFile != "" {
		return errors.New("cluster options: both WithConfig and WithConfigFile were given; give the kind configuration one way only")
	}
	return nil
}

// WithNodeImage sets the kind node image (e.g. "kindest/node:v1.33.1"),
// which selects the Kubernetes version; it overrides any image in the kind
// configuration. Empty means kind's default image. Kind only.
func WithNodeImage(image string) Option {
	return func(s *settings) error {
		s.nodeImage = image
		s.kindOnly = append(s.kindOnly, "WithNodeImage")
		return nil
	}
}

// WithConfig sets the kind cluster configuration as raw YAML (kind.x-k8s.io
// v1alpha4 Cluster). The cluster name given to the provider wins over any
// name in the YAML. Kind only.
func WithConfig(rawYAML []byte) Option {
	return func(s *settings) error {
		if len(rawYAML) == 0 {
			return errors.New("WithConfig: the kind configuration is empty; leave the option out to use kind's default single-node cluster")
		}
		s.rawConfig = rawYAML
		s.kindOnly = append(s.kindOnly, "WithConfig")
		return nil
	}
}

// WithConfigFile sets the path of a kind cluster configuration file. Kind
// only.
func WithConfigFile(path string) Option {
	return func(s *settings) error {
		if path == "" {
			return errors.New("WithConfigFile: the path is empty")
		}
		s.configFile = path
		s.kindOnly = append(s.kindOnly, "WithConfigFile")
		return nil
	}
}

// WithReuse makes Create use a kind cluster of the same name if one already
// exists instead of failing. A reused cluster is not deleted by Destroy
// unless WithDeleteReused(true) is also given. Kind only.
func WithReuse(reuse bool) Option {
	return func(s *settings) error {
		s.reuse = reuse
		s.kindOnly = append(s.kindOnly, "WithReuse")
		return nil
	}
}

// WithDeleteReused makes Destroy delete the cluster even when Create reused
// it rather than created it. Kind only.
func WithDeleteReused(deleteReused bool) Option {
	return func(s *settings) error {
		s.deleteReused = deleteReused
		s.kindOnly = append(s.kindOnly, "WithDeleteReused")
		return nil
	}
}

// WithWaitTimeout bounds the wait for every node and kube-system pod to be
// Ready (default DefaultWaitTimeout).
func WithWaitTimeout(d time.Duration) Option {
	return func(s *settings) error {
		if d <= 0 {
			return fmt.Errorf("WithWaitTimeout: the timeout must be positive, got %s", d)
		}
		s.waitTimeout = d
		return nil
	}
}

// WithKubeconfigDir sets the directory (normally the run's directory) where
// the provider writes the cluster's kubeconfig, with mode 0600. The file is
// left in place by Destroy. Without this option a private temporary
// directory is used and removed by Destroy.
func WithKubeconfigDir(dir string) Option {
	return func(s *settings) error {
		if dir == "" {
			return errors.New("WithKubeconfigDir: the directory is empty")
		}
		s.kubeconfigDir = dir
		return nil
	}
}

// WithLogger sets where progress (kind's own messages included) is logged.
// The default discards it.
func WithLogger(logger *slog.Logger) Option {
	return func(s *settings) error {
		if logger == nil {
			return errors.New("WithLogger: the logger is nil")
		}
		s.logger = logger
		return nil
	}
}
