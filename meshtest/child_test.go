package meshtest_test

import (
	"os"
	"testing"
	"time"

	"github.com/meshproof/meshproof/meshtest"
)

// Environment of TestChild, which the tests below run as a child process
// of their own test binary: what go test runs.
const (
	childFileEnv    = "MESHTEST_CHILD_FILE"
	childReportsEnv = "MESHTEST_CHILD_REPORTS"
	childGraceEnv   = "MESHTEST_CHILD_GRACE"
	childLabelsEnv  = "MESHTEST_CHILD_LABELS"
)

// TestChild rehearses the file $MESHTEST_CHILD_FILE with meshtest.Run; the
// tests that start it check what go test makes of it.
func TestChild(t *testing.T) {
	file := os.Getenv(childFileEnv)
	if file == "" {
		t.Skip("runs only as the child process of this package's other tests")
	}
	opts := []meshtest.Option{meshtest.Rehearse(), meshtest.WithReports(os.Getenv(childReportsEnv)), meshtest.WithLabelFilter(os.Getenv(childLabelsEnv))}
	if grace := os.Getenv(childGraceEnv); grace != "" {
		d, err := time.ParseDuration(grace)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, meshtest.WithGracePeriod(d))
	}
	meshtest.Run(t, file, opts...)
}
