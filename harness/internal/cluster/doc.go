// Package cluster provides the Kubernetes clusters meshproof runs against,
// kind or existing, as e2e-framework cluster providers
// (support.E2EClusterProvider).
//
//   - Kind creates, reuses and deletes kind clusters through kind's Go
//     library (sigs.k8s.io/kind/pkg/cluster). No kind binary is run or
//     installed. Create waits until every node and every kube-system pod is
//     Ready; the kubeconfig is written with mode 0600 into the run's
//     directory; a reused cluster is kept unless WithDeleteReused is given;
//     LoadImageArchive loads an image tarball into every node in parallel;
//     ExportLogs collects kind's node logs.
//   - Existing uses a cluster meshproof did not create, through a kubeconfig
//     context, loaded as kubectl does ($KUBECONFIG, then ~/.kube/config,
//     when no file is named). It never deletes the cluster; what a run created there is
//     removed with deploy.Sweep(deploy.RunSelector(runID)), which selects by
//     the run-id label of package ownership across every resource type.
//
// Before any other work, every Kind operation checks that a container engine
// answers (kind's own detection only finds a client binary); without one it
// returns a single error wrapping ErrNoContainerRuntime that says what is
// missing and how to fix it.
//
// # What is tested where
//
// The unit tests run without a container engine: options and defaults,
// cluster name rules, the runtime check against the real machine (they
// assert whichever outcome `docker info` / `podman info` independently
// shows), kubeconfig modes, the reuse decision, Create's flow and Destroy's
// keep-or-delete decision against a fake kind provider and a fake API
// server, the readiness wait (including the error naming what is not
// ready), parallel archive loading into fake nodes, the Existing provider's
// kubeconfig handling.
//
// Only a machine with a running Docker or Podman engine can check the parts
// that are kind itself: that a cluster is really created from the node image
// and kind configuration (kind parses and validates the configuration only
// inside its Create, so a malformed one is reported there), that its nodes and
// kube-system pods become Ready within the timeout, that an existing cluster
// is found by kind's List and reused, that Delete removes the node
// containers, that ExportLogs writes the node logs, and that LoadImageArchive
// makes an image available to the nodes' containerd. meshproof's end-to-end
// suites exercise these.
package cluster
