package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeCharts makes a folder that holds a base and an istiod chart.
func fakeCharts(t *testing.T, dir string) {
	t.Helper()
	for _, chart := range []string{"base", "istiod"} {
		writeFile(t, filepath.Join(dir, chart, "Chart.yaml"), "name: "+chart+"\n")
	}
}

// Impossible or self-contradicting files: each refused at the line of the
// mistake, with its YAML path and what to do.
func TestImpossibleScenariosAreRefused(t *testing.T) {
	steps := func(s string) string { return header + "scenarios:\n- name: s\n  steps:\n" + s }
	for _, tc := range []struct {
		name, src, want string
	}{
		{"mtls from outside the mesh", steps("  - expect: [{from: legacy, to: service-b, result: mtls}]\n"),
			`test.yaml:9:52: scenarios[0].steps[0].expect[0].result: workload "legacy" has no sidecar (mesh: false), so no request between legacy and service-b can be mutual TLS; expect plaintext or fail`},
		{"mtls to outside the mesh", steps("  - expect: [{from: service-a, to: legacy, result: mtls}]\n"),
			`scenarios[0].steps[0].expect[0].result: workload "legacy" has no sidecar`},
		{"policy in an empty namespace", steps("  - mtls: {peerAuthentications: [{scope: namespace, namespace: meshprof, mode: STRICT}]}\n"),
			`scenarios[0].steps[0].mtls.peerAuthentications[0].namespace: no fixture lives in namespace "meshprof", so the policy would apply to nothing; the fixtures' namespaces are meshproof (did you mean "meshproof"?)`},
		{"transition policy in an empty namespace", steps("  - transition: {to: {peerAuthentications: [{scope: namespace, namespace: other, mode: STRICT}]}}\n"),
			`transition.to.peerAuthentications[0].namespace: no fixture lives in namespace "other"`},
		{"fixtures in kube-system", header + "fixtures: {namespace: kube-system}\nscenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`fixtures.namespace: namespace "kube-system" belongs to Kubernetes or Istio`},
		{"workload in istio-system", header + "fixtures: {workloads: [{name: w, namespace: istio-system}]}\nscenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`fixtures.workloads[0].namespace: namespace "istio-system" belongs to Kubernetes or Istio`},
		{"workload in kube-node-lease", header + "fixtures: {workloads: [{name: w, namespace: kube-node-lease}]}\nscenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`namespace "kube-node-lease" belongs to Kubernetes or Istio`},
		{"duplicate step names", steps("  - {name: on, wait: {duration: 1s}}\n  - {name: on, wait: {duration: 2s}}\n"),
			`test.yaml:10:12: scenarios[0].steps[1].name: duplicate step name "on" (first at test.yaml:9:12)`},
		{"interval not shorter than the timeout", header + "defaults: {interval: 2m}\nscenarios: [{name: s, steps: [{expect: [{from: service-a, to: service-b, result: mtls}]}]}]\n",
			`not longer than the probe interval (defaults.interval 2m0s)`},
		{"consecutive rounds do not fit", header + "defaults: {interval: 30s, consecutive: 5}\nscenarios: [{name: s, steps: [{expect: [{from: service-a, to: service-b, result: mtls}]}]}]\n",
			`the step's timeout 2m0s cannot fit 5 rounds in a row (defaults.consecutive) 30s apart (defaults.interval): they take at least 2m0s`},
		{"request timeout not shorter than the step", steps("  - {timeout: 2s, expect: [{from: service-a, to: service-b, result: mtls}]}\n"),
			`scenarios[0].steps[0].timeout: the step's timeout 2s is not longer than defaults.requestTimeout 3s`},
		{"observe beyond the timeout", steps("  - {timeout: 1m, transition: {to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}, observe: 2m}}\n"),
			`transition.observe: observe 2m0s is longer than the step's timeout 1m0s`},
		{"rotate within beyond the timeout", steps("  - {timeout: 1m, rotate: {workload: service-b, within: 5m}}\n"),
			`rotate.within: rotate.within 5m0s is longer than the step's timeout 1m0s`},
		{"noPlaintextAfter beyond observe", steps("  - transition: {to: {peerAuthentications: [{scope: namespace, mode: STRICT}]}, observe: 10s, noPlaintextAfter: 20s}\n"),
			`transition.noPlaintextAfter: noPlaintextAfter 20s is longer than observe 10s`},
		{"noPlaintextAfter closing nothing", steps("  - transition: {to: {peerAuthentications: [{scope: namespace, mode: PERMISSIVE}]}, noPlaintextAfter: 5s}\n"),
			`no in-mesh server port STRICT that was not STRICT before`},
		{"noPlaintextAfter from STRICT to STRICT", steps("  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}\n  - transition: {to: {peerAuthentications: [{scope: mesh, mode: STRICT}]}, noPlaintextAfter: 5s}\n"),
			`no in-mesh server port STRICT that was not STRICT before`},
		{"wait beyond the timeout", steps("  - {timeout: 1m, wait: {duration: 1m}}\n"),
			`wait.duration: waiting 1m0s does not end before the step's timeout 1m0s`},
		{"continuous probing slower than the step", steps("  - {timeout: 1m, upgrade: {to: 1.31.0, traffic: {every: 2m}}}\n"),
			`upgrade.traffic.every: probing every 2m0s is not more often than once in 1m0s`},
		{"nanosecond timeout", steps("  - {timeout: 500ns, wait: {duration: 1s}}\n"),
			`timeout: 500ns is shorter than a millisecond, which no timeout, interval or wait can mean; write ms, s, m or h (e.g. 500s)`},
		{"microsecond interval", header + "defaults: {interval: 10us}\nscenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`defaults.interval: 10us is shorter than a millisecond`},
		{"upgrade to the same version", steps("  - upgrade: {to: 1.30.3}\n"),
			`upgrade.to: Istio 1.30.3 is already installed at this step (cluster c1's istio.version): an upgrade needs a newer version`},
		{"upgrade to an older version", steps("  - upgrade: {to: 1.29.6}\n"),
			`upgrade.to: Istio 1.29.6 is older than 1.30.3, installed at this step (cluster c1's istio.version)`},
		{"second upgrade not newer", steps("  - upgrade: {to: 1.31.0}\n  - upgrade: {to: 1.31.0-beta.1}\n"),
			`scenarios[0].steps[1].upgrade.to: Istio 1.31.0-beta.1 is older than 1.31.0, installed at this step (step 1 (1 upgrade to 1.31.0 (inPlace)))`},
		{"missing kind config file", strings.Replace(header, "- name: c1\n", "- name: c1\n  kind: {configFile: kind.yaml}\n", 1) + "scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`clusters[0].kind.configFile: kind.configFile kind.yaml does not exist (paths are relative to the scenario file)`},
		{"missing charts", strings.Replace(header, "{version: 1.30.3}", "{version: 1.30.3, charts: charts}", 1) + "scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]\n",
			`clusters[0].istio.charts: istio.charts charts does not exist`},
		{"missing upgrade charts", steps("  - upgrade: {to: 1.31.0, charts: up}\n"),
			`upgrade.charts: upgrade.charts up does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, tc.src)
			if !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
			for _, e := range errs {
				if !e.Pos.IsValid() || e.Path == "" {
					t.Errorf("error without a position or path: %v", e)
				}
			}
		})
	}
}

// Every problem at once: independent contradictions in one file are all
// reported.
func TestImpossibleScenariosAllReported(t *testing.T) {
	errs := loadErrors(t, header+`scenarios:
- name: s
  steps:
  - {name: a, expect: [{from: legacy, to: service-b, result: mtls}]}
  - {name: a, timeout: 1m, wait: {duration: 2m}}
  - upgrade: {to: 1.29.0}
`)
	for _, want := range []string{"has no sidecar", "duplicate step name", "does not end before the step's timeout", "is older than 1.30.3"} {
		if !strings.Contains(errs.Error(), want) {
			t.Errorf("errors lack %q:\n%s", want, errs)
		}
	}
}

// Valid shapes the validator must not refuse.
func TestValidShapesAreAccepted(t *testing.T) {
	root := t.TempDir()
	fakeCharts(t, filepath.Join(root, "charts", "1.30.3"))
	fakeCharts(t, filepath.Join(root, "charts", "1.31.0"))
	writeFile(t, filepath.Join(root, "kind.yaml"), "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
	src := `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: c1
  kind: {configFile: kind.yaml}
  istio: {version: 1.30.3, charts: charts/1.30.3, workloadCertTTL: 1m}
scenarios:
- name: remove-every-policy
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - mtls: {}
  - transition: {to: {}}
  - expect: [{from: legacy, to: service-b, result: plaintext}]
- name: mesh-scope-in-root-namespace
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, namespace: istio-system, mode: STRICT}]}
  - mtls: {peerAuthentications: [{scope: mesh, mode: STRICT}, {scope: namespace, mode: PERMISSIVE}]}
- name: dr-and-port-override
  steps:
  - mtls:
      destinationRules:
      - {workload: service-b, mode: ISTIO_MUTUAL}
      - {workload: service-b, mode: DISABLE, port: 9090}
- name: closes-plaintext
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: PERMISSIVE}]}
  - transition: {to: {peerAuthentications: [{scope: workload, workload: service-b, mode: UNSET, ports: [{port: 9090, mode: STRICT}]}]}, observe: 30s, noPlaintextAfter: 30s}
- name: upgrades
  steps:
  - upgrade: {to: 1.31.0-beta.1}
  - upgrade: {to: 1.31.0, charts: charts/1.31.0}
- name: durations
  steps:
  - {timeout: 10s, expect: [{from: service-a, to: service-b, result: mtls}]}
  - {timeout: 1m, wait: {duration: 59s}}
  - {timeout: 1m, rotate: {workload: service-b, within: 1m}}
`
	if _, err := Load(filepath.Join(root, "suite.yaml"), []byte(src)); err != nil {
		t.Fatalf("refused a valid file:\n%v", err)
	}
}

func TestDestinationRuleModes(t *testing.T) {
	errs := loadErrors(t, header+"scenarios:\n- name: s\n  steps:\n  - mtls: {destinationRules: [{workload: service-b, mode: MUTUAL}]}\n")
	want := `test.yaml:9:59: scenarios[0].steps[0].mtls.destinationRules[0].mode: mode MUTUAL needs a client certificate and private key of your own (or a credentialName), which a scenario cannot give: Istio refuses it with "client certificate required for mutual tls"`
	if !strings.HasPrefix(errs.Error(), want) {
		t.Errorf("errors:\n%s\nwant:\n%s", errs, want)
	}
	mustLoad(t, header+"scenarios:\n- name: s\n  steps:\n  - mtls: {destinationRules: [{workload: service-b, mode: SIMPLE}]}\n  - expect: [{from: service-a, to: service-b, result: fail, reason: upstream-503}]\n")
}
