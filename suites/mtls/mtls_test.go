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
	parallel      = flag.Int("parallel", run.DefaultParallel, "run up to N scenarios at once in this process, isolated ones in namespaces of their own (1: one after the other)")
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
