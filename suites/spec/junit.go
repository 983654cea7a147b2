package spec

import (
	"fmt"
	"os"
	"regexp"
	"strconv"

	"github.com/onsi/ginkgo/v2/reporters"
	"github.com/onsi/ginkgo/v2/types"
)

// timeAttr matches a time attribute; Ginkgo formats durations as Go floats,
// which may use an exponent (8.4e-05) that the XSD decimal type forbids.
var timeAttr = regexp.MustCompile(`time="([^"]*)"`)

// WriteJUnit writes a Ginkgo report as JUnit XML with every time written as
// a plain decimal, so that strict XSD validation in CI tools accepts it.
func WriteJUnit(report types.Report, path string) error {
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
