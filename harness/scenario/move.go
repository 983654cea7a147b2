package scenario

import (
	"fmt"
	"slices"
)

// This file holds the moveDataPlane step: which data plane each workload
// is on at each step of a scenario, and the checks of a move.

// AtStep is the suite as step index of sc finds it: its workloads on the
// data planes the file gives them, changed by every moveDataPlane step of
// sc up to and including index (so a move step's own index gives the data
// planes after it, and index-1 those before it; -1 is the file's). It is s
// itself when no step moves a workload by then; otherwise a copy whose
// workload list is its own, so s is never changed. Predictions, expect:
// auto, later steps' validation and the engine read the suite through it.
func (s *Suite) AtStep(sc *Scenario, index int) *Suite {
	moved := map[string]DataPlane{}
	for i := 0; i <= index && i < len(sc.Steps); i++ {
		m := sc.Steps[i].MoveDataPlane
		if m == nil || !movable(m.To) {
			continue
		}
		for _, name := range m.Workloads {
			moved[name] = m.To
		}
	}
	var workloads []Workload
	for i, w := range s.Fixtures.Workloads {
		to, ok := moved[w.Name]
		if !ok || !movable(w.Plane()) || w.Plane() == to {
			continue
		}
		if workloads == nil {
			workloads = slices.Clone(s.Fixtures.Workloads)
		}
		workloads[i].DataPlane = to
	}
	if workloads == nil {
		return s
	}
	view := *s
	view.Fixtures.Workloads = workloads
	return &view
}

// movable reports whether a moveDataPlane step moves workloads from or to
// the data plane d: a sidecar or ambient, the two that Istio's migration
// moves between by relabelling and restarting pods.
func movable(d DataPlane) bool { return d == DataPlaneSidecar || d == DataPlaneAmbient }

// Moved lists the workloads that sc's moveDataPlane steps move, in the
// order the steps name them, each once.
func (sc *Scenario) Moved() []string {
	var out []string
	for i := range sc.Steps {
		if m := sc.Steps[i].MoveDataPlane; m != nil {
			for _, name := range m.Workloads {
				if !slices.Contains(out, name) {
					out = append(out, name)
				}
			}
		}
	}
	return out
}

// moveDataPlane checks a move. v.s is the suite as the step finds it
// (scenarios: AtStep of the step before), so "already there" counts the
// moves of earlier steps.
func (v *validator) moveDataPlane(st *Step, sc *Scenario, index int, path string) {
	m := st.MoveDataPlane
	mpath := path + ".moveDataPlane"
	switch m.To {
	case DataPlaneAmbient:
		if c := v.s.Cluster(sc.Cluster); c != nil && !c.Ambient() {
			v.errorf(m.Source.At("to"), mpath+".to", "moving to ambient needs Istio's ambient mode, but cluster %s installs Istio with profile %s: no istio-cni would enrol the moved pods and no ztunnel would carry their traffic; set istio.profile: ambient on the cluster",
				c.Name, c.Istio.Profile)
		}
	case DataPlaneSidecar:
	case DataPlaneProxyless, DataPlaneNone:
		v.errorf(m.Source.At("to"), mpath+".to", "a workload can move to ambient or sidecar, not %s: %s", m.To, notMovable(m.To))
	}
	if len(m.Workloads) == 0 {
		v.errorf(m.Source.At("workloads"), mpath+".workloads", "name at least one workload to move")
	}
	seen := map[string]bool{}
	for i, name := range m.Workloads {
		ipath := fmt.Sprintf("%s.workloads[%d]", mpath, i)
		if seen[name] {
			v.errorf(m.Source.At("workloads"), ipath, "workload %q is named twice", name)
			continue
		}
		seen[name] = true
		w := v.workload(name, m.Source, "workloads", mpath)
		if w == nil {
			continue
		}
		switch from := w.Plane(); {
		case !movable(from):
			v.errorf(m.Source.At("workloads"), ipath, "workload %q cannot be moved: %s", name, notMovable(from))
		case from == m.To && movable(m.To):
			v.errorf(m.Source.At("workloads"), ipath, "workload %q is already on %s %s, so there is nothing to move", name, from, v.planeOrigin(name, sc, index))
		}
	}
	v.withinTimeout(st, m.Within, m.Source.At("within"), mpath+".within", "moveDataPlane.within")
	if m.Within.IsZero() || m.Within.Duration+m.Observe.Duration > st.Timeout.Duration {
		at, field := m.Source.At("observe"), ".observe"
		if !m.Source.has("observe") && m.Source.has("within") {
			at, field = m.Source.At("within"), ".within"
		}
		v.errorf(at, mpath+field, "within %s and then observe %s do not fit in the step's timeout %s: the step would time out before it judged the traffic on the new data planes; raise the step's timeout or shorten within",
			m.Within, m.Observe, st.Timeout)
	}
	v.traffic(m.Traffic, mpath+".traffic")
	v.continuousTimes(m.Traffic, m.Observe, "moveDataPlane.observe", mpath+".traffic")
	for i, p := range m.Traffic.Pairs {
		for _, name := range []string{p.From, p.To} {
			if !seen[name] {
				continue
			}
			if to := v.s.Workload(p.To); to != nil {
				if port := to.Port(p.Port); port != nil && port.Protocol == ProtocolTCP {
					v.errorf(p.Source.At("port"), fmt.Sprintf("%s.traffic.pairs[%d].port", mpath, i), "port %d of %s is tcp and %s moves in this step: a TCP connection is proven by the server's sidecar or by ztunnel depending on the data planes, which are mixed while the pods roll; probe an http or grpc port during the move, and the tcp port in an expect step after it",
						p.Port, p.To, name)
				}
			}
			break
		}
	}
}

// notMovable says why a workload cannot move from or to data plane d.
func notMovable(d DataPlane) string {
	if d == DataPlaneProxyless {
		return "a proxyless workload's data plane is grpc-go inside the application (istiod configures it through pilot-agent, and its ports all serve gRPC), so no label moves it onto ztunnel or a sidecar, nor another workload onto it; that is a different deployment of the application, not a move"
	}
	return "a workload outside the mesh (dataPlane: none) has no mesh identity; bringing it in, or taking one out, changes what its pairs are expected to be rather than which data plane carries their mutual TLS, and is not what Istio's migration does (it moves sidecar workloads to ambient); declare the workload on the data plane it should start on"
}

// planeOrigin says where a workload got its data plane by step index of
// sc: an earlier move, or the file.
func (v *validator) planeOrigin(name string, sc *Scenario, index int) string {
	for i := index - 1; i >= 0; i-- {
		if m := sc.Steps[i].MoveDataPlane; m != nil && slices.Contains(m.Workloads, name) {
			return fmt.Sprintf("(moved there by step %q, %s)", sc.Steps[i].Name, sc.Steps[i].Source.Position)
		}
	}
	w := v.s.Workload(name)
	switch {
	case w == nil:
		return ""
	case w.Source.has("dataPlane"):
		return fmt.Sprintf("(dataPlane at %s)", w.Source.At("dataPlane"))
	}
	return fmt.Sprintf("(declared at %s)", w.Source.Position)
}
