package scenario

// This file holds the scenario language's API types. The JSON schema
// (scenarios.schema.json) and the README's scenario reference are generated
// from these declarations and their doc comments: the comment on a type or
// field is its description, so write it for a user.

// APIVersion is the only apiVersion this loader understands.
const APIVersion = "meshproof.dev/v1alpha1"

// SuiteKind is the kind of a scenario file's top-level document.
const SuiteKind = "Suite"

// Suite is a scenario file: the clusters to run on, the workloads to deploy
// and the scenarios that prove how the mesh treats traffic between them.
type Suite struct {
	// APIVersion must be meshproof.dev/v1alpha1.
	APIVersion string `json:"apiVersion"`
	// Kind must be Suite.
	Kind string `json:"kind"`
	// Defaults apply to every scenario and step unless they say otherwise.
	Defaults Defaults `json:"defaults,omitempty"`
	// Clusters meshproof creates or reuses. At least one.
	Clusters []Cluster `json:"clusters"`
	// Fixtures are the workloads deployed into every cluster.
	Fixtures Fixtures `json:"fixtures,omitempty"`
	// Scenarios are independent of each other: each starts without any of
	// meshproof's policies, runs its steps in order, and removes its policies.
	Scenarios []Scenario `json:"scenarios"`

	Source Source `json:"-"`
}

// Defaults tune probing and timeouts for the whole suite.
type Defaults struct {
	// Timeout bounds every step that sets no timeout of its own. Default 2m.
	Timeout Duration `json:"timeout,omitempty"`
	// SetupTimeout bounds cluster creation, Istio installation and fixture
	// deployment. Default 15m.
	SetupTimeout Duration `json:"setupTimeout,omitempty"`
	// Requests is the number of requests each client sends to each target in
	// one probe round. Default 3.
	Requests int `json:"requests,omitempty"`
	// Interval is the pause between two probe rounds. Default 2s.
	Interval Duration `json:"interval,omitempty"`
	// Consecutive is how many rounds in a row must match an expectation
	// before it holds; it absorbs the propagation delay of policy changes
	// without a fixed sleep. Default 3.
	Consecutive int `json:"consecutive,omitempty"`
	// RequestTimeout bounds a single probe request. Default 3s.
	RequestTimeout Duration `json:"requestTimeout,omitempty"`
	// WireWitness captures the probes' packets on every node (a pod per
	// node in the host network, with NET_RAW and NET_ADMIN) so that mtls
	// also needs every request encrypted on the wire and plaintext its
	// canary seen in cleartext: auto (on in the kind clusters meshproof
	// creates and in rehearsals, off on existing clusters), on, required
	// (setup fails where the witness cannot run) or off. Default auto.
	WireWitness WireWitness `json:"wireWitness,omitempty"`

	Source Source `json:"-"`
}

// Cluster is a Kubernetes cluster with Istio installed on it.
type Cluster struct {
	// Name of the cluster; scenarios refer to it. For kind it is also the
	// kind cluster name.
	Name string `json:"name"`
	// Provider says where the cluster comes from. Default kind.
	Provider Provider `json:"provider,omitempty"`
	// Kind configures a cluster created (or reused) with kind.
	Kind *KindCluster `json:"kind,omitempty"`
	// Existing points at a cluster that already runs; meshproof never deletes
	// it and removes only the objects labelled with its own run id.
	Existing *ExistingCluster `json:"existing,omitempty"`
	// Istio is the mesh installed on this cluster.
	Istio Istio `json:"istio"`

	Source Source `json:"-"`
}

// KindCluster configures a kind cluster.
type KindCluster struct {
	// NodeImage is the kind node image, e.g. kindest/node:v1.35.0. Default:
	// the image kind's library was released with.
	NodeImage string `json:"nodeImage,omitempty"`
	// Config is a kind cluster configuration (kind.x-k8s.io/v1alpha4), inline.
	Config string `json:"config,omitempty"`
	// ConfigFile is a path to a kind cluster configuration, relative to the
	// scenario file. Mutually exclusive with config.
	ConfigFile string `json:"configFile,omitempty"`
	// Reuse an existing kind cluster of the same name instead of failing;
	// a reused cluster is never deleted at the end of a run.
	Reuse bool `json:"reuse,omitempty"`

	Source Source `json:"-"`
}

// ExistingCluster selects a running cluster through a kubeconfig.
type ExistingCluster struct {
	// Kubeconfig is the path of the kubeconfig file, relative to the scenario
	// file. Default: $KUBECONFIG, then ~/.kube/config.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// Context in the kubeconfig. Default: its current context.
	Context string `json:"context,omitempty"`
	// Image says how the echo image reaches the cluster's nodes, which
	// cannot load a local archive the way kind's can. Required unless the
	// cluster can already pull meshproof's image.
	Image *ImageSource `json:"image,omitempty"`

	Source Source `json:"-"`
}

// ImageSource is where an existing cluster pulls the echo image from; set
// exactly one of push and ref. Pods use the image by digest.
type ImageSource struct {
	// Push is a repository, e.g. registry.example.com/team/meshproof-echo,
	// that meshproof pushes the echo image it builds to, with your
	// credentials (docker config and credential helpers, as docker uses).
	Push string `json:"push,omitempty"`
	// Ref is an echo image you already published, by tag or by digest; a
	// tag is resolved to its digest before anything is deployed.
	Ref string `json:"ref,omitempty"`

	Source Source `json:"-"`
}

// Istio is the Istio installation of a cluster.
type Istio struct {
	// Version of Istio to install, e.g. 1.30.3. Required.
	Version string `json:"version"`
	// Charts is a local directory holding the base/ and istiod/ charts of
	// that version (relative to the scenario file), for air-gapped use.
	// Default: the official Istio chart repository.
	Charts string `json:"charts,omitempty"`
	// Revision installs istiod as a revision; namespaces are then labelled
	// istio.io/rev=<revision> instead of istio-injection=enabled.
	Revision string `json:"revision,omitempty"`
	// Hub is the container registry of Istio's images. Default docker.io/istio.
	Hub string `json:"hub,omitempty"`
	// Tag of Istio's images. Default: the version.
	Tag string `json:"tag,omitempty"`
	// TrustDomain of the mesh; SPIFFE identities are
	// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
	// Default cluster.local.
	TrustDomain string `json:"trustDomain,omitempty"`
	// WorkloadCertTTL sets SECRET_TTL, the lifetime of workload
	// certificates, for istio-agent (sidecars renew at half of it) and, with
	// profile ambient, for ztunnel (it renews at half the validity counted
	// from NotBefore, which istiod backdates by 2m: more than 2m is needed).
	// Default: Istio's (24h).
	WorkloadCertTTL Duration `json:"workloadCertTTL,omitempty"`
	// PluggedCA makes meshproof generate a root and intermediate CA and
	// create the cacerts secret before istiod starts.
	PluggedCA bool `json:"pluggedCA,omitempty"`
	// Values are passed through to the istiod chart, deep-merged over
	// meshproof's own values.
	Values Values `json:"values,omitempty"`
	// Mode says whether meshproof owns Istio on this cluster: install
	// (install or upgrade the releases meshproof owns, remove them at the
	// end) or use-existing (test the control plane already installed;
	// install and uninstall nothing). Default: install for kind clusters,
	// use-existing for existing ones.
	Mode IstioMode `json:"mode,omitempty"`
	// AdoptReleases lets install mode take over Istio Helm releases that
	// meshproof did not install (it refuses to otherwise): they are
	// upgraded with meshproof's values but never uninstalled.
	AdoptReleases bool `json:"adoptReleases,omitempty"`
	// Profile is the profile of Istio's charts: default (sidecars) or
	// ambient, which also installs the istio-cni and ztunnel charts (in
	// Istio's documented order base, istiod, istio-cni, ztunnel) so that
	// workloads with dataPlane: ambient run without a sidecar; sidecar,
	// proxyless and out-of-mesh workloads keep working beside them. With
	// mode use-existing it says what the cluster runs: ambient then needs
	// the ztunnel DaemonSet there. Default: default.
	Profile IstioProfile `json:"profile,omitempty"`

	Source Source `json:"-"`
}

// Fixtures are the workloads meshproof deploys.
type Fixtures struct {
	// Namespace the workloads live in unless they name their own.
	// Default meshproof.
	Namespace string `json:"namespace,omitempty"`
	// Workloads to deploy. Default: service-a and service-b in the mesh,
	// legacy out of the mesh, each with ports http 8080 and http-alt 9090.
	Workloads []Workload `json:"workloads,omitempty"`

	Source Source `json:"-"`
}

// Workload is a Deployment with a Service and a ServiceAccount of its own,
// running meshproof's echo server; it is both a client and a server.
type Workload struct {
	// Name of the Deployment and Service; steps refer to it.
	Name string `json:"name"`
	// Namespace of the workload. Default: fixtures.namespace.
	Namespace string `json:"namespace,omitempty"`
	// ServiceAccount the workload runs as, which is its SPIFFE identity.
	// Default: the workload's name.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// DataPlane is what carries the workload's traffic: sidecar (Istio's
	// Envoy sidecar, injected), ambient (no sidecar: the pod is enrolled
	// with the label istio.io/dataplane-mode=ambient and its node's ztunnel
	// carries its traffic; needs istio.profile: ambient), proxyless (see
	// proxyless) or none (outside the mesh). Default: sidecar, or what the
	// older fields mesh and proxyless say, which stay valid.
	DataPlane DataPlane `json:"dataPlane,omitempty"`
	// Mesh says whether the workload is in the mesh; mesh: false is
	// dataPlane: none. Default true.
	Mesh *bool `json:"mesh,omitempty"`
	// Proxyless makes the workload a proxyless gRPC workload instead of one
	// with a sidecar: Istio's grpc-agent injection template runs pilot-agent
	// without Envoy, and the echo server's gRPC ports are grpc-go's xDS
	// server and client, which enforce the TLS istiod computes. Its ports
	// must all have protocol grpc (default: grpc 7070); mesh: false excludes
	// it. Its mTLS differs from a sidecar's (README: Proxyless gRPC): its
	// client sends mTLS only under a DestinationRule ISTIO_MUTUAL, and its
	// server serves PERMISSIVE as plaintext only, unless tlsModeLabel.
	Proxyless bool `json:"proxyless,omitempty"`
	// TLSModeLabel labels a proxyless workload's pods
	// security.istio.io/tlsMode=istio, which Istio's grpc-agent template
	// leaves to the user: sidecar clients' auto mTLS then sends it mTLS,
	// and istiod serves its PERMISSIVE ports as STRICT. Only for proxyless
	// workloads (Istio's sidecar template sets the label itself).
	TLSModeLabel bool `json:"tlsModeLabel,omitempty"`
	// Ports the workload serves. Default http 8080 and http-alt 9090; for
	// a proxyless workload grpc 7070.
	Ports []Port `json:"ports,omitempty"`

	Source Source `json:"-"`
}

// Port is a port of a workload's Service and the container port behind it.
type Port struct {
	// Name of the port, e.g. http. Istio selects a protocol by the name's
	// prefix (http, http-*, tcp-*, grpc-* ...) unless the Service says it
	// as appProtocol, which meshproof always writes from protocol.
	Name string `json:"name"`
	// Number of the Service port: clients call it, and expect rows, traffic
	// pairs and DestinationRule ports name it.
	Number int `json:"number"`
	// TargetPort is the container port the echo server listens on, which
	// the Service forwards number to; PeerAuthentication port-level modes
	// name it, since Istio matches them against the workload's port.
	// Default: number.
	TargetPort int `json:"targetPort,omitempty"`
	// Protocol the echo server serves on the port, written as the Service
	// port's appProtocol (which Istio prefers over the name): http, tcp or
	// grpc (the echo's gRPC service; a proxyless workload's ports are all
	// grpc). Default: what Istio reads from the name's prefix (tcp for tcp
	// or tcp-*, grpc for grpc or grpc-*), else http. Over tcp no
	// X-Forwarded-Client-Cert exists, so result mtls is witnessed from the
	// server's sidecar (README: How mTLS is proven over TCP).
	Protocol PortProtocol `json:"protocol,omitempty"`

	Source Source `json:"-"`
}

// Target is the container port behind the Service port.
func (p Port) Target() int {
	if p.TargetPort == 0 {
		return p.Number
	}
	return p.TargetPort
}

// Scenario is an ordered list of steps run against one cluster.
type Scenario struct {
	// Name of the scenario; unique in the file. A matrix scenario's
	// expansions are named name[var=value,...].
	Name string `json:"name"`
	// Labels select scenarios (ginkgo --label-filter).
	Labels []string `json:"labels,omitempty"`
	// Cluster the scenario runs on. Default: the only cluster.
	Cluster string `json:"cluster,omitempty"`
	// Matrix expands the scenario once per combination of its variables;
	// ${var} in any string of the steps is replaced by the value.
	Matrix *Matrix `json:"matrix,omitempty"`
	// Steps run in order; a failed step ends the scenario.
	Steps []Step `json:"steps"`

	// MatrixValues are the variables of this expansion of a matrix scenario.
	MatrixValues map[string]string `json:"-"`

	path string // YAML path of the scenario in its file
	// Source is where the scenario was written, for error messages.
	Source Source `json:"-"`
}

// Step is one action or assertion; exactly one of its kinds is set.
type Step struct {
	// Name of the step, shown in reports. Default: derived from its kind.
	Name string `json:"name,omitempty"`
	// Timeout of the step. Default: defaults.timeout.
	Timeout Duration `json:"timeout,omitempty"`
	// WireWitness overrides defaults.wireWitness for this step's probes:
	// off stops judging them on the wire; on or required turn the witness
	// on (required fails the setup where it cannot run).
	WireWitness WireWitness `json:"wireWitness,omitempty"`
	// MTLS replaces the mesh's authentication policies with the ones given;
	// the previous step's policies are removed.
	MTLS *MTLSStep `json:"mtls,omitempty"`
	// Expect asserts the result of traffic between workloads.
	Expect *ExpectStep `json:"expect,omitempty"`
	// Rotate waits for a workload certificate rotation and checks it.
	Rotate *RotateStep `json:"rotate,omitempty"`
	// Restart restarts workloads and waits for their rollout.
	Restart *RestartStep `json:"restart,omitempty"`
	// Wait waits for workloads to be ready, or for a duration.
	Wait *WaitStep `json:"wait,omitempty"`
	// Upgrade upgrades Istio under continuous traffic.
	Upgrade *UpgradeStep `json:"upgrade,omitempty"`
	// RotateRoot rotates the mesh's root CA under continuous traffic
	// (needs istio.pluggedCA).
	RotateRoot *RotateRootStep `json:"rotateRoot,omitempty"`
	// Transition changes the mTLS policies under continuous traffic and
	// measures how the mesh converges.
	Transition *TransitionStep `json:"transition,omitempty"`
	// MoveDataPlane moves workloads from sidecars to ambient (or back)
	// under continuous traffic, as Istio's migration guide does.
	MoveDataPlane *MoveDataPlaneStep `json:"moveDataPlane,omitempty"`

	// Source is where the step was written, for error messages.
	Source Source `json:"-"`
}

// MTLSStep is the complete authentication state of the mesh after the step.
type MTLSStep struct {
	// PeerAuthentications to apply (server side: what a workload accepts).
	PeerAuthentications []PeerAuthentication `json:"peerAuthentications,omitempty"`
	// DestinationRules to apply (client side: what a client sends). None
	// means Istio's auto mTLS.
	DestinationRules []DestinationRule `json:"destinationRules,omitempty"`

	Source Source `json:"-"`
}

// PeerAuthentication is a security.istio.io/v1 PeerAuthentication.
type PeerAuthentication struct {
	// Scope: mesh (in Istio's root namespace), namespace, or workload.
	Scope PolicyScope `json:"scope"`
	// Namespace for scope namespace. Default: fixtures.namespace.
	Namespace string `json:"namespace,omitempty"`
	// Workload selected by a workload-scoped policy.
	Workload string `json:"workload,omitempty"`
	// Mode of mutual TLS.
	Mode MTLSMode `json:"mode"`
	// Ports override the mode per port (workload scope only).
	Ports []PortMode `json:"ports,omitempty"`

	// Source is where the policy was written, for error messages.
	Source Source `json:"-"`
}

// PortMode is a port-level mTLS override.
type PortMode struct {
	// Port is a container port of the workload (a port's targetPort, which
	// is its number unless set): Istio matches port-level modes against the
	// port the workload listens on, not the Service port.
	Port int `json:"port"`
	// Mode of mutual TLS on that port.
	Mode MTLSMode `json:"mode"`

	Source Source `json:"-"`
}

// DestinationRule is a networking.istio.io/v1 DestinationRule setting the
// client-side TLS mode towards a workload, or towards every service.
type DestinationRule struct {
	// Scope: workload (a rule for the workload's Service, in its namespace)
	// or mesh (host "*" in Istio's root namespace, as Istio's own global
	// rule: every client uses it towards every service that has no
	// DestinationRule of its own, in the client's or the service's
	// namespace; a workload rule shadows it entirely, on every port).
	// Default workload.
	Scope DestinationRuleScope `json:"scope,omitempty"`
	// Workload whose service the rule applies to; scope workload only.
	Workload string `json:"workload,omitempty"`
	// Mode of client-side TLS.
	Mode TLSMode `json:"mode"`
	// Port limits the rule to one Service port (a port's number, not its
	// targetPort): Istio matches portLevelSettings against the port clients
	// call. On a mesh-wide rule it is that port of every service.
	Port int `json:"port,omitempty"`

	// Source is where the rule was written, for error messages.
	Source Source `json:"-"`
}

// ExpectStep is a table of expected outcomes, or auto (reserved: the
// outcome predicted from the policies, not implemented yet).
type ExpectStep struct {
	// Table of expectations.
	Table []Expectation `json:"-"`
	// Auto is set by `expect: auto`.
	Auto bool `json:"-"`
}

// Expectation is one row of an expect table.
type Expectation struct {
	// From is the client workload.
	From string `json:"from"`
	// To is the server workload.
	To string `json:"to"`
	// Port of the server's Service (a port's number). Default: its first port.
	Port int `json:"port,omitempty"`
	// Result expected: mtls, plaintext or fail.
	Result Result `json:"result"`
	// Reason a fail is expected for: reset, refused, timeout, eof, tls, dns,
	// upstream-503 or http-<code>; on a grpc port also unavailable or
	// grpc-<code> (grpc-permission-denied, ...). Default: any reason.
	Reason string `json:"reason,omitempty"`

	// Source is where the row was written, for error messages.
	Source Source `json:"-"`
}

// RotateStep waits for a workload's certificate to rotate.
type RotateStep struct {
	// Workload whose served certificate must rotate.
	Workload string `json:"workload"`
	// Within is how long the rotation may take. Default: the step timeout.
	Within Duration `json:"within,omitempty"`

	Source Source `json:"-"`
}

// RestartStep restarts workloads (a rollout restart) and waits for them.
type RestartStep struct {
	// Workloads to restart.
	Workloads []string `json:"workloads"`

	Source Source `json:"-"`
}

// WaitStep waits for workloads to be ready, or for a fixed duration.
type WaitStep struct {
	// Workloads that must be rolled out and ready.
	Workloads []string `json:"workloads,omitempty"`
	// Duration to wait; prefer workloads, which wait exactly as long as needed.
	Duration Duration `json:"duration,omitempty"`

	Source Source `json:"-"`
}

// Traffic is the continuous probing that runs through a transition,
// upgrade, root rotation or move between data planes.
type Traffic struct {
	// Pairs to probe. Default: every in-mesh client to every other in-mesh
	// workload, on its first port.
	Pairs []Pair `json:"pairs,omitempty"`
	// Every is the probing period of each client. Default 500ms.
	Every Duration `json:"every,omitempty"`
	// MaxFailures is how many failed requests the step tolerates. Default 0.
	MaxFailures int `json:"maxFailures,omitempty"`

	Source Source `json:"-"`
}

// Pair is a client, a server and a port.
type Pair struct {
	// From is the client workload.
	From string `json:"from"`
	// To is the server workload.
	To string `json:"to"`
	// Port of the server. Default: its first port.
	Port int `json:"port,omitempty"`

	Source Source `json:"-"`
}

// TransitionStep applies new policies while traffic flows, records the
// timeline of every pair and reports how long the mesh took to converge.
type TransitionStep struct {
	// To is the complete policy set after the transition, as in an mtls step.
	To MTLSStep `json:"to"`
	// Observe is how long traffic is sampled after the change. Default 30s.
	Observe Duration `json:"observe,omitempty"`
	// NoPlaintextAfter fails the step if a server that the new policies make
	// STRICT still accepts plaintext this long after the change.
	NoPlaintextAfter Duration `json:"noPlaintextAfter,omitempty"`
	// Traffic probed through the transition.
	Traffic Traffic `json:"traffic,omitempty"`

	Source Source `json:"-"`
}

// MoveDataPlaneStep moves workloads from one data plane to another while
// traffic flows, as Istio's "Migrate from sidecars to ambient" guide does:
// each workload's pod template is labelled istio.io/dataplane-mode=ambient
// and sidecar.istio.io/inject=false (or loses both labels, to move back to
// a sidecar), which rolls its pods; every moved pod must then be on its new
// data plane (enrolled by istio-cni and without an istio-proxy container,
// or injected with one). The traffic is judged as a transition's: each
// request against the outcome predicted for the data planes before the
// move, then for those after it, and no request may fail beyond
// maxFailures. Later steps, expect: auto and meshproof predict see the
// workloads on their new data plane. At the end of the scenario the
// workloads go back to the data plane the file gives them, unless the
// scenario ran in namespaces of its own (which are removed).
type MoveDataPlaneStep struct {
	// Workloads to move: sidecar workloads when moving to ambient, ambient
	// ones when moving to sidecar. A proxyless or out-of-mesh workload
	// cannot be moved.
	Workloads []string `json:"workloads"`
	// To is the data plane they move to: ambient (needs istio.profile:
	// ambient) or sidecar.
	To DataPlane `json:"to"`
	// Within bounds the move: the new pods rolled out and each on its new
	// data plane. Default: the step's timeout less observe.
	Within Duration `json:"within,omitempty"`
	// Observe is how long traffic is still sampled once the move is done,
	// so that every pair is seen on the new data planes. Default 10s.
	Observe Duration `json:"observe,omitempty"`
	// Traffic probed through the move. Its pairs may not use a tcp port of
	// a moved workload: how a TCP connection is witnessed depends on the
	// server's data plane, which is mixed while the pods roll.
	Traffic Traffic `json:"traffic,omitempty"`

	Source Source `json:"-"`
}

// UpgradeMethod is how Istio is upgraded.
type UpgradeMethod string

const (
	// UpgradeInPlace upgrades the base and istiod releases in place.
	UpgradeInPlace UpgradeMethod = "inPlace"
	// UpgradeCanary installs a second istiod as a revision, moves the
	// namespaces to it, restarts the workloads and removes the old one.
	UpgradeCanary UpgradeMethod = "canary"
)

// Values lists the valid upgrade methods.
func (UpgradeMethod) Values() []string {
	return []string{string(UpgradeInPlace), string(UpgradeCanary)}
}

// UpgradeStep upgrades Istio while traffic flows, restarts the workloads
// onto the new proxies and checks that none was lost.
type UpgradeStep struct {
	// To is the Istio version to upgrade to, e.g. 1.30.3.
	To string `json:"to"`
	// Method of the upgrade. Default inPlace.
	Method UpgradeMethod `json:"method,omitempty"`
	// Revision of the new istiod for a canary upgrade. Default: the version
	// with dots as dashes, e.g. 1-30-3.
	Revision string `json:"revision,omitempty"`
	// Charts is a local directory with the new version's base/ and istiod/
	// charts, relative to the scenario file. Default: the official repository.
	Charts string `json:"charts,omitempty"`
	// Traffic probed through the upgrade.
	Traffic Traffic `json:"traffic,omitempty"`

	Source Source `json:"-"`
}

// RotateRootStep replaces the mesh's root CA with Istio's multi-root
// procedure (both roots trusted, new intermediate, old root removed) while
// traffic flows, and checks that every workload ends on the new root.
type RotateRootStep struct {
	// Within bounds each phase of the rotation. Default: the step timeout.
	Within Duration `json:"within,omitempty"`
	// Traffic probed through the rotation.
	Traffic Traffic `json:"traffic,omitempty"`

	Source Source `json:"-"`
}

// Matrix expands a scenario over combinations of values.
type Matrix struct {
	// Variables maps a variable name to its values; every combination is a
	// scenario.
	Variables map[string][]string `json:"-"`
	// Exclude removes the combinations that match an entry (every variable
	// it names has its value), before include applies, as in GitHub
	// Actions. An entry that matches no combination is an error.
	Exclude []map[string]string `json:"exclude,omitempty"`
	// Include adds variables to matching combinations, or adds combinations.
	Include []map[string]string `json:"include,omitempty"`

	order      []string   // variable names in file order
	excludeAt  []Position // where each exclude entry was written
	excludeErr []int      // indexes of exclude entries that match no combination
}
