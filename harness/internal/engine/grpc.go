package engine

import (
	"fmt"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Unsupported reports the steps of suite the engine cannot run: a rotate
// step of a proxyless workload and a rotateRoot step in a suite with
// proxyless workloads. Both read the certificate a workload serves from its
// sidecar (a handshake with Envoy offering Istio's ALPN, Envoy's config
// dump of its SDS secrets), and a proxyless pod has no Envoy: pilot-agent
// hands its certificates to grpc-go, which neither answers. Everything else
// of proxyless workloads and grpc ports runs: expect and continuous
// traffic probe them with gRPC calls (target). Callers refuse such a suite
// before any cluster is touched.
func Unsupported(suite *scenario.Suite) error {
	if suite.AmbientWorkloads() {
		// The language, plan, predict and expect: auto cover ambient
		// workloads; proving their traffic needs ztunnel's evidence, which
		// the engine does not read yet.
		var names []string
		for _, w := range suite.Fixtures.Workloads {
			if w.Ambient() {
				names = append(names, w.Name)
			}
		}
		return fmt.Errorf("the engine cannot run ambient workloads yet (%s): `meshproof validate`, `plan` and `predict` cover them", strings.Join(names, ", "))
	}
	var proxyless []string
	for _, w := range suite.Fixtures.Workloads {
		if w.Proxyless {
			proxyless = append(proxyless, w.Name)
		}
	}
	if len(proxyless) == 0 {
		return nil
	}
	var problems []string
	for _, sc := range suite.Scenarios {
		for _, st := range sc.Steps {
			switch {
			case st.Rotate != nil && suite.Workload(st.Rotate.Workload) != nil && suite.Workload(st.Rotate.Workload).Proxyless:
				problems = append(problems, fmt.Sprintf("%s: step %q rotates proxyless workload %q, whose served certificate cannot be read: it has no Envoy to handshake with or dump its secrets", st.Source.At("rotate"), st.Name, st.Rotate.Workload))
			case st.RotateRoot != nil:
				problems = append(problems, fmt.Sprintf("%s: step %q checks every in-mesh workload's served certificate and trust bundle, which proxyless workloads (%s) cannot show: they have no Envoy to handshake with or dump its secrets", st.Source.At("rotateRoot"), st.Name, strings.Join(proxyless, ", ")))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("the engine cannot run these steps with proxyless gRPC workloads (`meshproof plan` and `meshproof predict` cover them):\n  %s", strings.Join(problems, "\n  "))
}
