package run

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// One line per record: the time, the message, then the attributes, values
// with spaces quoted, an attribute set by both a logger and its caller
// once.
func TestProgressLines(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(NewProgressHandler(&out)).With("cluster", "dev")
	log.Info("step passed", "cluster", "dev", "step", "1. mtls", "took", 1500*time.Millisecond)
	log.Debug("not for the terminal")
	line := strings.TrimSpace(out.String())
	if strings.Count(line, "\n") != 0 {
		t.Fatalf("want one line, got:\n%s", out.String())
	}
	if want := ` step passed cluster=dev step="1. mtls" took=1.5s`; !strings.HasSuffix(line, want) {
		t.Errorf("got %q, want it to end with %q", line, want)
	}
}
