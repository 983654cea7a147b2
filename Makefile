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
TEST_TIMEOUT ?= 30m
# Test packages run at once. Most of their time is spent waiting on API
# servers, local clusters and rehearsals, not computing, so twice the
# cores' count keeps two cores busy.
TEST_PACKAGES ?= 4
# go test starts packages in the order it is given them: the longest ones
# (each several minutes of local clusters, istiod and Helm installs) go
# first, so that none of them starts last and runs alone at the end.
SLOW_TEST_PACKAGES = ./harness/rehearsal ./harness/internal/istio ./harness/internal/engine \
	./harness/internal/local/cluster ./harness/oracle/conformance ./meshtest

.PHONY: test test-packages compile-suites test-examples e2e rehearse validate lint generate envtest clean

# The package tests, and beside them (not after them) the e2e suites'
# compilation and the go test examples.
test: lint
	@$(MAKE) --no-print-directory -j3 test-packages compile-suites test-examples

test-packages:
	@# envtest binaries (kube-apiserver, etcd) are built from source once and
	@# cached; a user's own KUBEBUILDER_ASSETS is used as it is.
	KUBEBUILDER_ASSETS="$$($(GO) run ./harness/internal/local/binaries/assets)" && export KUBEBUILDER_ASSETS && \
	$(GO) test -count=1 -p $(TEST_PACKAGES) -timeout $(TEST_TIMEOUT) $(SLOW_TEST_PACKAGES) ./...

# meshproof inside a user's own go test (examples/gotest, a module of its
# own, README: Use it from go test), rehearsed so that it cannot rot: the
# default scenarios as subtests, an e2e-framework feature on its
# environment's cluster, and gotestsum's JUnit of a -run selection.
test-examples:
	cd examples/gotest && MESHPROOF_REHEARSE=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# The e2e suites need a cluster; here they are only compiled, so they cannot rot.
compile-suites:
	$(GO) test -tags e2e -count=1 -run '^$$' ./suites/...

e2e:
	$(GO) tool ginkgo -tags e2e -v --timeout 2h $(GINKGO_FLAGS) ./suites/mtls -- \
		--scenarios $(abspath $(SCENARIOS)) --reports $(abspath reports) $(if $(ISTIO_VERSION),--istio-version $(ISTIO_VERSION))

# The first rehearsal builds the local cluster's binaries from source
# (minutes; cached under $$HOME/.cache/meshproof).
rehearse:
	$(GO) run ./cmd/meshproof run $(SCENARIOS) --reports $(REPORTS) --rehearse

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
