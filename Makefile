# meshproof's two commands (see README.md):
#   make test   needs only Go: unit, loopback TLS and real kube-apiserver tests
#   make e2e    needs Go and Docker: the scenarios on a kind cluster with Istio
#   make rehearse  needs only Go: the same job on a local cluster of real
#               parts (kube-apiserver, controllers, kwok nodes, a real istiod),
#               with only the data plane simulated
GO ?= go
# Istio's charts: this project's machines have them beside the repository
# (air-gapped: the tests and make e2e use them). Elsewhere the variable stays
# unset and the charts are pulled from Istio's chart repository into
# $HOME/.cache/meshproof (see harness/internal/testsupport.IstioCharts).
ifneq ($(wildcard ../shared/istio-charts/.),)
export MESHPROOF_ISTIO_CHARTS ?= $(abspath ../shared/istio-charts)
endif
SCENARIOS ?= scenarios.yaml
REPORTS ?= reports
# ISTIO_VERSION, when set, overrides the Istio version of every cluster.
ISTIO_VERSION ?=
GINKGO_FLAGS ?=
# More meshproof run flags for make rehearse, e.g. '--parallel 1'.
REHEARSE_FLAGS ?=
TEST_TIMEOUT ?= 30m
# Test packages run at once, half of them from each list below. Most of
# their time is spent waiting on API servers, local clusters and
# rehearsals, not computing, so twice the cores' count keeps two cores busy.
TEST_PACKAGES ?= 4
# The tests' Go processes (test binaries, and through the environment they
# pass on, the local clusters' kube-apiservers, etcds, controllers and
# istiods) collect garbage at 4x their live heap rather than 2x: measured
# on TestDefaultScenariosPass and TestAmbientMigrationExample together, 13%
# less CPU for all their processes (kube-apiserver 17% less), for a peak
# RSS of 4.5 GiB instead of 2.8 GiB. The CPU, not the memory, bounds make
# test on a 2-core runner. A GOGC of your own wins.
TEST_GOGC ?= $(or $(GOGC),400)
# go test caches a package's result and runs its tests again only when its
# test binary, the environment variables or the files its tests read have
# changed (the local stack's binaries are exec'd from paths named by their
# versions). These packages' tests read what the cache cannot see, so they
# run every time (-count=1); internal/repocheck checks that a package whose
# tests run go or need CAP_NET_RAW is listed here.
#   harness/rehearsal           builds cmd/meshproof in a child go build (its
#                               main package is not in the test binary), and
#                               needs CAP_NET_RAW for the wire witness
#   meshtest                    runs go tool test2json and actionlint, whose
#                               versions go.mod pins outside the test binary
#   harness/oracle/conformance, harness/internal/probe,
#   harness/internal/local/envoy
#                               build fixtures/echo in a child go build
#                               (testsupport.EchoBinary; xdstest.Start for a
#                               pod outside the mesh serving gRPC)
#   cmd/meshproof               builds itself stamped with the commit, which
#                               git knows and the test binary does not
#   fixtures/echo, fixtures/echo/wire, harness/internal/wire
#                               whether the process has CAP_NET_RAW decides
#                               what their wire witness tests do
#   harness/internal/cluster    asks the machine's container engine
#   harness/internal/local/binaries
#                               go list reads the wrapper modules' go.sum and
#                               module graph
#   suites/spec                 go run builds testdata/tiny, not in the binary
#   internal/repocheck          go list reads the whole tree
UNCACHED_TEST_PACKAGES = ./harness/rehearsal ./meshtest ./harness/oracle/conformance \
	./harness/internal/probe ./harness/internal/local/envoy ./cmd/meshproof ./fixtures/echo ./fixtures/echo/wire ./harness/internal/wire \
	./harness/internal/cluster ./harness/internal/local/binaries ./suites/spec ./internal/repocheck
# go test starts packages in the order it is given them: the longest ones
# (each minutes of API servers, Helm installs and local clusters) go
# first, so that none of them starts last and runs alone at the end. The
# uncached list above starts with its own long ones.
SLOW_TEST_PACKAGES = ./harness/internal/istio ./harness/internal/engine \
	./harness/internal/local/cluster ./harness/internal/local/dataplane
# Test binaries are linked by Go's own linker: a dependency (kustomize, via
# Helm) imports package plugin, whose C part makes go choose the system
# linker, which costs a test binary half again as much CPU; nothing in the
# tests uses plugin. Child go builds in the tests inherit it through GOFLAGS.
TEST_GOFLAGS = $(strip $(shell $(GO) env GOFLAGS) -ldflags=-linkmode=internal)

.PHONY: test test-packages test-cached test-uncached binaries compile-suites test-examples test-examples-mesh test-examples-others e2e rehearse validate lint generate envtest clean

# The local stack's binaries are built (first use only) beside the lint,
# then the package tests run, and beside them (not after them) the e2e
# suites' compilation and the go test examples.
test:
	@$(MAKE) --no-print-directory -j2 lint binaries
	@$(MAKE) --no-print-directory -j5 test-uncached test-cached compile-suites test-examples-mesh test-examples-others

test-packages: test-uncached test-cached

# envtest binaries (kube-apiserver, etcd) are built from source once and
# cached; a user's own KUBEBUILDER_ASSETS is used as it is.
KUBEBUILDER_ASSETS_FROM_CACHE = KUBEBUILDER_ASSETS="$$($(GO) run ./harness/internal/local/binaries/assets)" && export KUBEBUILDER_ASSETS

test-uncached:
	@$(KUBEBUILDER_ASSETS_FROM_CACHE) && export GOFLAGS="$(TEST_GOFLAGS)" GOGC=$(TEST_GOGC) && set -x && \
	$(GO) test -count=1 -p $$(( ($(TEST_PACKAGES) + 1) / 2 )) -timeout $(TEST_TIMEOUT) $(UNCACHED_TEST_PACKAGES)

test-cached:
	@$(KUBEBUILDER_ASSETS_FROM_CACHE) && export GOFLAGS="$(TEST_GOFLAGS)" GOGC=$(TEST_GOGC) && \
	uncached="$$($(GO) list $(UNCACHED_TEST_PACKAGES))" && \
	cached="$$($(GO) list $(SLOW_TEST_PACKAGES) ./... | grep -vxF "$$uncached")" && set -x && \
	$(GO) test -p $$(( $(TEST_PACKAGES) / 2 )) -timeout $(TEST_TIMEOUT) $$cached

# Every binary of the local stack (kube-apiserver, etcd, the local
# cluster's controllers, kwok, istiod, pilot-agent), built from source on
# first use into $$HOME/.cache/meshproof, two wrapper modules at a time.
binaries:
	$(GO) run ./harness/internal/local/binaries/assets local-cluster istiod >/dev/null

# meshproof inside a user's own go test (examples/gotest, a module of its
# own, README: Use it from go test), rehearsed so that it cannot rot: the
# default scenarios as subtests (a -run selection of three of them, of three
# kinds: every default scenario is rehearsed by harness/rehearsal's
# TestDefaultScenariosPass and make rehearse, and running them all here
# again costs two more minutes of both cores), an e2e-framework feature on
# its environment's cluster, and gotestsum's JUnit of a -run selection.
EXAMPLE_SCENARIOS = ^TestMesh$$/^(strict|port-level-override|proxyless-grpc)$$
test-examples: test-examples-mesh test-examples-others

test-examples-mesh:
	cd examples/gotest && GOFLAGS="$(TEST_GOFLAGS)" GOGC=$(TEST_GOGC) MESHPROOF_REHEARSE=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '$(EXAMPLE_SCENARIOS)' .

test-examples-others:
	cd examples/gotest && GOFLAGS="$(TEST_GOFLAGS)" GOGC=$(TEST_GOGC) MESHPROOF_REHEARSE=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./ci ./e2eframework

# The e2e suites need a cluster; here they are only compiled, so they cannot rot.
compile-suites:
	GOFLAGS="$(TEST_GOFLAGS)" $(GO) test -tags e2e -count=1 -run '^$$' ./suites/...

e2e:
	$(GO) tool ginkgo -tags e2e -v --timeout 2h $(GINKGO_FLAGS) ./suites/mtls -- \
		--scenarios $(abspath $(SCENARIOS)) --reports $(abspath reports) $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))

# The first rehearsal builds the local cluster's binaries from source
# (minutes; cached under $$HOME/.cache/meshproof).
rehearse:
	$(GO) run ./cmd/meshproof run $(SCENARIOS) --reports $(REPORTS) --rehearse $(REHEARSE_FLAGS)

validate:
	$(GO) run ./cmd/meshproof validate $(SCENARIOS)

lint:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	$(GO) mod tidy -diff
	cd examples/gotest && $(GO) vet ./... && { $(GO) mod tidy -diff || { echo "examples/gotest's go.mod or go.sum lags meshproof's: run make generate"; exit 1; }; }
	$(GO) tool actionlint .github/workflows/*.yaml
	@# Dead code: a function no test and no command reaches. Internal
	@# packages and commands only; the public packages are the library API
	@# users call (examples/gotest), which this module need not reach.
	@out="$$($(GO) tool deadcode -test -filter '^github.com/meshproof/meshproof/(cmd|internal|harness/internal)/' ./...)"; \
	if [ -n "$$out" ]; then echo "unreachable functions (delete them, or use them):"; echo "$$out"; exit 1; fi

# Regenerates the files generated from the scenario API types, the
# README's Layout section from the package docs, and examples/gotest's
# go.mod and go.sum from meshproof's.
generate:
	$(GO) test ./harness/scenario -run 'IsCurrent' -update
	$(GO) test ./internal/repocheck -run 'LayoutIsCurrent' -update
	@# The examples' module follows meshproof's dependencies (a replace).
	cd examples/gotest && $(GO) mod tidy

envtest:
	$(GO) run ./harness/internal/local/binaries/assets

clean:
	find reports -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
