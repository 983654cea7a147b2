package meshtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/envconf"
	"sigs.k8s.io/e2e-framework/pkg/envfuncs"
	"sigs.k8s.io/e2e-framework/pkg/features"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Feature is the scenario file as an e2e-framework feature, named after the
// file, for env.Test: it runs on the cluster the environment created (see
// WithEnvCluster), treated as an existing cluster — meshproof holds its
// Lease, records what it creates in its ledger, removes only that at the
// feature's teardown and never deletes the cluster. Each scenario is an
// assessment with a subtest per step, named as Run names them. The
// environment's Finish destroys the cluster as usual.
//
// Use a Feature in one env.Test; it is set up by its first scenario and
// torn down by its Teardown step (or, if the feature ends early, when its
// test ends).
func Feature(file string, opts ...Option) features.Feature {
	set := newSettings(opts)
	b := features.New(filepath.Base(file))
	suite, err := scenario.LoadFile(file)
	var scenarios []*scenario.Scenario
	if err == nil {
		scenarios, err = run.Select(suite, set.labelFilter)
	}
	if err == nil && set.existing {
		err = errors.New("WithKubeconfig: a Feature runs on the environment's cluster (WithEnvCluster, or its kubeconfig)")
	}
	var s *session
	b = b.Setup(func(ctx context.Context, t *testing.T, cfg *envconf.Config) context.Context {
		t.Helper()
		if err != nil {
			t.Fatalf("meshproof: %v", err)
		}
		where, werr := envTarget(ctx, cfg, suite, file, set)
		if werr != nil {
			t.Fatalf("meshproof: %v", werr)
		}
		var serr error
		if s, serr = newSession(t.Context(), t, file, suite, set, where); serr != nil {
			t.Fatalf("meshproof: %v", serr)
		}
		return ctx
	})
	for _, sc := range scenarios {
		b = b.Assess(sc.Name, func(ctx context.Context, t *testing.T, _ *envconf.Config) context.Context {
			if s == nil {
				t.Skip("not run: the feature's setup failed")
			}
			s.scenario(t, sc)
			return ctx
		})
	}
	// The session's t.Cleanup tears the run down when the feature's test
	// ends; the Teardown step does it in e2e-framework's order, before the
	// feature's other teardown steps and the environment's Finish.
	b = b.Teardown(func(ctx context.Context, _ *testing.T, _ *envconf.Config) context.Context {
		if s != nil {
			s.finishOnce()
		}
		return ctx
	})
	return b.Feature()
}

// envTarget points the run at the environment's cluster: the one it created
// under set.envCluster, else its kubeconfig.
func envTarget(ctx context.Context, cfg *envconf.Config, suite *scenario.Suite, file string, set settings) (target, error) {
	if set.envCluster == "" {
		if set.rehearse {
			return nil, errors.New("Rehearse in a Feature rehearses on the environment's cluster: create it as a rehearsal.Cluster (envfuncs.CreateCluster(rehearsal.NewCluster(), name)) and name it with WithEnvCluster(name)")
		}
		if cfg.KubeconfigFile() == "" {
			return nil, errors.New("the e2e-framework environment has no kubeconfig (envconf.Config.KubeconfigFile) and WithEnvCluster names no cluster of it")
		}
		return fileClusters, useExisting(suite, file, cfg.KubeconfigFile(), cfg.KubeContext())
	}
	p, ok := envfuncs.GetClusterFromContext(ctx, set.envCluster)
	if !ok {
		return nil, fmt.Errorf("the e2e-framework environment has no cluster named %q in its context (create it in env.Setup with envfuncs.CreateCluster(provider, %q))", set.envCluster, set.envCluster)
	}
	if rc, ok := p.(*rehearsal.Cluster); ok {
		return rehearsalTarget(rc), nil
	}
	if set.rehearse {
		return nil, fmt.Errorf("Rehearse: the environment's cluster %q is a %T, not a rehearsal.Cluster", set.envCluster, p)
	}
	if n := len(usedClusters(suite)); n > 1 {
		return nil, fmt.Errorf("%s uses %d clusters; the environment's cluster %q can stand for one only", file, n, set.envCluster)
	}
	return func(*scenario.Suite, *slog.Logger, *session) ([]run.Option, error) {
		return []run.Option{run.WithProviders(func(*scenario.Cluster, string, *slog.Logger) (support.E2EClusterProvider, error) {
			return envCluster(p), nil
		})}, nil
	}, nil
}

// envCluster is a provider the environment created, as a run uses it: Create
// returns its kubeconfig, Destroy leaves it to the environment, and image
// archives load through it where it can (kind).
func envCluster(p support.E2EClusterProvider) support.E2EClusterProvider {
	if l, ok := p.(support.E2EClusterProviderWithImageLoader); ok {
		return borrowedLoader{borrowed{l}, l}
	}
	return borrowed{p}
}

type borrowed struct{ support.E2EClusterProvider }

func (b borrowed) Create(context.Context, ...string) (string, error) {
	if k := b.GetKubeconfig(); k != "" {
		return k, nil
	}
	return "", errors.New("the environment's cluster has no kubeconfig: was it created?")
}

func (borrowed) Destroy(context.Context) error { return nil }

type borrowedLoader struct {
	borrowed
	loader support.E2EClusterProviderWithImageLoader
}

func (b borrowedLoader) LoadImage(ctx context.Context, image string, args ...string) error {
	return b.loader.LoadImage(ctx, image, args...)
}

func (b borrowedLoader) LoadImageArchive(ctx context.Context, archive string, args ...string) error {
	return b.loader.LoadImageArchive(ctx, archive, args...)
}
