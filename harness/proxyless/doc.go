// Package proxyless holds the conformance test of meshproof's proxyless gRPC
// oracle rules (harness/oracle, proxyless.go) against Istio itself: the real
// istiod of a local cluster (harness/localcluster WithIstiod), a real
// pilot-agent per workload in Istio's grpc-agent mode, and the real echo
// binary's grpc-go xDS server and client, over a matrix of policies. Every
// cell where Istio does something else than the oracle predicts fails the
// test, naming the cell.
package proxyless
