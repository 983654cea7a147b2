// Package mtls is meshproof's main suite: it runs a scenario file's
// scenarios on kind (or existing) clusters with Istio, as Ginkgo specs.
//
//	make e2e                                   # the default scenarios.yaml
//	go tool ginkgo -tags e2e -v ./suites/mtls -- --scenarios my.yaml --keep
//	go tool ginkgo --dry-run -v ./suites/...   # list the specs, no cluster
//
// Built with -tags e2e it runs them for real through the run library
// (harness/run, the same code as `meshproof run`). Without
// the tag it never touches a cluster: a Ginkgo dry run lists the specs, and
// `go test` checks that the spec tree is exactly what `meshproof plan`
// prints.
package mtls

import (
	"flag"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/meshproof/meshproof/suites/spec"
)

var (
	scenariosFile = flag.String("scenarios", "../../scenarios.yaml", "the scenario file to run")
	reportsDir    = flag.String("reports", "../../reports", "where run folders (junit.xml, results.json, diagnostics) are written")
	keep          = flag.Bool("keep", false, "leave clusters, Istio and fixtures in place after the run, for debugging")
	istioVersion  = flag.String("istio-version", "", "install this Istio version on every cluster instead of the file's (CI's version matrix)")
)

func TestMTLS(t *testing.T) {
	RegisterFailHandler(Fail)
	s, err := scenario.LoadFile(*scenariosFile)
	if err != nil {
		t.Fatalf("%s:\n%v", *scenariosFile, err)
	}
	if *istioVersion != "" {
		run.OverrideIstioVersion(s, *istioVersion)
	}
	suiteConfig, reporterConfig := GinkgoConfiguration()
	if !e2eBuild && !suiteConfig.DryRun {
		checkTreeAgainstPlan(t, s)
		return
	}
	r, junit := newRunner(t, s)
	spec.Declare(s, r, spec.WithJUnit(junit))
	RunSpecs(t, run.SuiteName(*scenariosFile), suiteConfig, reporterConfig)
}
