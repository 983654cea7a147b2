// Package e2eframework shows meshproof's scenarios as a feature of an
// e2e-framework suite: the environment creates the cluster and puts its
// own objects on it; meshproof's feature runs on that cluster as on an
// existing one and removes, at its end, only what it created.
//
//	go test -v -timeout 30m ./e2eframework                          # kind (needs Docker and the kind CLI)
//	MESHPROOF_REHEARSE=1 go test -v -timeout 30m ./e2eframework     # no Docker: a rehearsal
package e2eframework

import (
	"os"
	"testing"

	"sigs.k8s.io/e2e-framework/pkg/env"
	"sigs.k8s.io/e2e-framework/pkg/envfuncs"
	"sigs.k8s.io/e2e-framework/support"
	"sigs.k8s.io/e2e-framework/support/kind"

	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/meshtest"
)

var testenv env.Environment

func TestMain(m *testing.M) {
	testenv = env.New()
	var cluster support.E2EClusterProvider = kind.NewProvider()
	if os.Getenv("MESHPROOF_REHEARSE") != "" {
		cluster = rehearsal.NewCluster() // a local cluster of real parts, no Docker
	}
	testenv.Setup(
		envfuncs.CreateCluster(cluster, "mesh"),
		yourObjects, // what your suite puts on the cluster itself
	)
	// meshproof leaves your objects as they were (untouched_test.go).
	testenv.BeforeEachFeature(snapshotObjects)
	testenv.AfterEachFeature(objectsUntouched)
	testenv.Finish(envfuncs.DestroyCluster("mesh"))
	os.Exit(testenv.Run(m))
}

func TestMeshFeature(t *testing.T) {
	mesh := meshtest.Feature("../mesh.yaml",
		meshtest.WithEnvCluster("mesh"),                 // the cluster TestMain's environment created
		meshtest.WithLabelFilter("peer-authentication"), // these scenarios only
		meshtest.WithReports(os.Getenv("MESHPROOF_REPORTS")))
	testenv.Test(t, mesh)
}
