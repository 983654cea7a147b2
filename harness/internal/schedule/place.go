// Package schedule decides which scenarios of a file may run at the same
// time, and keeps them apart while they do. A scenario whose policies
// touch only its own namespaces (namespace- and workload-scoped
// PeerAuthentications, DestinationRules on its own services) is isolated:
// it gets its own copy of the fixtures it uses, in namespaces named from
// the run and the scenario (Namespace, Isolate), and runs beside others
// under a cluster's shared Lock. A scenario that changes what every
// namespace shares — a mesh-scope PeerAuthentication, a mesh-wide
// DestinationRule, anything in Istio's root namespace, rotateRoot (which
// restarts istiod), upgrade — runs alone, under the exclusive Lock, on
// the fixtures' own namespaces. Build orders them (isolated ones longest
// first, then the ones that run alone) and says why each waits; Shard
// splits a file's scenarios across CI jobs.
//
// It decides from the scenario file alone, so `meshproof plan` shows the
// same schedule a run follows.
package schedule

import (
	"fmt"
	"time"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Placement is where and with whom one scenario runs.
type Placement struct {
	Scenario *scenario.Scenario
	// Isolated scenarios run in namespaces of their own, beside others.
	Isolated bool
	// Alone says why a scenario that is not isolated runs alone: the
	// step, where it is written, and what it changes that others share.
	Alone string
	// Estimate is roughly how long the scenario takes (observe windows,
	// rotations, probe rounds), which orders the isolated ones longest
	// first; it is never a bound.
	Estimate time.Duration
}

// Place decides how sc, a scenario of s, may run.
func Place(s *scenario.Suite, sc *scenario.Scenario) Placement {
	p := Placement{Scenario: sc, Estimate: estimate(s, sc)}
	p.Alone = sharedState(s, sc)
	p.Isolated = p.Alone == ""
	return p
}

// sharedState is why sc changes state every namespace shares, naming the
// first step that does and where it is written, or "" when it touches
// only its own namespaces.
func sharedState(s *scenario.Suite, sc *scenario.Scenario) string {
	own := map[string]bool{}
	for _, w := range s.Fixtures.Workloads {
		own[w.Namespace] = true
	}
	for i := range sc.Steps {
		st := &sc.Steps[i]
		at := fmt.Sprintf("step %q (%s)", st.Name, st.Source.Position)
		switch st.Kind() {
		case scenario.KindUpgrade:
			return at + " upgrades Istio, which every namespace's sidecars use"
		case scenario.KindRotateRoot:
			return at + " rotates the mesh's root CA and restarts istiod"
		}
		m := st.Policies()
		if m == nil {
			continue
		}
		for _, pa := range m.PeerAuthentications {
			switch {
			case pa.Scope == scenario.ScopeMesh:
				return fmt.Sprintf("%s applies a mesh-scope PeerAuthentication (%s), which every namespace follows", at, pa.Source.Position)
			case pa.Namespace == scenario.IstioRootNamespace:
				return fmt.Sprintf("%s applies a PeerAuthentication in Istio's root namespace %s (%s), which every namespace follows", at, pa.Namespace, pa.Source.Position)
			case !own[pa.Namespace]:
				return fmt.Sprintf("%s applies a PeerAuthentication in namespace %s (%s), which holds none of the fixtures and cannot be copied", at, pa.Namespace, pa.Source.Position)
			}
		}
		for _, dr := range m.DestinationRules {
			if dr.Scope == scenario.DRScopeMesh {
				return fmt.Sprintf("%s applies a mesh-wide DestinationRule (host \"*\" in %s, %s), which every client follows", at, scenario.IstioRootNamespace, dr.Source.Position)
			}
		}
	}
	return ""
}

// estimate is roughly how long sc takes: an expect step's consecutive
// rounds, a transition's observe window, a move's rollout and window, a
// rotation's wait for the renewal (by the workload's sidecar or ztunnel,
// Cluster.RenewalAfter, on the data plane it has by then), and a little
// for everything else.
func estimate(s *scenario.Suite, sc *scenario.Scenario) time.Duration {
	c := s.Cluster(sc.Cluster)
	round := s.Defaults.Interval.Duration
	var d time.Duration
	for i := range sc.Steps {
		st := &sc.Steps[i]
		switch st.Kind() {
		case scenario.KindExpect:
			d += time.Duration(max(s.Defaults.Consecutive-1, 0)) * round
		case scenario.KindTransition:
			d += st.Transition.Observe.Duration
		case scenario.KindMove:
			// A rollout of the moved workloads, then the window.
			d += 10*time.Second + st.MoveDataPlane.Observe.Duration
		case scenario.KindRotate:
			renewal := 12 * time.Hour // half Istio's default TTL
			if c != nil {
				renewal = c.RenewalAfter(s.AtStep(sc, i).Workload(st.Rotate.Workload))
			}
			d += min(st.Rotate.Within.Duration, renewal)
		case scenario.KindWait:
			d += st.Wait.Duration.Duration
		case scenario.KindUpgrade, scenario.KindRotateRoot:
			d += st.Timeout.Duration / 2
		}
		d += 100 * time.Millisecond
	}
	return d
}
