//go:build unix

package report

// The external tests (package report_test) render in Chromium too.
var (
	Chromium    = chromium
	RunChromium = runChromium
)
