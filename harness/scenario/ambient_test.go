package scenario

import (
	"strings"
	"testing"
)

const ambientHeader = "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3, profile: ambient}\n"

// dataPlane resolves from the new field and from the older ones alike, and
// the older fields follow it, so that code reading either agrees.
func TestDataPlaneDefaults(t *testing.T) {
	s := mustLoad(t, ambientHeader+`fixtures:
  workloads:
  - {name: side}
  - {name: amb, dataPlane: ambient}
  - {name: out, mesh: false}
  - {name: out2, dataPlane: none}
  - {name: px, proxyless: true}
  - {name: px2, dataPlane: proxyless}
`+waitScenario)
	for _, tc := range []struct {
		name               string
		want               DataPlane
		inMesh, sidecar    bool
		proxyless, ambient bool
	}{
		{"side", DataPlaneSidecar, true, true, false, false},
		{"amb", DataPlaneAmbient, true, false, false, true},
		{"out", DataPlaneNone, false, false, false, false},
		{"out2", DataPlaneNone, false, false, false, false},
		{"px", DataPlaneProxyless, true, false, true, false},
		{"px2", DataPlaneProxyless, true, false, true, false},
	} {
		w := s.Workload(tc.name)
		if w.DataPlane != tc.want || w.InMesh() != tc.inMesh || w.HasSidecar() != tc.sidecar || w.Proxyless != tc.proxyless || w.Ambient() != tc.ambient {
			t.Errorf("%s: dataPlane %s inMesh %t sidecar %t proxyless %t ambient %t, want %s %t %t %t %t",
				tc.name, w.DataPlane, w.InMesh(), w.HasSidecar(), w.Proxyless, w.Ambient(), tc.want, tc.inMesh, tc.sidecar, tc.proxyless, tc.ambient)
		}
	}
	if px := s.Workload("px2"); len(px.Ports) != 1 || px.Ports[0].Protocol != ProtocolGRPC {
		t.Errorf("px2 ports = %+v, want the proxyless default grpc 7070", px.Ports)
	}
	if !s.Clusters[0].Ambient() || !s.AmbientWorkloads() {
		t.Error("want the cluster and the suite ambient")
	}
	plain := mustLoad(t, header+waitScenario)
	if plain.Clusters[0].Istio.Profile != ProfileDefault || plain.AmbientWorkloads() {
		t.Errorf("profile %q, ambient workloads %t; want default, none", plain.Clusters[0].Istio.Profile, plain.AmbientWorkloads())
	}
}

// Each impossible ambient file is refused at the line that says it.
func TestAmbientValidation(t *testing.T) {
	const twoAmbient = "fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient}\n  - {name: b, dataPlane: ambient}\n  - {name: s}\n"
	drStep := func(mode, row string) string {
		return "scenarios:\n- name: s\n  steps:\n  - mtls: {destinationRules: [{workload: b, mode: " + mode + "}]}\n  - expect:\n    - " + row + "\n"
	}
	for _, tc := range []struct {
		name, file, path, want, at string
	}{
		{"ambient workload on a sidecar cluster", header + "fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient}\n" + waitScenario,
			"fixtures.workloads[0].dataPlane", `workload "a" is ambient, but cluster c1 installs Istio without ambient mode`, "test.yaml:8:26"},
		{"ambient workload, one of two clusters without ambient", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3, profile: ambient}\n- name: c2\n  istio: {version: 1.30.3}\n" +
			"fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient}\nscenarios:\n- {name: s, cluster: c1, steps: [{wait: {duration: 1s}}]}\n",
			"fixtures.workloads[0].dataPlane", "cluster c2 installs Istio without ambient mode (profile default at test.yaml:7:10)", "test.yaml:10:26"},
		{"mesh false contradicts ambient", ambientHeader + "fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient, mesh: false}\n" + waitScenario,
			"fixtures.workloads[0].mesh", "mesh: false contradicts dataPlane: ambient", "test.yaml:8:41"},
		{"proxyless contradicts sidecar", header + "fixtures:\n  workloads:\n  - {name: a, dataPlane: sidecar, proxyless: true}\n" + waitScenario,
			"fixtures.workloads[0].proxyless", "proxyless: true contradicts dataPlane: sidecar", "test.yaml:8:46"},
		{"tlsModeLabel on ambient", ambientHeader + "fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient, tlsModeLabel: true}\n" + waitScenario,
			"fixtures.workloads[0].tlsModeLabel", "tlsModeLabel is for proxyless workloads", "test.yaml:8:49"},
		{"unknown data plane", ambientHeader + "fixtures:\n  workloads:\n  - {name: a, dataPlane: ambiant}\n" + waitScenario,
			"fixtures.workloads[0].dataPlane", `unknown value "ambiant"`, "test.yaml:8:26"},
		{"revision with ambient", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3, profile: ambient, revision: r1}\n" + waitScenario,
			"clusters[0].istio.revision", "a revision with profile ambient is not supported", "test.yaml:5:56"},
		{"canary upgrade of ambient", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.29.6, profile: ambient}\n" +
			"scenarios:\n- name: s\n  steps:\n  - upgrade: {to: 1.30.3, method: canary}\n",
			"scenarios[0].steps[0].upgrade.method", "Istio upgrades in place only", "test.yaml:9:35"},
		{"rotateRoot with ambient workloads", "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3, profile: ambient, pluggedCA: true}\n" +
			"fixtures:\n  workloads:\n  - {name: a, dataPlane: ambient}\n  - {name: s}\nscenarios:\n- name: s\n  steps:\n  - rotateRoot: {}\n",
			"scenarios[0].steps[0].rotateRoot", "which meshproof cannot for ambient a: an ambient pod has no sidecar: its certificates live in its node's ztunnel", "test.yaml:13:17"},
		{"DR DISABLE between ambient workloads", ambientHeader + twoAmbient + drStep("DISABLE", "{from: a, to: b, result: plaintext}"),
			"scenarios[0].steps[1].expect[0].result", "both ambient: their ztunnels always speak HBONE mutual TLS to each other and ignore the DestinationRule DISABLE for b (at test.yaml:14:31)", "test.yaml:16:32"},
		{"DR SIMPLE between ambient workloads", ambientHeader + twoAmbient + drStep("SIMPLE", "{from: a, to: b, result: fail}"),
			"scenarios[0].steps[1].expect[0].result", "ignore the DestinationRule SIMPLE", "test.yaml:16:32"},
		{"DR DISABLE from ambient to a sidecar", ambientHeader + twoAmbient + "scenarios:\n- name: s\n  steps:\n  - mtls: {destinationRules: [{workload: s, mode: DISABLE}]}\n  - expect:\n    - {from: a, to: s, result: plaintext}\n",
			"scenarios[0].steps[1].expect[0].result", "its ztunnel ignores the DestinationRule DISABLE for s", "test.yaml:16:32"},
		{"DR DISABLE from a sidecar to ambient", ambientHeader + twoAmbient + drStep("DISABLE", "{from: s, to: b, result: plaintext}"),
			"scenarios[0].steps[1].expect[0].result", "s's sidecar sends it HBONE mutual TLS even under the DestinationRule DISABLE", "test.yaml:16:32"},
		{"mesh-wide DR between ambient workloads", ambientHeader + twoAmbient + "scenarios:\n- name: s\n  steps:\n  - mtls: {destinationRules: [{scope: mesh, mode: DISABLE}]}\n  - expect:\n    - {from: a, to: b, result: plaintext}\n",
			"scenarios[0].steps[1].expect[0].result", "ignore the DestinationRule DISABLE for mesh", "test.yaml:16:32"},
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

// What ztunnel does whatever the rule says is not refused: rows that
// agree with it, and rules towards workloads nobody ambient talks to.
func TestAmbientValidationAccepts(t *testing.T) {
	mustLoad(t, strings.Replace(ambientHeader, "1.30.3", "1.29.6", 1)+`fixtures:
  workloads:
  - {name: a, dataPlane: ambient}
  - {name: b, dataPlane: ambient}
  - {name: s}
  - {name: s2}
scenarios:
- name: s
  steps:
  - mtls:
      peerAuthentications: [{scope: namespace, mode: STRICT}]
      destinationRules: [{workload: b, mode: DISABLE}, {workload: s2, mode: DISABLE}]
  - expect:
    - {from: a, to: b, result: mtls}
    - {from: s, to: b, result: mtls}
    - {from: a, to: s, result: mtls}
    - {from: s, to: s2, result: fail, reason: upstream-503}
  - upgrade: {to: 1.30.3}
`)
}
