package mtls

import (
	"context"
	"errors"

	"github.com/meshproof/meshproof/harness/scenario"
)

// errNotE2E is what a runner built without -tags e2e answers: its specs are
// only ever listed (dry run, preview), never run.
var errNotE2E = errors.New("this suite was built without -tags e2e: it needs a cluster; run it with `make e2e`")

// previewRunner backs spec trees that are listed but never run.
type previewRunner struct{}

func (previewRunner) Setup(context.Context) ([]byte, error)                   { return nil, errNotE2E }
func (previewRunner) Connect(context.Context, []byte) error                   { return errNotE2E }
func (previewRunner) BeginScenario(context.Context, *scenario.Scenario) error { return errNotE2E }
func (previewRunner) RunStep(context.Context, *scenario.Scenario, int) error  { return errNotE2E }
func (previewRunner) EndScenario(context.Context, *scenario.Scenario) error   { return errNotE2E }
func (previewRunner) Teardown(context.Context) error                          { return errNotE2E }
