package spec

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// junitSuites is the JUnit XML that CI tools read (Jenkins' junit plugin,
// GitLab, GitHub test reporters): testsuites > testsuite > testcase, with at
// most one failure, error or skipped per test case.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Disabled *int         `xml:"disabled,attr"`
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
	Disabled  *int        `xml:"disabled,attr"`
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
	Skipped   []junitSkipped `xml:"skipped"`
	SystemErr string         `xml:"system-err"`
}

type junitSkipped struct {
	Message string `xml:"message,attr"`
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
	total, failed, errored, disabled := 0, 0, 0, 0
	for _, s := range r.Suites {
		if s.Disabled != nil {
			disabled += *s.Disabled
		}
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
			if strings.Contains(c.SystemErr, "INVALID NODE TYPE") || strings.Contains(c.SystemErr, "01/01/01") {
				errs = append(errs, fmt.Errorf("testcase %q carries placeholder text: %q", c.Name, c.SystemErr))
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
	if r.Disabled != nil && *r.Disabled != disabled {
		errs = append(errs, fmt.Errorf("testsuites says disabled=%d, its testsuites %d", *r.Disabled, disabled))
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
	env = slices.Clone(env)
	for i, e := range env {
		env[i] = strings.ReplaceAll(e, "$DIR", filepath.Dir(report))
	}
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
	tinyReports = append(tinyReports, report)
	return data
}

// tinyReports are the paths runTiny wrote reports to, the last one last.
var tinyReports []string

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
	if setup == nil || len(setup.Failures) != 1 || !strings.Contains(setup.Failures[0].Body, "preparing scenario setup-fails: removing the previous scenario's policies") ||
		strings.Count(setup.Failures[0].Body, "preparing scenario") != 1 {
		t.Errorf("scenario whose setup failed: %+v", setup)
	}
	after := caseByName(r, "setup-fails 2 wait")
	if after == nil || len(after.Skipped) != 1 || after.Skipped[0].Message != `not run: step "1 wait" of this scenario failed` {
		t.Errorf("the step after a scenario that could not start: %+v", after)
	}
}

// The Ginkgo path and `meshproof run` write the same JUnit of the same run:
// with a runner that records verdicts as the run library does, the suite's
// JUnit is, but for the suite's own time and timestamp, byte for byte what
// junit.FromVerdicts writes of those verdicts (what `meshproof run` writes),
// data-plane property included.
func TestJUnitOfGinkgoEqualsMeshproofRun(t *testing.T) {
	for _, env := range [][]string{nil, {"MESHPROOF_TINY_SETUP_FAILS=1"}} {
		t.Run(strings.Join(env, ","), func(t *testing.T) {
			got := runTiny(t, append(env, "MESHPROOF_TINY_VERDICTS=$DIR/verdicts.json")...)
			if _, err := validateJUnit(got); err != nil {
				t.Fatalf("the JUnit report is not valid: %v", err)
			}
			dir := filepath.Dir(tinyReports[len(tinyReports)-1])
			data, err := os.ReadFile(filepath.Join(dir, "verdicts.json"))
			if err != nil {
				t.Fatal(err)
			}
			var verdicts []results.Verdict
			if err := json.Unmarshal(data, &verdicts); err != nil {
				t.Fatal(err)
			}
			file, err := os.ReadFile("testdata/tiny/tiny.yaml")
			if err != nil {
				t.Fatal(err)
			}
			s, err := scenario.Load("tiny.yaml", file)
			if err != nil {
				t.Fatal(err)
			}
			want, err := junit.Marshal(junit.FromVerdicts("tiny", scenarios(s), verdicts, time.Now(), time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if g, w := withoutSuiteTimes(got), withoutSuiteTimes(want); g != w {
				t.Errorf("the suite's JUnit differs from meshproof run's of the same verdicts:\n--- suite\n%s\n--- meshproof run\n%s", g, w)
			}
			if !strings.Contains(string(got), `<property name="dataPlane" value="rehearsal: data plane simulated; istiod test">`) {
				t.Errorf("no data-plane property, as written, in:\n%s", got)
			}
		})
	}
}

// withoutSuiteTimes is a JUnit report without the testsuites' and
// testsuite's time and timestamp, which differ between two writes of one
// run.
func withoutSuiteTimes(report []byte) string {
	lines := strings.Split(string(report), "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "<testsuite") {
			lines[i] = suiteTime.ReplaceAllString(l, "")
		}
	}
	return strings.Join(lines, "\n")
}

var suiteTime = regexp.MustCompile(` (time|timestamp)="[^"]*"`)
