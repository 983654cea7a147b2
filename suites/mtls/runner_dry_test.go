//go:build !e2e

package mtls

import (
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

// e2eBuild says whether this build runs scenarios on clusters.
const e2eBuild = false

// newRunner, without -tags e2e, backs a Ginkgo dry run: the tree is listed,
// no node runs.
func newRunner(*testing.T, *scenario.Suite) (spec.Runner, string) { return previewRunner{}, "" }
