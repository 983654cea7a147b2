package meshtest

import (
	"log/slog"
	"testing"

	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Run runs the scenario file as subtests of t, one per scenario with one
// per step (see the package doc), and tears down what it created when t
// ends. Without options it runs on the clusters the file names (kind
// clusters need Docker); Rehearse runs it without Docker, WithKubeconfig on
// an existing cluster. An invalid file fails t with every problem at its
// file:line:col.
func Run(t *testing.T, file string, opts ...Option) {
	t.Helper()
	set := newSettings(opts)
	suite, err := scenario.LoadFile(file)
	if err != nil {
		t.Fatalf("meshproof: %v", err)
	}
	if set.existing && set.rehearse {
		t.Fatal("meshproof: Rehearse and WithKubeconfig exclude each other: a rehearsal runs on a local cluster of its own")
	}
	if set.envCluster != "" {
		t.Fatal("meshproof: WithEnvCluster names a cluster of an e2e-framework environment: use it with Feature")
	}
	where := fileClusters
	switch {
	case set.rehearse:
		where = rehearsalTarget(nil)
	case set.existing:
		if err := useExisting(suite, file, set.kubeconfig, set.kubeContext); err != nil {
			t.Fatalf("meshproof: %v", err)
		}
	}
	s, err := newSession(t.Context(), t, file, suite, set, where)
	if err != nil {
		t.Fatalf("meshproof: %v", err)
	}
	for _, sc := range s.r.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) { s.scenario(t, sc) })
	}
}

// fileClusters runs on the clusters the file names, as meshproof run does.
func fileClusters(*scenario.Suite, *slog.Logger, *session) ([]run.Option, error) { return nil, nil }
