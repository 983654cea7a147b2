// Package junit writes meshproof's JUnit reports from a run's verdicts.
// `meshproof run` and the Ginkgo suites (suites/spec, which first turns
// Ginkgo's report into verdicts) both write through FromVerdicts and Write,
// so the same run gives the same JUnit whichever ran it: one testcase for
// the setup and one per planned step, named as Ginkgo names its specs
// ("[It] <scenario> <step> [labels]"), every step present (a step that did
// not run is skipped, with the reason), and every attribute in the form
// strict XSD validators in CI tools accept (times as plain decimals, counts
// that agree at every level).
//
// It is written here rather than by Ginkgo's reporters package because that
// package links Ginkgo's runtime into the shipped binary, and because its
// JUnit of steps Ginkgo never ran carries placeholder text.
package junit

import (
	"encoding/xml"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// SetupCase is the name of the setup's testcase: the node Ginkgo runs the
// setup in.
const SetupCase = "[SynchronizedBeforeSuite]"

// Report is the JUnit report of one run: one suite, its cases in order.
type Report struct {
	Suite    string
	Start    time.Time
	Duration time.Duration
	Cases    []Case
}

// Case is one testcase: the setup or a step.
type Case struct {
	Name     string
	Status   results.Status
	Duration time.Duration
	// Reason is why the case failed or was skipped, whole.
	Reason string
	// Source is where the step is written, file:line:col.
	Source string
	// Failure names a failure of its own kind (results.Verdict.Failure):
	// the failure's type, and such cases come first.
	Failure    string
	Properties []Property
}

// Property is a testcase property: CI tools show it beside the result.
type Property struct{ Name, Value string }

// DataPlaneProperty is the name of the testcase property that says what
// stood in for the cluster's sidecars (results.Verdict.DataPlane).
const DataPlaneProperty = "dataPlane"

// EnforcedAfterProperty is the name of the testcase property that says, on
// the first expect step after an mtls step, how long after the apply each
// pair was at its new outcome (results.Verdict.EnforcedAfter).
const EnforcedAfterProperty = "enforcedAfter"

// properties are the testcase properties a verdict carries, in this order;
// a verdict whose value is empty carries none. To carry a new verdict field
// into JUnit, add a row.
var properties = []struct {
	name  string
	value func(results.Verdict) string
}{
	{DataPlaneProperty, func(v results.Verdict) string { return v.DataPlane }},
	{EnforcedAfterProperty, func(v results.Verdict) string {
		parts := make([]string, len(v.EnforcedAfter))
		for i, e := range v.EnforcedAfter {
			parts[i] = e.String()
		}
		return strings.Join(parts, "; ")
	}},
}

// FromVerdicts is the JUnit report of a run of scenarios: the setup's case
// first (when verdicts hold the setup's verdict), then every step of
// scenarios in file order. A step without a verdict is skipped, with the
// reason results.NotRun gives.
func FromVerdicts(suiteName string, scenarios []*scenario.Scenario, verdicts []results.Verdict, start time.Time, runTime time.Duration) Report {
	report := Report{Suite: suiteName, Start: start, Duration: runTime}
	verdicts = append(slices.Clone(verdicts), results.NotRun(scenarios, verdicts, false, start.Add(runTime))...)
	byStep := map[[2]string]results.Verdict{}
	for _, v := range verdicts {
		if v.Scenario == "" && v.Step == results.SetupStep {
			report.Cases = append(report.Cases, fromVerdict(SetupCase, v))
			continue
		}
		byStep[[2]string{v.Scenario, v.Step}] = v
	}
	for _, sc := range scenarios {
		for _, st := range sc.Steps {
			report.Cases = append(report.Cases, fromVerdict(CaseName(sc, st.Name), byStep[[2]string{sc.Name, st.Name}]))
		}
	}
	// A request reported as mTLS that crossed in cleartext is the worst
	// there is: such cases come first.
	slices.SortStableFunc(report.Cases, func(a, b Case) int {
		return boolRank(a.Failure != results.FailureWirePlaintext) - boolRank(b.Failure != results.FailureWirePlaintext)
	})
	return report
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func fromVerdict(name string, v results.Verdict) Case {
	c := Case{Name: name, Status: v.Status, Duration: v.Duration, Reason: v.Reason, Source: v.Source, Failure: v.Failure}
	for _, p := range properties {
		if value := p.value(v); value != "" {
			c.Properties = append(c.Properties, Property{p.name, value})
		}
	}
	return c
}

// CaseName is the name of a step's testcase, as Ginkgo names the step's
// spec: "[It] <scenario> <step> [<labels>]".
func CaseName(sc *scenario.Scenario, step string) string {
	return "[It] " + sc.Name + " " + step + " [" + strings.Join(Labels(sc), ", ") + "]"
}

// Labels are a scenario container's labels as Ginkgo lists them: Serial
// (every scenario is Serial, and Ginkgo lists that decorator as a label,
// first since it comes first) and then the scenario's own.
func Labels(sc *scenario.Scenario) []string {
	out := []string{"Serial"}
	for _, l := range sc.Labels {
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}

// SourceNote is what a failure's text ends with to say where the step is
// written; Ginkgo's failure messages carry it, and the testcase's failure
// text ends with it.
func SourceNote(position string) string { return "\n(step written at " + position + ")" }

// The XML: testsuites > testsuite > testcase, with the attributes of the
// JUnit XSD CI tools validate against (Jenkins' junit plugin, GitLab, the
// GitHub test reporters).
type xmlSuites struct {
	XMLName  xml.Name   `xml:"testsuites"`
	Name     string     `xml:"name,attr"`
	Tests    int        `xml:"tests,attr"`
	Failures int        `xml:"failures,attr"`
	Errors   int        `xml:"errors,attr"`
	Time     seconds    `xml:"time,attr"`
	Suites   []xmlSuite `xml:"testsuite"`
}

type xmlSuite struct {
	Name      string    `xml:"name,attr"`
	Tests     int       `xml:"tests,attr"`
	Failures  int       `xml:"failures,attr"`
	Errors    int       `xml:"errors,attr"`
	Skipped   int       `xml:"skipped,attr"`
	Time      seconds   `xml:"time,attr"`
	Timestamp string    `xml:"timestamp,attr"`
	Cases     []xmlCase `xml:"testcase"`
}

type xmlCase struct {
	Name       string         `xml:"name,attr"`
	Classname  string         `xml:"classname,attr"`
	Status     string         `xml:"status,attr"`
	Time       seconds        `xml:"time,attr"`
	Skipped    *xmlSkipped    `xml:"skipped,omitempty"`
	Failure    *xmlFailure    `xml:"failure,omitempty"`
	Properties *xmlProperties `xml:"properties,omitempty"`
}

type xmlSkipped struct {
	Message string `xml:"message,attr"`
}

type xmlFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

type xmlProperties struct {
	Properties []xmlProperty `xml:"property"`
}

type xmlProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

// seconds is a duration in seconds, written as a plain decimal: Go's float
// formatting may use an exponent (8.4e-05), which the XSD decimal type
// forbids.
type seconds time.Duration

func (s seconds) MarshalXMLAttr(name xml.Name) (xml.Attr, error) {
	return xml.Attr{Name: name, Value: strconv.FormatFloat(time.Duration(s).Seconds(), 'f', 3, 64)}, nil
}

// Marshal renders report as JUnit XML.
func Marshal(report Report) ([]byte, error) {
	suite := xmlSuite{Name: report.Suite, Time: seconds(report.Duration), Timestamp: report.Start.UTC().Format("2006-01-02T15:04:05")}
	for _, c := range report.Cases {
		x := xmlCase{Name: c.Name, Classname: report.Suite, Status: string(c.Status), Time: seconds(c.Duration)}
		switch c.Status {
		case results.Passed:
		case results.Skipped:
			x.Skipped = &xmlSkipped{Message: c.Reason}
			suite.Skipped++
		default:
			text := c.Reason
			if c.Source != "" {
				text += SourceNote(c.Source)
			}
			first, _, _ := strings.Cut(c.Reason, "\n")
			kind := "failed"
			if c.Failure != "" {
				kind = c.Failure
			}
			x.Failure = &xmlFailure{Message: first, Type: kind, Text: text}
			x.Status = string(results.Failed)
			suite.Failures++
		}
		if len(c.Properties) > 0 {
			x.Properties = &xmlProperties{}
			for _, p := range c.Properties {
				x.Properties.Properties = append(x.Properties.Properties, xmlProperty(p))
			}
		}
		suite.Cases = append(suite.Cases, x)
	}
	suite.Tests = len(suite.Cases)
	doc := xmlSuites{Name: report.Suite, Tests: suite.Tests, Failures: suite.Failures, Errors: suite.Errors, Time: suite.Time, Suites: []xmlSuite{suite}}
	out, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("writing JUnit report: %w", err)
	}
	return append([]byte(xml.Header), append(out, '\n')...), nil
}

// Write writes report to path as JUnit XML, replacing what is there in one
// step (a reader never sees half a report).
func Write(report Report, path string) error {
	data, err := Marshal(report)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing JUnit report: %w", err)
	}
	return os.Rename(tmp, path)
}

// Read reads a JUnit report that Write wrote (its first suite).
func Read(path string) (Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Report{}, err
	}
	var doc xmlSuites
	if err := xml.Unmarshal(data, &doc); err != nil {
		return Report{}, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Suites) == 0 {
		return Report{Suite: doc.Name}, nil
	}
	s := doc.Suites[0]
	report := Report{Suite: s.Name, Duration: time.Duration(s.Time)}
	if t, err := time.Parse("2006-01-02T15:04:05", s.Timestamp); err == nil {
		report.Start = t
	}
	for _, x := range s.Cases {
		c := Case{Name: x.Name, Status: results.Status(x.Status), Duration: time.Duration(x.Time)}
		switch {
		case x.Skipped != nil:
			c.Status, c.Reason = results.Skipped, x.Skipped.Message
		case x.Failure != nil:
			c.Status, c.Reason = results.Failed, x.Failure.Text
			if i := strings.LastIndex(c.Reason, "\n(step written at "); i >= 0 && strings.HasSuffix(c.Reason, ")") {
				c.Source = strings.TrimSuffix(c.Reason[i+len("\n(step written at "):], ")")
				c.Reason = c.Reason[:i]
			}
		}
		if x.Properties != nil {
			for _, p := range x.Properties.Properties {
				c.Properties = append(c.Properties, Property(p))
			}
		}
		report.Cases = append(report.Cases, c)
	}
	return report, nil
}

// UnmarshalXMLAttr reads a duration written as seconds.
func (s *seconds) UnmarshalXMLAttr(attr xml.Attr) error {
	f, err := strconv.ParseFloat(attr.Value, 64)
	if err != nil {
		return err
	}
	*s = seconds(time.Duration(f * float64(time.Second)))
	return nil
}

// Merge combines the reports of the shards of one run into the report
// one run of every shard's scenarios would have written: one setup case
// (failed when any shard's setup failed, with each failure), then every
// step's case, scenario by scenario in the order of scenarios (their names,
// as the file lists them); a case two shards both hold is an error. The
// run took as long as its longest shard.
func Merge(suite string, scenarios []string, shards []Report, names []string) (Report, error) {
	out := Report{Suite: suite}
	var setup *Case
	byScenario := map[string][]Case{}
	seen := map[string]string{}
	for i, r := range shards {
		if out.Start.IsZero() || (!r.Start.IsZero() && r.Start.Before(out.Start)) {
			out.Start = r.Start
		}
		out.Duration = max(out.Duration, r.Duration)
		for _, c := range r.Cases {
			if c.Name == SetupCase {
				setup = mergeSetup(setup, c, names[i])
				continue
			}
			if prev, ok := seen[c.Name]; ok {
				return Report{}, fmt.Errorf("testcase %q is in both %s and %s", c.Name, prev, names[i])
			}
			seen[c.Name] = names[i]
			sc := scenarioOf(c.Name, scenarios)
			if sc == "" {
				return Report{}, fmt.Errorf("%s: testcase %q belongs to no planned scenario", names[i], c.Name)
			}
			byScenario[sc] = append(byScenario[sc], c)
		}
	}
	if setup != nil {
		out.Cases = append(out.Cases, *setup)
	}
	for _, sc := range scenarios {
		out.Cases = append(out.Cases, byScenario[sc]...)
	}
	return out, nil
}

// scenarioOf is the scenario (of names) a step's case name is of: the
// longest name it starts with, as CaseName writes it.
func scenarioOf(caseName string, names []string) string {
	best := ""
	for _, n := range names {
		if strings.HasPrefix(caseName, "[It] "+n+" ") && len(n) > len(best) {
			best = n
		}
	}
	return best
}

// mergeSetup folds one shard's setup case into the merged one.
func mergeSetup(into *Case, c Case, shard string) *Case {
	if into == nil {
		merged := c
		merged.Properties = slices.Clone(c.Properties)
		if c.Status == results.Failed {
			merged.Reason = shard + ": " + c.Reason
		}
		return &merged
	}
	into.Duration = max(into.Duration, c.Duration)
	if c.Status == results.Failed {
		if into.Status == results.Failed {
			into.Reason += "\n" + shard + ": " + c.Reason
		} else {
			into.Status, into.Reason, into.Source = results.Failed, shard+": "+c.Reason, c.Source
		}
	}
	return into
}
