package testsupport

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// EchoBinary builds the echo program as its image is built (static,
// trimmed paths) into a directory of t's and returns its path. A package
// whose tests call it reads the repository's sources through go build,
// which Go's test cache does not see: make test runs it every time.
func EchoBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "echo")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-trimpath", "-o", bin, "github.com/meshproof/meshproof/fixtures/echo")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building echo: %v\n%s", err, out)
	}
	return bin
}
