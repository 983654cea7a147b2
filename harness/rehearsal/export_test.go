package rehearsal

import (
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/probe"
)

// TransportFor is the pod transport a run of r on lc gets, for tests that
// exec without a run.
func TransportFor(r *Rehearsal, lc *cluster.Cluster) (probe.Execer, error) {
	r.register(lc)
	return r.transport(lc.KubernetesRestConfig())
}

// Borrow is lc as a Cluster, for WithCluster.
func Borrow(lc *cluster.Cluster) *Cluster { return &Cluster{local: lc} }
