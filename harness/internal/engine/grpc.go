package engine

import (
	"fmt"

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
	if errs := scenario.Unsupported(suite); len(errs) > 0 {
		return fmt.Errorf("the engine cannot run these steps (meshproof validate refuses them too):\n%w", errs)
	}
	return nil
}
