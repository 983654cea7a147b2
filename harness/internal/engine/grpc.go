package engine

import (
	"fmt"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Unsupported reports the steps of suite the engine cannot run because
// their workloads' data planes cannot give what they need (a rotate step of
// a proxyless workload, a rotateRoot step beside proxyless workloads: both
// read served certificates through Envoy). The table of what each data
// plane can do is scenario's, which validation reads too: a loaded suite
// never has such steps; this catches a suite built in code. Everything else
// of proxyless workloads and grpc ports runs: expect and continuous traffic
// probe them with gRPC calls (target).
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
	if errs := scenario.Unsupported(suite); len(errs) > 0 {
		return fmt.Errorf("the engine cannot run these steps (meshproof validate refuses them too):\n%w", errs)
	}
	return nil
}
