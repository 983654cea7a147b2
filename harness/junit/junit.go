// Package junit writes meshproof's JUnit reports: Ginkgo's report format,
// with every time written as a plain decimal so that strict XSD validators
// in CI tools accept it. The Ginkgo suites write their Ginkgo report with
// it; `meshproof run`, which runs without Ginkgo, first turns its steps'
// verdicts into the same report (FromVerdicts), so both name every suite
// and test case alike.
package junit

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/onsi/ginkgo/v2/reporters"
	"github.com/onsi/ginkgo/v2/types"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// timeAttr matches a time attribute; Ginkgo formats durations as Go floats,
// which may use an exponent (8.4e-05) that the XSD decimal type forbids.
var timeAttr = regexp.MustCompile(`time="([^"]*)"`)

// Write writes a Ginkgo report as JUnit XML with every time written as
// a plain decimal, so that strict XSD validation in CI tools accepts it.
func Write(report types.Report, path string) error {
	tmp := path + ".tmp"
	if err := reporters.GenerateJUnitReportWithConfig(report, tmp, reporters.JunitReportConfig{}); err != nil {
		return fmt.Errorf("writing JUnit report: %w", err)
	}
	data, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	data = timeAttr.ReplaceAllFunc(data, func(m []byte) []byte {
		v, err := strconv.ParseFloat(string(timeAttr.FindSubmatch(m)[1]), 64)
		if err != nil {
			return m
		}
		return []byte(`time="` + strconv.FormatFloat(v, 'f', 3, 64) + `"`)
	})
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// FromVerdicts turns a run's verdicts into the report Ginkgo would have
// made of the same run: the setup as a [SynchronizedBeforeSuite] case and
// each step as an [It] case named "<scenario> <step> [labels]". Every step
// of scenarios appears: one without a verdict is skipped, with the setup's
// failure as the reason when the setup failed.
func FromVerdicts(suiteName string, scenarios []*scenario.Scenario, verdicts []results.Verdict, start time.Time, runTime time.Duration) types.Report {
	report := types.Report{SuiteDescription: suiteName, StartTime: start, EndTime: start.Add(runTime), RunTime: runTime, SuiteSucceeded: true}
	byStep := map[[2]string]results.Verdict{}
	for _, v := range verdicts {
		if v.Scenario == "" && v.Step == results.SetupStep {
			report.SpecReports = append(report.SpecReports, specReport(types.NodeTypeSynchronizedBeforeSuite, nil, v))
			continue
		}
		byStep[[2]string{v.Scenario, v.Step}] = v
	}
	for _, sc := range scenarios {
		for _, st := range sc.Steps {
			v, ok := byStep[[2]string{sc.Name, st.Name}]
			if !ok {
				continue
			}
			r := specReport(types.NodeTypeIt, sc, v)
			r.LeafNodeText = st.Name
			report.SpecReports = append(report.SpecReports, r)
		}
	}
	report = Complete(report, scenarios)
	for _, r := range report.SpecReports {
		if r.State.Is(types.SpecStateFailureStates) {
			report.SuiteSucceeded = false
		}
	}
	return report
}

func specReport(nodeType types.NodeType, sc *scenario.Scenario, v results.Verdict) types.SpecReport {
	r := types.SpecReport{LeafNodeType: nodeType, StartTime: v.Started, EndTime: v.Started.Add(v.Duration), RunTime: v.Duration}
	if sc != nil {
		r.ContainerHierarchyTexts = []string{sc.Name}
		r.ContainerHierarchyLabels = [][]string{Labels(sc)}
	}
	if v.DataPlane != "" {
		// A JUnit property of the testcase: CI shows it next to the result.
		r.ReportEntries = append(r.ReportEntries, DataPlaneEntry(v.DataPlane, v.Started))
	}
	switch v.Status {
	case results.Passed:
		r.State = types.SpecStatePassed
	case results.Skipped:
		r.State = types.SpecStateSkipped
		r.Failure.Message = v.Reason
	default:
		r.State = types.SpecStateFailed
		r.Failure.Message = v.Reason
		r.Failure.FailureNodeType = nodeType
		r.Failure.TimelineLocation.Time = r.EndTime
		if v.Source != "" {
			r.Failure.Message += "\n(step written at " + v.Source + ")"
			r.Failure.Location = codeLocation(v.Source)
		}
	}
	return r
}

// codeLocation turns a scenario position, file:line:col, into the location
// Ginkgo reports a failure at.
func codeLocation(pos string) types.CodeLocation {
	file, line := pos, 0
	for range 2 { // drop :col, then take :line
		i := strings.LastIndexByte(file, ':')
		if i < 0 {
			break
		}
		if n, err := strconv.Atoi(file[i+1:]); err == nil {
			file, line = file[:i], n
		}
	}
	return types.CodeLocation{FileName: file, LineNumber: line}
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

// Complete adds, as skipped, every step of scenarios that report has no
// [It] case for: Ginkgo leaves out the specs it never reached (after a
// failed setup, or an interrupt), and a CI gate must still see every
// planned step. The reason is the setup's failure when it failed, else
// that the step did not run.
func Complete(report types.Report, scenarios []*scenario.Scenario) types.Report {
	reason := "not run"
	have := map[[2]string]bool{}
	for _, r := range report.SpecReports {
		switch {
		case r.LeafNodeType == types.NodeTypeIt && len(r.ContainerHierarchyTexts) == 1:
			have[[2]string{r.ContainerHierarchyTexts[0], r.LeafNodeText}] = true
		case r.LeafNodeType.Is(types.NodeTypeBeforeSuite|types.NodeTypeSynchronizedBeforeSuite) && r.State.Is(types.SpecStateFailureStates):
			reason = "not run: setup failed: " + r.Failure.Message
		}
	}
	for _, sc := range scenarios {
		for _, st := range sc.Steps {
			if have[[2]string{sc.Name, st.Name}] {
				continue
			}
			report.SpecReports = append(report.SpecReports, types.SpecReport{
				LeafNodeType: types.NodeTypeIt, LeafNodeText: st.Name,
				ContainerHierarchyTexts: []string{sc.Name}, ContainerHierarchyLabels: [][]string{Labels(sc)},
				State: types.SpecStateSkipped, Failure: types.Failure{Message: reason},
			})
		}
	}
	return report
}

// DataPlaneProperty is the name of the JUnit property that says what stood
// in for the cluster's sidecars (results.Verdict.DataPlane).
const DataPlaneProperty = "dataPlane"

// DataPlaneEntry is the report entry a spec carries when its verdict was
// decided by a stand-in for the cluster's sidecars; Ginkgo's JUnit reporter
// writes it as the testcase's property DataPlaneProperty.
func DataPlaneEntry(label string, at time.Time) types.ReportEntry {
	return types.ReportEntry{Name: DataPlaneProperty, Value: types.WrapEntryValue(label), Time: at, Visibility: types.ReportEntryVisibilityNever}
}
