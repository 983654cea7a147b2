package engine

import (
	"fmt"
	"strings"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Unsupported reports what of suite the engine cannot run yet: proxyless
// gRPC workloads and gRPC ports. The scenario language, plan and predict
// know them, but the engine has no gRPC probe (Prober speaks HTTP and TCP)
// and no way to witness mTLS from grpc-go's peer certificate, so running
// them could only report what was never observed. Callers refuse such a
// suite before any cluster is touched.
func Unsupported(suite *scenario.Suite) error {
	var problems []string
	for _, w := range suite.Fixtures.Workloads {
		if w.Proxyless {
			problems = append(problems, fmt.Sprintf("%s: workload %q is proxyless gRPC", w.Source.At("proxyless"), w.Name))
			continue
		}
		for _, p := range w.Ports {
			if p.Protocol == scenario.ProtocolGRPC {
				problems = append(problems, fmt.Sprintf("%s: port %s (%d) of workload %q is grpc", p.Source.Position, p.Name, p.Number, w.Name))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("the engine cannot run gRPC fixtures yet: it has no gRPC probe (echo probe's grpc:// and xds:/// targets are not wired into it) and no per-workload pilot-agent in the rehearsal; `meshproof plan` and `meshproof predict` cover them:\n  %s", strings.Join(problems, "\n  "))
}
