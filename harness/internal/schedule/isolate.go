package schedule

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// maxNamespace is the longest namespace name Kubernetes accepts (a DNS
// label).
const maxNamespace = 63

// Namespace names the copy of fixture namespace ns that scenario sc of run
// runID runs in: the namespace and the scenario, readable, then a short
// hash of all three, so that two runs (or two scenarios whose names read
// alike once made a DNS label, such as matrix expansions) never share one.
func Namespace(runID, sc, ns string) string {
	sum := sha256.Sum256([]byte(runID + "\x00" + sc + "\x00" + ns))
	suffix := hex.EncodeToString(sum[:])[:6]
	base := dnsLabel(ns + "-" + sc)
	if len(base) > maxNamespace-len(suffix)-1 {
		base = strings.TrimRight(base[:maxNamespace-len(suffix)-1], "-")
	}
	return base + "-" + suffix
}

// dnsLabel lowers s and turns every run of characters a DNS label cannot
// hold into one dash.
func dnsLabel(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}

// Copy is an isolated scenario as it runs: the suite it sees, holding only
// the fixtures it uses, each in the scenario's own copy of its namespace,
// and the scenario with its policies pointed there. Names of scenarios,
// steps and workloads stay the file's, so verdicts, observations and JUnit
// read the same as a run in the fixtures' own namespaces; namespaces and
// SPIFFE identities are the copy's.
type Copy struct {
	Suite    *scenario.Suite
	Scenario *scenario.Scenario
	// Namespaces maps each fixture namespace the scenario uses to its copy.
	Namespaces map[string]string
}

// CopyNamespaces are the copy's namespaces, sorted.
func (c *Copy) CopyNamespaces() []string {
	var out []string
	for _, ns := range c.Namespaces {
		out = append(out, ns)
	}
	slices.Sort(out)
	return out
}

// Isolate makes the copy of sc, an isolated scenario of s (Place), for run
// runID. s and sc are not changed.
func Isolate(s *scenario.Suite, sc *scenario.Scenario, runID string) *Copy {
	used := usedWorkloads(s, sc)
	c := &Copy{Namespaces: map[string]string{}}
	ns := func(name string) string {
		if to, ok := c.Namespaces[name]; ok {
			return to
		}
		to := Namespace(runID, sc.Name, name)
		c.Namespaces[name] = to
		return to
	}
	suite := *s
	suite.Fixtures.Workloads = nil
	for _, w := range s.Fixtures.Workloads {
		if used == nil || used[w.Name] {
			w.Namespace = ns(w.Namespace)
			suite.Fixtures.Workloads = append(suite.Fixtures.Workloads, w)
		}
	}
	suite.Fixtures.Namespace = ns(s.Fixtures.Namespace)
	copied := *sc
	copied.Steps = slices.Clone(sc.Steps)
	for i := range copied.Steps {
		st := &copied.Steps[i]
		switch {
		case st.MTLS != nil:
			m := relocate(*st.MTLS, ns)
			st.MTLS = &m
		case st.Transition != nil:
			tr := *st.Transition
			tr.To = relocate(tr.To, ns)
			st.Transition = &tr
		}
	}
	suite.Scenarios = []scenario.Scenario{copied}
	c.Suite, c.Scenario = &suite, &suite.Scenarios[0]
	return c
}

// relocate points a policy set's PeerAuthentications at the copy's
// namespaces (DestinationRules name workloads, which carry theirs).
func relocate(m scenario.MTLSStep, ns func(string) string) scenario.MTLSStep {
	m.PeerAuthentications = slices.Clone(m.PeerAuthentications)
	for i := range m.PeerAuthentications {
		pa := &m.PeerAuthentications[i]
		pa.Namespace = ns(pa.Namespace)
	}
	return m
}

// usedWorkloads are the workloads sc's steps name, or nil for all of them
// (an `expect: auto` step asserts every pair).
func usedWorkloads(s *scenario.Suite, sc *scenario.Scenario) map[string]bool {
	used := map[string]bool{}
	pairs := func(ps []scenario.Pair) {
		for _, p := range ps {
			used[p.From], used[p.To] = true, true
		}
	}
	for i := range sc.Steps {
		st := &sc.Steps[i]
		switch st.Kind() {
		case scenario.KindExpect:
			if st.Expect.Auto {
				return nil
			}
			for _, x := range st.Expect.Table {
				used[x.From], used[x.To] = true, true
			}
		case scenario.KindRotate:
			// The rotation reads the certificate from the first
			// out-of-mesh workload and keeps mTLS flowing from the first
			// other sidecar workload (the engine's observers): every
			// workload with no proxyless data plane keeps that choice.
			used[st.Rotate.Workload] = true
			for _, w := range s.Fixtures.Workloads {
				if !w.Proxyless {
					used[w.Name] = true
				}
			}
		case scenario.KindRestart:
			for _, w := range st.Restart.Workloads {
				used[w] = true
			}
		case scenario.KindWait:
			for _, w := range st.Wait.Workloads {
				used[w] = true
			}
		case scenario.KindTransition:
			pairs(st.Transition.Traffic.Pairs)
		case scenario.KindMove:
			for _, w := range st.MoveDataPlane.Workloads {
				used[w] = true
			}
			pairs(st.MoveDataPlane.Traffic.Pairs)
		case scenario.KindUpgrade, scenario.KindRotateRoot:
			return nil
		}
		if m := st.Policies(); m != nil {
			for _, pa := range m.PeerAuthentications {
				if pa.Workload != "" {
					used[pa.Workload] = true
				}
			}
			for _, dr := range m.DestinationRules {
				if dr.Workload != "" {
					used[dr.Workload] = true
				}
			}
		}
	}
	return used
}
