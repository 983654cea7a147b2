//go:build unix

package report_test

import (
	"net/url"
	"path/filepath"
	"testing"

	"github.com/meshproof/meshproof/harness/report"
)

// The page of a real run, as headless Chromium builds it: the same checks
// on the DOM the browser made.
func TestChromiumRendersARealRun_ScriptedTransport(t *testing.T) {
	bin := report.Chromium(t)
	run := realRun(t)
	page := (&url.URL{Scheme: "file", Path: run.HTMLPath()}).String()
	checkRealRunPage(t, report.RunChromium(t, bin, filepath.Join(t.TempDir(), "dom"), "--dump-dom", page))
}
