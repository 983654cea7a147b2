// Package ztunnel is a simulated ztunnel, Istio's per-node proxy of ambient
// mode, for rehearsals: no ztunnel runs on these machines, but each
// ztunnel pod of a local cluster gets what its ztunnel would hold and
// decides as it would from that alone.
//
// A Ztunnel connects to the real istiod as ztunnel does: the incremental
// (delta) aggregated discovery protocol, node
// ztunnel~<pod IP>~<pod>.<namespace>~<namespace>.svc.cluster.local with
// ztunnel's metadata (its node, namespace, ServiceAccount and cluster),
// subscribed to every istio.workload.Address (workloads and services) and
// istio.security.Authorization istiod serves (ztunnel's src/xds/client.rs
// and src/config.rs). From that state alone it decides, for the ambient
// pods of its node, what the real ztunnel's code would: the protocol
// towards a destination (HBONE to a workload istiod marks HBONE, plain TCP
// otherwise: src/proxy/outbound.rs), and whether a connection is allowed
// (src/state.rs assert_rbac with src/rbac.rs matching, the source's
// identity present only for HBONE). It counts what it decides in
// ztunnel's own metrics (src/proxy/metrics.rs: istio_tcp_connections_*
// with ztunnel's labels, served as ztunnel's admin server serves them on
// port 15020) and holds the workload certificates its pods need, issued by
// istiod's CA for ztunnel's ServiceAccount impersonating each workload
// identity, as src/identity/caclient.rs asks them (ImpersonatedIdentity),
// renewed at half their life (src/tls/certificate.rs refresh_at), dumped
// as ztunnel's admin port 15000 dumps them (src/admin.rs).
//
// Decoding: the resources are protobuf messages of istio.io/istio's
// pkg/workloadapi and pkg/workloadapi/security, which must not enter the
// main module (it builds istiod only in a tool module). A separate binary
// in that tool module would add a process and a wire format between this
// package and its data for a handful of fields, so the fields ztunnel's
// decisions need are decoded here with protowire, by the field numbers of
// workload.proto and authorization.proto at the pinned istio.io/istio
// commit (wire.go lists them); fields that would change a decision and are
// not modelled (waypoints, extensions, network gateways) make the
// decision undecidable rather than guessed. A test holds the decoder to
// what the real istiod serves.
package ztunnel
