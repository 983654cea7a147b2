// Package xds is an xDS client that asks a real istiod for a pod's data
// plane configuration the way the pod's own proxy would, so that a
// rehearsal's answers come from what Istio computes rather than from
// meshproof's model of Istio.
//
// Stream is the transport: one aggregated discovery stream (state of the
// world, as Envoy sidecars speak it, or incremental, as ztunnel does) over
// any resource types, kept open across istiod restarts, ACKing what its
// Handler accepts and NACKing what it rejects with the reason as
// error_detail. Sidecar is its user for an Envoy sidecar: the node
// pilot-agent would present for the pod (SidecarNode), the subscriptions
// in Envoy's order (clusters, their endpoints, listeners, their routes),
// every resource decoded and validated as Envoy does before it accepts it,
// and the snapshots it went through, each with the push that made it and
// when that push arrived.
//
// Types come from go-control-plane; nothing of istio.io/istio is imported.
// Istio's own Envoy extensions (istio/proxy filters) are not decoded; a
// Snapshot lists their type URLs so that an evaluator meeting one can say
// it cannot decide.
package xds
