// Command tiny is a small real Ginkgo suite declared by package spec with a
// scripted Runner: one scenario passes, one fails in a step, one fails in its
// setup. spec's tests run it with `go run` and check the JUnit it writes to
// $MESHPROOF_TINY_JUNIT. MESHPROOF_TINY_SETUP_FAILS=1 makes the whole suite's
// setup fail instead, as a cluster or Istio installation failure would.
// With MESHPROOF_TINY_VERDICTS set, the runner records its verdicts as the
// run library does (spec.VerdictRecorder) and writes them, as `meshproof
// run` would have recorded them, to that file as JSON.
//
// It is a program rather than a _test.go suite so that `ginkgo ./suites/...`
// does not list it among meshproof's own suites.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	. "github.com/onsi/ginkgo/v2"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

//go:embed tiny.yaml
var suiteYAML []byte

type scripted struct{}

func (scripted) Setup(context.Context) ([]byte, error) {
	if os.Getenv("MESHPROOF_TINY_SETUP_FAILS") != "" {
		return nil, errors.New("installing Istio: istiod did not become Available within 5m")
	}
	return []byte("ok"), nil
}
func (scripted) Connect(context.Context, []byte) error { return nil }
func (scripted) BeginScenario(_ context.Context, sc *scenario.Scenario) error {
	if sc.Name == "setup-fails" {
		return errors.New("preparing scenario setup-fails: removing the previous scenario's policies: connection refused")
	}
	return nil
}
func (scripted) RunStep(_ context.Context, sc *scenario.Scenario, i int) error {
	if sc.Name == "fails" && i == 1 {
		return errors.New("expectations did not hold within 2m0s: legacy -> service-b:8080 expected fail (reset), observed plaintext x3")
	}
	return nil
}
func (scripted) EndScenario(context.Context, *scenario.Scenario) error { return nil }
func (scripted) Teardown(context.Context) error                        { return nil }

// recording is scripted, recording verdicts as the run library does: the
// setup's, each step it ran (a scenario that could not start fails its
// first step), and at teardown a skipped one for every other step.
type recording struct {
	scripted
	suite    *scenario.Suite
	verdicts []results.Verdict
	file     string
}

// dataPlane labels the verdicts, so that the JUnit carries a property.
const dataPlane = "rehearsal: data plane simulated; istiod test"

func (r *recording) record(sc *scenario.Scenario, i int, start time.Time, err error) {
	v := results.Verdict{Step: results.SetupStep, Kind: results.SetupStep, Status: results.Passed, Started: start, Duration: time.Since(start), DataPlane: dataPlane}
	if sc != nil {
		st := &sc.Steps[i]
		v.Scenario, v.Step, v.Kind, v.Source = sc.Name, st.Name, st.Kind(), st.Source.Position.String()
	}
	if err != nil {
		v.Status, v.Reason = results.Failed, err.Error()
	}
	r.verdicts = append(r.verdicts, v)
}

func (r *recording) Setup(ctx context.Context) ([]byte, error) {
	start := time.Now()
	data, err := r.scripted.Setup(ctx)
	r.record(nil, 0, start, err)
	return data, err
}

func (r *recording) BeginScenario(ctx context.Context, sc *scenario.Scenario) error {
	start := time.Now()
	err := r.scripted.BeginScenario(ctx, sc)
	if err != nil {
		r.record(sc, 0, start, err)
	}
	return err
}

func (r *recording) RunStep(ctx context.Context, sc *scenario.Scenario, i int) error {
	start := time.Now()
	err := r.scripted.RunStep(ctx, sc, i)
	r.record(sc, i, start, err)
	return err
}

func (r *recording) Teardown(context.Context) error {
	var scs []*scenario.Scenario
	for i := range r.suite.Scenarios {
		scs = append(scs, &r.suite.Scenarios[i])
	}
	r.verdicts = append(r.verdicts, results.NotRun(scs, r.verdicts, false, time.Now())...)
	data, err := json.Marshal(r.verdicts)
	if err != nil {
		return err
	}
	return os.WriteFile(r.file, data, 0o644)
}

func (r *recording) Verdicts() []results.Verdict { return r.verdicts }

// failureFlag is the testing.T stand-in Ginkgo reports the suite's outcome to.
type failureFlag struct{ failed bool }

func (f *failureFlag) Fail() { f.failed = true }

func main() {
	flag.Parse() // Ginkgo's -ginkgo.* flags
	s, err := scenario.Load("tiny.yaml", suiteYAML)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var runner spec.Runner = scripted{}
	if file := os.Getenv("MESHPROOF_TINY_VERDICTS"); file != "" {
		runner = &recording{suite: s, file: file}
	}
	spec.Declare(s, runner, spec.WithJUnit(os.Getenv("MESHPROOF_TINY_JUNIT")))
	var t failureFlag
	RunSpecs(&t, "tiny")
	if t.failed {
		os.Exit(1)
	}
}
