package scenario

import (
	"strings"
	"testing"
)

const moveFixtures = "fixtures:\n  workloads:\n  - {name: side}\n  - {name: amb, dataPlane: ambient}\n  - {name: px, dataPlane: proxyless}\n  - {name: out, dataPlane: none}\n  - {name: raw, ports: [{name: tcp, number: 5000}]}\n"

// Each impossible move is refused at the line and column that say it,
// with the reason.
func TestMoveDataPlaneValidation(t *testing.T) {
	steps := func(lines ...string) string {
		return "scenarios:\n- name: s\n  steps:\n" + strings.Join(lines, "\n") + "\n"
	}
	for _, tc := range []struct {
		name, file, path, want, at string
	}{
		{"unknown workload", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [sidee], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads", `no workload named "sidee" (did you mean "side"?)`, "test.yaml:16:32"},
		{"to ambient on a cluster without ambient", header + "fixtures:\n  workloads:\n  - {name: side}\n" + steps("  - moveDataPlane: {workloads: [side], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.to", "moving to ambient needs Istio's ambient mode, but cluster c1 installs Istio with profile default", "test.yaml:12:44"},
		{"already ambient", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [side, amb], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads[1]", `workload "amb" is already on ambient (dataPlane at test.yaml:9:28), so there is nothing to move`, "test.yaml:16:32"},
		{"already moved by an earlier step", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [side], to: ambient}", "  - name: again", "    moveDataPlane: {workloads: [side], to: ambient}"),
			"scenarios[0].steps[1].moveDataPlane.workloads[0]", `workload "side" is already on ambient (moved there by step "1 moveDataPlane side to ambient", test.yaml:16:5)`, "test.yaml:18:32"},
		{"already a sidecar", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [side], to: sidecar}"),
			"scenarios[0].steps[0].moveDataPlane.workloads[0]", `workload "side" is already on sidecar (declared at test.yaml:8:5)`, "test.yaml:16:32"},
		{"proxyless workload", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [px], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads[0]", `workload "px" cannot be moved: a proxyless workload's data plane is grpc-go inside the application`, "test.yaml:16:32"},
		{"out-of-mesh workload", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [out], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads[0]", `workload "out" cannot be moved: a workload outside the mesh (dataPlane: none) has no mesh identity`, "test.yaml:16:32"},
		{"to none", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [side], to: none}"),
			"scenarios[0].steps[0].moveDataPlane.to", "a workload can move to ambient or sidecar, not none", "test.yaml:16:44"},
		{"named twice", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [side, side], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads[1]", `workload "side" is named twice`, "test.yaml:16:32"},
		{"no workloads", ambientHeader + moveFixtures + steps("  - moveDataPlane: {workloads: [], to: ambient}"),
			"scenarios[0].steps[0].moveDataPlane.workloads", "name at least one workload to move", "test.yaml:16:32"},
		{"tcp pair of a moved workload", ambientHeader + moveFixtures + steps("  - moveDataPlane:", "      workloads: [raw]", "      to: ambient", "      traffic: {pairs: [{from: side, to: raw, port: 5000}]}"),
			"scenarios[0].steps[0].moveDataPlane.traffic.pairs[0].port", "port 5000 of raw is tcp and raw moves in this step", "test.yaml:19:53"},
		{"within and observe beyond the timeout", ambientHeader + moveFixtures + steps("  - timeout: 1m", "    moveDataPlane: {workloads: [side], to: ambient, within: 55s}"),
			"scenarios[0].steps[0].moveDataPlane.within", "within 55s and then observe 10s do not fit in the step's timeout 1m0s", "test.yaml:17:61"},
		{"observe leaves no time to move", ambientHeader + moveFixtures + steps("  - timeout: 10s", "    moveDataPlane: {workloads: [side], to: ambient, observe: 10s}"),
			"scenarios[0].steps[0].moveDataPlane.observe", "within 0s and then observe 10s do not fit", "test.yaml:17:62"},
		{"rotateRoot after a move to ambient", strings.Replace(ambientHeader, "profile: ambient", "profile: ambient, pluggedCA: true", 1) + "fixtures:\n  workloads:\n  - {name: side}\n  - {name: s2}\n" +
			steps("  - moveDataPlane: {workloads: [side], to: ambient}", "  - rotateRoot: {}"),
			"scenarios[0].steps[1].rotateRoot", "which meshproof cannot for ambient side", "test.yaml:14:17"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.file)
			var found *Error
			for _, e := range errs {
				if strings.Contains(e.Message, tc.want) {
					found = e
				}
			}
			if found == nil {
				t.Fatalf("errors:\n%s\nwant one containing %q", errs, tc.want)
			}
			if found.Path != tc.path || found.Pos.String() != tc.at {
				t.Errorf("at %s %s, want %s %s", found.Pos, found.Path, tc.at, tc.path)
			}
		})
	}
}

// A move to ambient and back is valid, later steps see the moved
// workloads on their new data plane, and the file's suite is left as
// written.
func TestMoveDataPlaneAtStep(t *testing.T) {
	s := mustLoad(t, ambientHeader+moveFixtures+`scenarios:
- name: s
  steps:
  - moveDataPlane: {workloads: [side], to: ambient}
  - wait: {duration: 1s}
  - moveDataPlane: {workloads: [side, amb], to: sidecar, within: 20s}
  - wait: {duration: 1s}
`)
	sc := &s.Scenarios[0]
	for _, tc := range []struct {
		index     int
		side, amb DataPlane
	}{{-1, DataPlaneSidecar, DataPlaneAmbient}, {0, DataPlaneAmbient, DataPlaneAmbient}, {1, DataPlaneAmbient, DataPlaneAmbient},
		{2, DataPlaneSidecar, DataPlaneSidecar}, {3, DataPlaneSidecar, DataPlaneSidecar}} {
		at := s.AtStep(sc, tc.index)
		if got, got2 := at.Workload("side").Plane(), at.Workload("amb").Plane(); got != tc.side || got2 != tc.amb {
			t.Errorf("at step %d: side %s, amb %s; want %s, %s", tc.index, got, got2, tc.side, tc.amb)
		}
	}
	if s.AtStep(sc, -1) != s {
		t.Error("before any move, AtStep is not the suite itself")
	}
	if s.Workload("side").Plane() != DataPlaneSidecar {
		t.Error("AtStep changed the file's suite")
	}
	m := sc.Steps[2].MoveDataPlane
	if m.Within.Duration.String() != "20s" || m.Observe.Duration.String() != "10s" || m.Traffic.Every.Duration.String() != "500ms" || len(m.Traffic.Pairs) == 0 {
		t.Errorf("defaults: within %s observe %s every %s pairs %d", m.Within, m.Observe, m.Traffic.Every, len(m.Traffic.Pairs))
	}
	if w := sc.Steps[0].MoveDataPlane.Within; w.Duration.String() != "1m50s" {
		t.Errorf("default within = %s, want the 2m timeout less observe", w)
	}
	if got := strings.Join(sc.Moved(), ","); got != "side,amb" {
		t.Errorf("Moved = %s", got)
	}
	if sc.Steps[0].Name != "1 moveDataPlane side to ambient" {
		t.Errorf("default name %q", sc.Steps[0].Name)
	}
}
