// Package gotest shows meshproof inside a repository's own go test: the
// scenarios of mesh.yaml (here meshproof's default scenarios) run as
// subtests of TestMesh, one per scenario and step.
//
//	go test -v -timeout 30m .                          # on kind (needs Docker)
//	MESHPROOF_REHEARSE=1 go test -v -timeout 30m .     # no Docker: a rehearsal
//	go test -run 'TestMesh/^strict$' .                 # one scenario
package gotest

import (
	"os"
	"testing"

	"github.com/meshproof/meshproof/meshtest"
)

func TestMesh(t *testing.T) {
	// The run folder (junit.xml, report.html, diagnostics) stays where
	// MESHPROOF_REPORTS says; unset, it goes with the test's temp dir.
	opts := []meshtest.Option{meshtest.WithReports(os.Getenv("MESHPROOF_REPORTS"))}
	if os.Getenv("MESHPROOF_REHEARSE") != "" {
		opts = append(opts, meshtest.Rehearse())
	}
	meshtest.Run(t, "mesh.yaml", opts...)
}
