package spec

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// junitSuites is the JUnit XML that CI tools read (Jenkins' junit plugin,
// GitLab, GitHub test reporters): testsuites > testsuite > testcase, with at
// most one failure, error or skipped per test case.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    *int         `xml:"tests,attr"`
	Failures *int         `xml:"failures,attr"`
	Errors   *int         `xml:"errors,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     *int        `xml:"tests,attr"`
	Failures  *int        `xml:"failures,attr"`
	Errors    *int        `xml:"errors,attr"`
	Skipped   *int        `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string         `xml:"name,attr"`
	Classname string         `xml:"classname,attr"`
	Time      string         `xml:"time,attr"`
	Status    string         `xml:"status,attr"`
	Failures  []junitFailure `xml:"failure"`
	Errors    []junitFailure `xml:"error"`
	Skipped   []struct{}     `xml:"skipped"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Body    string `xml:",chardata"`
}

// validateJUnit checks a report against the constraints of the JUnit XSD
// that CI tools validate with: required attributes, numeric times, at most
// one outcome element per case, and counts that agree with the cases.
func validateJUnit(data []byte) (*junitSuites, error) {
	var r junitSuites
	dec := xml.NewDecoder(strings.NewReader(string(data)))
	dec.Strict = true
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("not well-formed JUnit XML: %w", err)
	}
	var errs []error
	if len(r.Suites) == 0 {
		errs = append(errs, errors.New("no testsuite"))
	}
	total, failed, errored := 0, 0, 0
	for _, s := range r.Suites {
		if s.Name == "" || s.Tests == nil || s.Failures == nil || s.Errors == nil {
			errs = append(errs, fmt.Errorf("testsuite %q lacks name, tests, failures or errors", s.Name))
			continue
		}
		if !isDecimal(s.Time) {
			errs = append(errs, fmt.Errorf("testsuite %q: time %q is not a decimal", s.Name, s.Time))
		}
		f, e, sk := 0, 0, 0
		for _, c := range s.Cases {
			if c.Name == "" || c.Classname == "" {
				errs = append(errs, fmt.Errorf("testcase %q lacks name or classname", c.Name))
			}
			if c.Time != "" && !isDecimal(c.Time) {
				errs = append(errs, fmt.Errorf("testcase %q: time %q is not a decimal", c.Name, c.Time))
			}
			if n := len(c.Failures) + len(c.Errors) + len(c.Skipped); n > 1 {
				errs = append(errs, fmt.Errorf("testcase %q has %d outcome elements, at most one is allowed", c.Name, n))
			}
			for _, fl := range append(append([]junitFailure{}, c.Failures...), c.Errors...) {
				if fl.Message == "" || fl.Type == "" {
					errs = append(errs, fmt.Errorf("testcase %q: failure without message or type", c.Name))
				}
			}
			f += len(c.Failures)
			e += len(c.Errors)
			sk += len(c.Skipped)
		}
		if *s.Tests != len(s.Cases) || *s.Failures != f || *s.Errors != e || (s.Skipped != nil && *s.Skipped != sk) {
			errs = append(errs, fmt.Errorf("testsuite %q counts tests=%d failures=%d errors=%d, but its cases have %d, %d, %d", s.Name, *s.Tests, *s.Failures, *s.Errors, len(s.Cases), f, e))
		}
		total, failed, errored = total+len(s.Cases), failed+f, errored+e
	}
	if r.Tests != nil && (*r.Tests != total || *r.Failures != failed || *r.Errors != errored) {
		errs = append(errs, fmt.Errorf("testsuites counts disagree with the cases: tests=%d failures=%d errors=%d vs %d, %d, %d", *r.Tests, *r.Failures, *r.Errors, total, failed, errored))
	}
	return &r, errors.Join(errs...)
}

// isDecimal is the XSD decimal lexical space: no exponent, which strict
// validators reject even though Go prints small floats that way.
func isDecimal(s string) bool { return decimal.MatchString(s) }

var decimal = regexp.MustCompile(`^[+-]?(\d+(\.\d*)?|\.\d+)$`)

// runTiny runs the tiny suite in testdata — a real Ginkgo run in its own
// process — and returns its JUnit report.
func runTiny(t *testing.T, env ...string) []byte {
	t.Helper()
	report := filepath.Join(t.TempDir(), "junit.xml")
	cmd := exec.Command("go", "run", "./testdata/tiny")
	cmd.Env = append(append(os.Environ(), "MESHPROOF_TINY_JUNIT="+report), env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) { // the suite has failing specs: it must exit non-zero
		t.Fatalf("the tiny suite: want a failing exit, got %v\n%s", err, out)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no JUnit report: %v\n%s", err, out)
	}
	return data
}

func caseByName(r *junitSuites, fragment string) *junitCase {
	for i := range r.Suites[0].Cases {
		if strings.Contains(r.Suites[0].Cases[i].Name, fragment) {
			return &r.Suites[0].Cases[i]
		}
	}
	return nil
}

func TestJUnitHasPassingFailingAndSetupFailingScenarios(t *testing.T) {
	r, err := validateJUnit(runTiny(t))
	if err != nil {
		t.Fatalf("the JUnit report is not valid: %v", err)
	}
	pass := caseByName(r, "passes 2 expect (1 pair)")
	if pass == nil || len(pass.Failures) != 0 || pass.Status != "passed" {
		t.Errorf("passing step: %+v", pass)
	}
	fail := caseByName(r, "fails 2 expect (1 pair)")
	if fail == nil || len(fail.Failures) != 1 || !strings.Contains(fail.Failures[0].Body, "observed plaintext x3") ||
		!strings.Contains(fail.Failures[0].Body, "step written at tiny.yaml:14:5") {
		t.Errorf("failing step: %+v", fail)
	}
	setup := caseByName(r, "setup-fails 1 wait")
	if setup == nil || len(setup.Failures) != 1 || !strings.Contains(setup.Failures[0].Body, "preparing scenario setup-fails: removing the previous scenario's policies") {
		t.Errorf("scenario whose setup failed: %+v", setup)
	}
}

// A failure of the suite's own setup (cluster, Istio) lands in the report
// too, where chainsaw and kuttl lose it.
func TestJUnitRecordsSuiteSetupFailure(t *testing.T) {
	r, err := validateJUnit(runTiny(t, "MESHPROOF_TINY_SETUP_FAILS=1"))
	if err != nil {
		t.Fatalf("the JUnit report is not valid: %v", err)
	}
	setup := caseByName(r, "[SynchronizedBeforeSuite]")
	if setup == nil || len(setup.Failures) != 1 || !strings.Contains(setup.Failures[0].Body, "istiod did not become Available") {
		t.Fatalf("suite setup failure not recorded: %+v", setup)
	}
	// Every planned step is a test case, skipped with the setup failure as
	// the reason: Ginkgo itself leaves them out.
	steps := 0
	for _, c := range r.Suites[0].Cases {
		if !strings.HasPrefix(c.Name, "[It]") {
			continue
		}
		steps++
		if len(c.Skipped) != 1 || c.Status != "skipped" {
			t.Errorf("step %q should be reported skipped after the setup failed: %+v", c.Name, c)
		}
	}
	if steps != 5 {
		t.Errorf("%d steps in the report, want the 5 planned", steps)
	}
}

func TestValidateJUnitRejectsBrokenReports(t *testing.T) {
	for name, doc := range map[string]string{
		"not xml":        "<testsuites>",
		"no suite":       `<testsuites tests="0" failures="0" errors="0"></testsuites>`,
		"bad count":      `<testsuites><testsuite name="s" tests="2" failures="0" errors="0" time="1"><testcase name="a" classname="s"/></testsuite></testsuites>`,
		"two outcomes":   `<testsuites><testsuite name="s" tests="1" failures="1" errors="0" time="1"><testcase name="a" classname="s"><failure message="m" type="t"/><skipped/></testcase></testsuite></testsuites>`,
		"anonymous case": `<testsuites><testsuite name="s" tests="1" failures="0" errors="0" time="1"><testcase classname="s"/></testsuite></testsuites>`,
	} {
		if _, err := validateJUnit([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
