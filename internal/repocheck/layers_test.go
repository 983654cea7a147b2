package repocheck

// layer is one rank of the layout: a package may import packages of its
// own layer or of layers before it, never of a later one.
type layer struct {
	// title heads the layer in the README's Layout section.
	title string
	// packages are module-relative import paths, in the order the README
	// lists them; a path ending in "/..." stands for the folder's packages.
	packages []string
}

// layers is the layout, in the order a run flows through it: the data
// every package shares, the mechanisms that reach clusters and write
// reports, the local stack a rehearsal runs on, the engine that runs
// steps, the composition root, and the programs built on it.
var layers = []layer{
	{"The data every package shares", []string{
		"harness/scenario", "harness/results", "harness/ownership",
		"fixtures", "fixtures/echo/echoapi", "fixtures/manifests",
		"harness/internal/kube", "harness/internal/sidecar", "harness/internal/policy",
		"harness/internal/ca", "harness/internal/istiocharts",
		"harness/internal/probe/configdump", "harness/internal/probe/istiostats",
		"", // the module root: go.mod and go.sum, embedded
	}},
	{"Plans, predictions and reports, without a cluster", []string{
		"harness/plan", "harness/oracle", "harness/report", "harness/junit", "harness/internal/schedule",
	}},
	{"Reaching clusters: kind, Istio, fixtures, pods", []string{
		"harness/internal/cluster", "harness/internal/lease", "harness/internal/ledger",
		"harness/internal/apply", "harness/internal/deploy", "harness/internal/image",
		"harness/internal/istio", "harness/internal/mesh", "harness/internal/probe",
		"harness/internal/diagnose", "fixtures/echo/wire", "harness/internal/wire",
	}},
	{"The local stack: a cluster of real parts for rehearsals", []string{
		"harness/internal/local/proc", "harness/internal/local/binaries",
		"harness/internal/local/controlplane", "harness/internal/local/cluster", "harness/internal/local/memo",
		"harness/internal/local/xds", "harness/internal/local/envoy",
		"harness/internal/local/ztunnel", "harness/internal/local/dataplane",
	}},
	{"Running steps", []string{
		"harness/internal/engine",
	}},
	{"The main job as a library", []string{
		"harness/run", "harness/rehearsal",
	}},
	{"Programs and suites", []string{
		"cmd/meshproof", "fixtures/echo", "suites/spec", "suites/mtls",
		"harness/internal/local/binaries/assets", "meshtest",
	}},
	{"Tests only", []string{
		"harness/internal/testsupport", "harness/internal/local/xds/xdstest", "internal/leakcheck", "harness/oracle/conformance",
		"internal/repocheck", "internal/proctree",
	}},
}

// onlyImporter names, for a package, the one package that may import it
// outside tests.
var onlyImporter = map[string]string{
	// The engine runs steps for the composition root; anything else that
	// needs what it knows needs a leaf package instead.
	"harness/internal/engine": "harness/run",
}

// testOnly are packages no program may link: they exist for tests.
var testOnly = []string{"harness/internal/testsupport", "harness/internal/local/xds/xdstest", "internal/leakcheck", "harness/oracle/conformance", "internal/repocheck", "internal/proctree"}
