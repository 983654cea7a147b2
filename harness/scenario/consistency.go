package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// This file holds the checks of a file that is well-formed but asks for
// something impossible or self-contradicting: a result no workload can
// produce, a policy for a namespace nothing occupies, durations that cannot
// all hold, an upgrade that is none, a path that does not exist.

// systemNamespaces belong to Kubernetes and Istio; fixtures deployed there
// would be mixed with (and cleaned up next to) the cluster's own workloads,
// and Istio's root namespace turns namespace policies into mesh-wide ones.
var systemNamespaces = []string{"kube-system", "kube-public", "kube-node-lease", IstioRootNamespace}

// systemNamespace checks that a fixture namespace is not a system one.
func (v *validator) systemNamespace(ns string, at Position, path string) {
	if contains(systemNamespaces, ns) {
		v.errorf(at, path, "namespace %q belongs to Kubernetes or Istio (%s are refused): give the fixtures a namespace of their own, e.g. %s",
			ns, strings.Join(systemNamespaces, ", "), DefaultNamespace)
	}
}

// fixtureNamespaces lists the namespaces the fixtures occupy, in file order.
func (v *validator) fixtureNamespaces() []string {
	var out []string
	for _, w := range v.s.Fixtures.Workloads {
		if !contains(out, w.Namespace) {
			out = append(out, w.Namespace)
		}
	}
	return out
}

// stepNames refuses two steps of one scenario with the same name: reports,
// JUnit test cases and diagnostics folders are keyed by it.
func (v *validator) stepNames(sc *Scenario) {
	seen := map[string]Position{}
	for j, st := range sc.Steps {
		at := st.Source.At("name")
		if first, dup := seen[st.Name]; dup {
			v.errorf(at, fmt.Sprintf("%s.steps[%d].name", sc.path, j), "duplicate step name %q (first at %s): reports, test cases and diagnostics are keyed by it; rename one", st.Name, first)
			continue
		}
		seen[st.Name] = at
	}
}

// timeoutAt is where a step's timeout was set: on the step, or in defaults.
func (v *validator) timeoutAt(st *Step, path string) (Position, string) {
	if st.Source.has("timeout") {
		return st.Source.At("timeout"), path + ".timeout"
	}
	if v.s.Defaults.Source.has("timeout") {
		return v.s.Defaults.Source.At("timeout"), "defaults.timeout"
	}
	return st.Source.Position, path
}

// withinTimeout refuses a duration of a step that must fit in the step's
// timeout but does not.
func (v *validator) withinTimeout(st *Step, d Duration, at Position, path, what string) {
	if d.Duration > st.Timeout.Duration {
		v.errorf(at, path, "%s %s is longer than the step's timeout %s, which would end the step first; raise the step's timeout or shorten %s",
			what, d, st.Timeout, what)
	}
}

// probeTimes refuses an expect step whose probing cannot hold within its
// timeout: a round every interval, consecutive rounds in a row, each
// request bounded by requestTimeout.
func (v *validator) probeTimes(st *Step, path string) {
	df := v.s.Defaults
	at, tpath := v.timeoutAt(st, path)
	timeout := st.Timeout.Duration
	if df.RequestTimeout.Duration >= timeout {
		v.errorf(at, tpath, "the step's timeout %s is not longer than defaults.requestTimeout %s: a single request could outlast the step", st.Timeout, df.RequestTimeout)
	}
	if df.Interval.Duration >= timeout {
		v.errorf(at, tpath, "the step's timeout %s is not longer than the probe interval (defaults.interval %s): not even a second round fits", st.Timeout, df.Interval)
		return
	}
	if need := time.Duration(df.Consecutive-1) * df.Interval.Duration; need >= timeout {
		v.errorf(at, tpath, "the step's timeout %s cannot fit %d rounds in a row (defaults.consecutive) %s apart (defaults.interval): they take at least %s", st.Timeout, df.Consecutive, df.Interval, need)
	}
}

// continuousTimes refuses continuous probing that cannot sample: a period
// not shorter than the time it runs for.
func (v *validator) continuousTimes(t Traffic, runs Duration, runsWhat, path string) {
	if !t.Every.IsZero() && t.Every.Duration >= runs.Duration {
		v.errorf(t.Source.At("every"), path+".every", "probing every %s is not more often than once in %s (%s): shorten every", t.Every, runs, runsWhat)
	}
}

// transitionTimes checks observe and noPlaintextAfter.
func (v *validator) transitionTimes(st *Step, sc *Scenario, index int, path string) {
	t := st.Transition
	tpath := path + ".transition"
	v.withinTimeout(st, t.Observe, t.Source.At("observe"), tpath+".observe", "observe")
	v.continuousTimes(t.Traffic, t.Observe, "transition.observe", tpath+".traffic")
	if t.NoPlaintextAfter.IsZero() {
		return
	}
	at := t.Source.At("noPlaintextAfter")
	if t.NoPlaintextAfter.Duration > t.Observe.Duration {
		v.errorf(at, tpath+".noPlaintextAfter", "noPlaintextAfter %s is longer than observe %s: traffic is sampled only for observe after the change; raise observe", t.NoPlaintextAfter, t.Observe)
	}
	if !v.closesPlaintext(policiesBefore(sc, index), &t.To) {
		v.errorf(at, tpath+".noPlaintextAfter", "this transition makes no in-mesh server port STRICT that was not STRICT before, so no plaintext is closed for noPlaintextAfter to time; remove it, or transition to STRICT")
	}
}

// policiesBefore is the policy set in force when step index starts: that of
// the last earlier step that sets one, or nil (Istio's defaults).
func policiesBefore(sc *Scenario, index int) *MTLSStep {
	for i := index - 1; i >= 0; i-- {
		if m := sc.Steps[i].Policies(); m != nil {
			return m
		}
	}
	return nil
}

// closesPlaintext reports whether some in-mesh server port is STRICT under
// next and was not under prev.
func (v *validator) closesPlaintext(prev, next *MTLSStep) bool {
	for i := range v.s.Fixtures.Workloads {
		w := &v.s.Fixtures.Workloads[i]
		if !w.InMesh() {
			continue
		}
		for _, p := range w.Ports {
			if next.ServerMode(w, p.Target()) == ModeStrict && prev.ServerMode(w, p.Target()) != ModeStrict {
				return true
			}
		}
	}
	return false
}

// ServerMode is the PeerAuthentication mode a workload's sidecar enforces
// on a container port under the policy set (nil: none). Istio composes it
// from the mesh-wide policy (the root namespace's selector-less one), the
// namespace's, the workload's, then its port-level mode, UNSET inheriting
// the level above, PERMISSIVE when nothing sets it; a workload policy in the
// root namespace is ignored. harness/oracle follows the same rules and
// cites Istio's source for each; its tests hold this function to them.
func (m *MTLSStep) ServerMode(w *Workload, port int) MTLSMode {
	mode := ModePermissive
	if m == nil {
		return mode
	}
	set := func(x MTLSMode) {
		if x != "" && x != ModeUnset {
			mode = x
		}
	}
	var mesh, ns, wl *PeerAuthentication
	for i := range m.PeerAuthentications {
		pa := &m.PeerAuthentications[i]
		switch {
		case pa.Scope != ScopeWorkload && pa.Namespace == IstioRootNamespace:
			mesh = pa
		case pa.Scope != ScopeWorkload && pa.Namespace == w.Namespace:
			ns = pa
		case pa.Scope == ScopeWorkload && pa.Namespace != IstioRootNamespace && pa.Workload == w.Name:
			wl = pa
		}
	}
	for _, pa := range []*PeerAuthentication{mesh, ns, wl} {
		if pa != nil {
			set(pa.Mode)
		}
	}
	if wl != nil {
		for _, pm := range wl.Ports {
			if pm.Port == port {
				set(pm.Mode)
			}
		}
	}
	return mode
}

// upgradeVersion refuses an upgrade to the version in force or an older
// one: the cluster's, or that of the scenario's last earlier upgrade.
func (v *validator) upgradeVersion(st *Step, sc *Scenario, index int, path string) {
	c := v.s.Cluster(sc.Cluster)
	if c == nil || !istioVer.MatchString(st.Upgrade.To) || !istioVer.MatchString(c.Istio.Version) {
		return
	}
	from, fromWhat := c.Istio.Version, "cluster "+c.Name+"'s istio.version"
	for i := 0; i < index; i++ {
		if u := sc.Steps[i].Upgrade; u != nil && istioVer.MatchString(u.To) {
			from, fromWhat = u.To, fmt.Sprintf("step %d (%s)", i+1, sc.Steps[i].Name)
		}
	}
	to := st.Upgrade.To
	switch cmp := compareVersions(to, from); {
	case cmp == 0:
		v.errorf(st.Upgrade.Source.At("to"), path+".upgrade.to", "Istio %s is already installed at this step (%s): an upgrade needs a newer version", to, fromWhat)
	case cmp < 0:
		v.errorf(st.Upgrade.Source.At("to"), path+".upgrade.to", "Istio %s is older than %s, installed at this step (%s): meshproof upgrades, it does not downgrade", to, from, fromWhat)
	}
}

// compareVersions orders two Istio release versions (1.30.3, 1.31.0-beta.1):
// by major, minor and patch, a pre-release before its release.
func compareVersions(a, b string) int {
	na, pa, _ := strings.Cut(a, "-")
	nb, pb, _ := strings.Cut(b, "-")
	fa, fb := strings.Split(na, "."), strings.Split(nb, ".")
	for i := 0; i < 3; i++ {
		x, _ := strconv.Atoi(fa[i])
		y, _ := strconv.Atoi(fb[i])
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa == pb:
		return 0
	case pa == "":
		return 1
	case pb == "":
		return -1
	case pa < pb:
		return -1
	}
	return 1
}

// existingPath refuses a path the file names that does not exist (already
// resolved against the scenario file's folder); charts folders must hold
// the base and istiod charts.
func (v *validator) existingPath(p string, at Position, path, what string, charts bool) {
	if p == "" {
		return
	}
	check := p
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			check = filepath.Join(home, rest)
		}
	}
	info, err := os.Stat(check)
	switch {
	case err != nil:
		v.errorf(at, path, "%s %s does not exist (paths are relative to the scenario file)", what, p)
	case charts && !info.IsDir():
		v.errorf(at, path, "%s %s is not a folder; it must hold the base/ and istiod/ charts", what, p)
	case charts:
		for _, chart := range []string{"base", "istiod"} {
			if _, err := os.Stat(filepath.Join(check, chart, "Chart.yaml")); err != nil {
				v.errorf(at, path, "%s %s has no %s chart (%s/Chart.yaml)", what, p, chart, chart)
			}
		}
	case info.IsDir():
		v.errorf(at, path, "%s %s is a folder; it must be a kind cluster configuration file", what, p)
	}
}
