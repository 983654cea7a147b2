package scenario

import (
	"strings"
	"testing"
)

const existingHeader = "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: staging\n  provider: existing\n"

func TestIstioModeDefaultsByProvider(t *testing.T) {
	kind := mustLoad(t, header+"scenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n")
	if m := kind.Clusters[0].Istio.Mode; m != IstioInstall {
		t.Errorf("kind cluster istio.mode = %q, want install", m)
	}
	ex := mustLoad(t, existingHeader+"  existing: {image: {push: registry.example/team/echo}}\n  istio: {version: 1.30.3}\nscenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n")
	c := ex.Clusters[0]
	if c.Istio.Mode != IstioUseExisting || c.Existing.Image.Push != "registry.example/team/echo" {
		t.Errorf("existing cluster istio = %+v, image = %+v; want use-existing and the push repository", c.Istio, c.Existing.Image)
	}
}

func TestExistingClusterErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"image push and ref", existingHeader + "  existing: {image: {push: r.example/e, ref: r.example/e:1}}\n  istio: {version: 1.30.3}\nscenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n",
			"test.yaml:6:21: clusters[0].existing.image: set exactly one of push"},
		{"use-existing with plugged CA", existingHeader + "  istio: {version: 1.30.3, pluggedCA: true}\nscenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n",
			"clusters[0].istio.pluggedCA: a plugged CA needs Istio installed by meshproof"},
		{"use-existing with upgrade", existingHeader + "  istio: {version: 1.30.3}\nscenarios:\n- name: s\n  steps: [{upgrade: {to: 1.30.3}}]\n",
			"test.yaml:9:21: scenarios[0].steps[0].upgrade: upgrading Istio needs Istio installed by meshproof; cluster staging has istio.mode use-existing"},
		{"use-existing with rotateRoot", existingHeader + "  istio: {version: 1.30.3}\nscenarios:\n- name: s\n  steps: [{rotateRoot: {}}]\n",
			"test.yaml:9:24: scenarios[0].steps[0].rotateRoot: rotating the root CA needs Istio and its CA installed by meshproof; cluster staging has istio.mode use-existing"},
		{"use-existing adopts nothing", existingHeader + "  istio: {version: 1.30.3, mode: use-existing, adoptReleases: true}\nscenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n",
			"clusters[0].istio.adoptReleases: only for mode install"},
		{"unknown mode", strings.Replace(header, "{version: 1.30.3}", "{version: 1.30.3, mode: borrow}", 1) + "scenarios:\n- name: s\n  steps: [{wait: {duration: 1s}}]\n",
			`unknown value "borrow"; want one of install, use-existing`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			if !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%v\nwant one containing %q", errs, tc.want)
			}
		})
	}
}
