// Package meshtest runs meshproof's scenarios inside a Go test: Run as t.Run
// subtests of the calling test, Feature as a feature of an e2e-framework
// suite. Both drive the same run library as `meshproof run` (harness/run),
// so the run folder (junit.xml, results.json, report.html, diagnostics)
// is the one the CLI writes.
//
//	func TestMesh(t *testing.T) {
//		meshtest.Run(t, "mesh.yaml", meshtest.Rehearse())
//	}
//
// Every scenario is a subtest and every step a subtest of it, named exactly
// as `meshproof plan` and junit.xml name them (go test prints a name's
// spaces as underscores), so `go test -run 'TestMesh/strict'` runs one
// scenario and `-run 'TestMesh/strict/2_expect'` one step. A step that
// -run leaves out but a selected later step of its scenario follows still
// runs, inside that later step's subtest, before it: steps build on the
// ones before them (an expect step checks the policies an mtls step
// applied). Steps after the last selected one do not run. The run folder
// records every step that did not run, with the reason.
//
// A failed step fails its subtest with the text junit.xml and report.html
// give it; the steps after it in its scenario are skipped with the reason.
// The run is set up when the first selected scenario starts (a -run that
// selects none sets nothing up), and torn down by t.Cleanup. Its steps end
// at t.Deadline() less a grace period (WithGracePeriod), which teardown and
// diagnostics keep; give go test a -timeout that fits the file (a rehearsal
// of meshproof's default scenarios takes about 3 minutes). With -short,
// scenarios labelled slow are skipped.
//
// Ctrl-C (SIGINT) or SIGTERM stops the running step and tears down what
// the run created; the test fails and reports as usual (go test -json stays
// whole), and later runs in the same test binary are skipped, so go test
// ends soon (an e2e-framework environment's Finish still runs). A second
// one stops the teardown and logs what may be left.
//
// Scenarios run one after another: those on one cluster share its mesh-wide
// and namespace policies. The log lines of the run go to the output of the
// test that is running (shown by go test -v, or for failed tests).
package meshtest
