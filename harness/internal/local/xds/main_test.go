package xds

import (
	"os"
	"testing"

	"github.com/meshproof/meshproof/internal/leakcheck"
)

// TestMain fails the package's tests when a stream's goroutines outlive
// its Stop.
func TestMain(m *testing.M) { os.Exit(leakcheck.Run(m)) }
