// Package mtls is meshproof's main suite: it runs a scenario file's
// scenarios on kind (or existing) clusters with Istio, as Ginkgo specs.
//
//	make e2e                                   # the default scenarios.yaml
//	go tool ginkgo -tags e2e -v ./suites/mtls -- --scenarios my.yaml --keep
//	go tool ginkgo --dry-run -v ./suites/...   # list the specs, no cluster
//
// Built with -tags e2e it runs them for real through the run library
// (harness/run, the same code as `meshproof run`). Without
// the tag it never touches a cluster: a Ginkgo dry run lists the specs, and
// `go test` checks that the spec tree is exactly what `meshproof plan`
// prints.
package mtls
