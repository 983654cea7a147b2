// Package envoy evaluates what Envoy does with a connection or request,
// given the configuration istiod served the proxies on its way (an
// xds.Snapshot per sidecar): which listener takes it, which filter chain
// matches, what the chain's transport socket demands, which route and
// cluster an HTTP request or a TCP connection goes to, which endpoint and
// transport socket the cluster picks, and what the application and the
// client see in the end (the echo's request with the X-Forwarded-Client-Cert
// header the server's connection manager composes, a local 503, a closed
// connection). Every step cites the Envoy documentation (and Envoy's source
// where the documentation is silent) it follows, and Istio's source for
// what Istio's own extensions do; see refs.go.
//
// Every answer says which listener, filter chain, route and cluster decided
// it (Trace). Where the configuration has a shape the evaluator does not
// know (a matcher API, a header-matched route, an Istio extension that
// would change the outcome, an SDS secret it has no certificate for), the
// answer is an *Undecidable error naming it, never a guess.
//
// What it does not decide is Envoy's runtime: TLS versions and ciphers,
// timeouts, retries, connection pools, draining, outlier detection and the
// timing of configuration updates. Those only a real Envoy shows (make e2e).
package envoy
