// Package conformance holds the conformance matrices of meshproof's oracle
// (harness/oracle) against Istio itself, on a local cluster with the real
// istiod (harness/internal/local/cluster WithIstiod). The proxyless matrix
// runs a real pilot-agent per workload in Istio's grpc-agent mode and the
// real echo binary's grpc-go xDS server and client over a matrix of
// policies. The ambient matrix runs Istio's ambient profile and decides
// every pair with an ambient side with the rehearsal's simulated ztunnels,
// from the workloads and authorizations istiod serves them (harness/
// internal/local/ztunnel). Every cell where Istio does something else than
// the oracle predicts fails the test, naming the cell. The package has
// tests only.
package conformance
