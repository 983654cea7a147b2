// Command tiny is a small real Ginkgo suite declared by package spec with a
// scripted Runner: one scenario passes, one fails in a step, one fails in its
// setup. spec's tests run it with `go run` and check the JUnit it writes to
// $MESHPROOF_TINY_JUNIT. MESHPROOF_TINY_SETUP_FAILS=1 makes the whole suite's
// setup fail instead, as a cluster or Istio installation failure would.
//
// It is a program rather than a _test.go suite so that `ginkgo ./suites/...`
// does not list it among meshproof's own suites.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	. "github.com/onsi/ginkgo/v2"

	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

const suiteYAML = `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: tiny, istio: {version: 1.30.3}}]
scenarios:
- name: passes
  labels: [good]
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect: [{from: service-a, to: service-b, result: mtls}]
- name: fails
  labels: [bad]
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect: [{from: legacy, to: service-b, result: fail, reason: reset}]
- name: setup-fails
  steps:
  - wait: {duration: 1s}
`

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
		return errors.New("removing the previous scenario's policies: connection refused")
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

// failureFlag is the testing.T stand-in Ginkgo reports the suite's outcome to.
type failureFlag struct{ failed bool }

func (f *failureFlag) Fail() { f.failed = true }

func main() {
	flag.Parse() // Ginkgo's -ginkgo.* flags
	s, err := scenario.Load("tiny.yaml", []byte(suiteYAML))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	spec.Declare(s, scripted{}, spec.WithJUnit(os.Getenv("MESHPROOF_TINY_JUNIT")))
	var t failureFlag
	RunSpecs(&t, "tiny")
	if t.failed {
		os.Exit(1)
	}
}
