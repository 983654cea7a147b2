package scenario

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Provider is where a cluster comes from.
type Provider string

const (
	ProviderKind     Provider = "kind"
	ProviderExisting Provider = "existing"
)

// Values lists the valid providers.
func (Provider) Values() []string { return []string{string(ProviderKind), string(ProviderExisting)} }

// IstioMode is whether meshproof owns a cluster's Istio installation.
type IstioMode string

const (
	IstioInstall     IstioMode = "install"
	IstioUseExisting IstioMode = "use-existing"
)

// Values lists the valid Istio modes.
func (IstioMode) Values() []string { return []string{string(IstioInstall), string(IstioUseExisting)} }

// IstioProfile is the Helm profile Istio's charts are installed with.
type IstioProfile string

const (
	// ProfileDefault installs Istio for sidecars: the base and istiod charts.
	ProfileDefault IstioProfile = "default"
	// ProfileAmbient installs Istio's ambient mode beside sidecars, in the
	// order Istio documents: base, istiod (PILOT_ENABLE_AMBIENT), istio-cni
	// (which redirects enrolled pods' traffic to their node's ztunnel) and
	// ztunnel (the per-node proxy that carries ambient pods' traffic over
	// HBONE), all with profile ambient.
	ProfileAmbient IstioProfile = "ambient"
)

// Values lists the valid profiles.
func (IstioProfile) Values() []string {
	return []string{string(ProfileDefault), string(ProfileAmbient)}
}

// DataPlane is what carries a workload's traffic.
type DataPlane string

const (
	// DataPlaneSidecar: Istio's Envoy sidecar, injected into the pod.
	DataPlaneSidecar DataPlane = "sidecar"
	// DataPlaneAmbient: no sidecar; the pod is enrolled in ambient mode
	// (label istio.io/dataplane-mode=ambient) and its node's ztunnel carries
	// its traffic, over HBONE (HTTP CONNECT in mutual TLS, port 15008) to
	// other ambient and sidecar-capable peers.
	DataPlaneAmbient DataPlane = "ambient"
	// DataPlaneProxyless: Istio's grpc-agent injection; grpc-go configured
	// by istiod through pilot-agent, no Envoy.
	DataPlaneProxyless DataPlane = "proxyless"
	// DataPlaneNone: outside the mesh; the application's own plaintext.
	DataPlaneNone DataPlane = "none"
)

// Values lists the valid data planes.
func (DataPlane) Values() []string {
	return []string{string(DataPlaneSidecar), string(DataPlaneAmbient), string(DataPlaneProxyless), string(DataPlaneNone)}
}

// WireWitness is whether the wire witness watches the probes' packets: a
// capture that tells, per request, whether its canary crossed the network
// encrypted (TLS records) or in cleartext.
type WireWitness string

const (
	// WitnessAuto: on in the kind clusters meshproof creates and in
	// rehearsals, off on existing clusters.
	WitnessAuto WireWitness = "auto"
	// WitnessOn: watch; where the witness cannot run (admission refuses
	// its privileged pod, no CAP_NET_RAW) the run says so and requests
	// carry not-captured, which no verdict holds against them.
	WitnessOn WireWitness = "on"
	// WitnessRequired: watch, and fail the setup where the witness cannot
	// run.
	WitnessRequired WireWitness = "required"
	// WitnessOff: no capture; verdicts rest on what the mesh reports.
	WitnessOff WireWitness = "off"
)

// Values lists the valid wire witness settings.
func (WireWitness) Values() []string {
	return []string{string(WitnessAuto), string(WitnessOn), string(WitnessRequired), string(WitnessOff)}
}

// PolicyScope is where a PeerAuthentication applies.
type PolicyScope string

const (
	ScopeMesh      PolicyScope = "mesh"
	ScopeNamespace PolicyScope = "namespace"
	ScopeWorkload  PolicyScope = "workload"
)

// Values lists the valid scopes.
func (PolicyScope) Values() []string {
	return []string{string(ScopeMesh), string(ScopeNamespace), string(ScopeWorkload)}
}

// DestinationRuleScope is which services a DestinationRule names.
type DestinationRuleScope string

const (
	// DRScopeWorkload names one workload's Service.
	DRScopeWorkload DestinationRuleScope = "workload"
	// DRScopeMesh names every service: host "*" in Istio's root namespace.
	DRScopeMesh DestinationRuleScope = "mesh"
)

// Values lists the valid DestinationRule scopes.
func (DestinationRuleScope) Values() []string {
	return []string{string(DRScopeWorkload), string(DRScopeMesh)}
}

// MTLSMode is a PeerAuthentication mutual TLS mode, spelled as Istio's API
// spells it.
type MTLSMode string

const (
	ModeUnset      MTLSMode = "UNSET"
	ModeDisable    MTLSMode = "DISABLE"
	ModePermissive MTLSMode = "PERMISSIVE"
	ModeStrict     MTLSMode = "STRICT"
)

// Values lists the valid modes.
func (MTLSMode) Values() []string {
	return []string{string(ModeUnset), string(ModeDisable), string(ModePermissive), string(ModeStrict)}
}

// TLSMode is a DestinationRule client TLS mode, spelled as Istio's API
// spells it. No DestinationRule at all means auto mTLS.
type TLSMode string

const (
	TLSDisable     TLSMode = "DISABLE"
	TLSIstioMutual TLSMode = "ISTIO_MUTUAL"
	// TLSSimple originates one-way TLS (no client certificate).
	TLSSimple TLSMode = "SIMPLE"
	// TLSMutual needs a client certificate and key of the user's own; the
	// language has no field for them, so validation refuses it with
	// Istio's reason.
	TLSMutual TLSMode = "MUTUAL"
)

// Values lists the valid client TLS modes.
func (TLSMode) Values() []string {
	return []string{string(TLSDisable), string(TLSIstioMutual), string(TLSSimple), string(TLSMutual)}
}

// PortProtocol is the protocol a workload serves on a port.
type PortProtocol string

const (
	// ProtocolHTTP: HTTP/1.1; the server's sidecar adds
	// X-Forwarded-Client-Cert to requests that arrived over mutual TLS.
	ProtocolHTTP PortProtocol = "http"
	// ProtocolTCP: opaque TCP; Istio proxies the bytes without reading them.
	ProtocolTCP PortProtocol = "tcp"
	// ProtocolGRPC: the echo's gRPC service (HTTP/2); on a proxyless
	// workload grpc-go's xDS server, which returns the caller's SPIFFE ID
	// from its peer certificate.
	ProtocolGRPC PortProtocol = "grpc"
)

// Values lists the valid port protocols.
func (PortProtocol) Values() []string {
	return []string{string(ProtocolHTTP), string(ProtocolTCP), string(ProtocolGRPC)}
}

// istioNamePrefixes are the protocols Istio selects by a port name's prefix
// ("<protocol>[-<suffix>]", case-insensitive), from
// https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/
// and ConvertProtocol in istio/istio pkg/config/kube/conversion.go with
// protocol.Parse in pkg/config/protocol/instance.go.
var istioNamePrefixes = []string{"http", "http_proxy", "http2", "https", "tcp", "tls", "grpc", "mongo", "mysql", "redis", "udp"}

// NameProtocol is the protocol Istio would select for a port by its name
// alone ("" when the name selects none and Istio would sniff it).
func NameProtocol(name string) string {
	lower := strings.ToLower(name)
	// grpc-web is the one prefix with a dash of its own; Istio checks it
	// first, on the bare prefix.
	if strings.HasPrefix(lower, "grpc-web") {
		return "grpc-web"
	}
	prefix, _, _ := strings.Cut(lower, "-")
	if contains(istioNamePrefixes, prefix) {
		return prefix
	}
	return ""
}

// Result is the observed class of a request.
type Result string

const (
	// ResultMTLS: answered, and the server's sidecar saw a client certificate
	// (X-Forwarded-Client-Cert with the client's SPIFFE URI).
	ResultMTLS Result = "mtls"
	// ResultPlaintext: answered without mutual TLS.
	ResultPlaintext Result = "plaintext"
	// ResultFail: not answered (reset, refused, timeout, 503 ...).
	ResultFail Result = "fail"
)

// Values lists the valid results.
func (Result) Values() []string {
	return []string{string(ResultMTLS), string(ResultPlaintext), string(ResultFail)}
}

// FailReasons are the reasons a probe gives for a failed request, besides
// http-<code> and, for gRPC, GRPCFailReasons.
var FailReasons = []string{"reset", "refused", "timeout", "eof", "tls", "dns", "upstream-503"}

// GRPCFailReasons are the reasons only a gRPC call gives: unavailable (an
// UNAVAILABLE status no transport reason explains, e.g. an xDS target
// istiod does not know) and grpc-<code> for the other statuses but
// DEADLINE_EXCEEDED, which is timeout (fixtures/echo/echoapi's
// GRPCErrorReason).
var GRPCFailReasons = []string{"unavailable",
	"grpc-canceled", "grpc-unknown", "grpc-invalid-argument", "grpc-not-found", "grpc-already-exists",
	"grpc-permission-denied", "grpc-resource-exhausted", "grpc-failed-precondition", "grpc-aborted",
	"grpc-out-of-range", "grpc-unimplemented", "grpc-internal", "grpc-data-loss", "grpc-unauthenticated"}

// Duration is a time.Duration written as a Go duration string ("90s", "2m").
type Duration struct{ time.Duration }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// IsZero reports whether the duration was left unset.
func (d Duration) IsZero() bool { return d.Duration == 0 }

// Values is free-form configuration passed through to a Helm chart.
type Values map[string]any

// Position is a place in a scenario file.
type Position struct {
	File   string
	Line   int
	Column int
}

func (p Position) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// IsValid reports whether the position points into a file.
func (p Position) IsValid() bool { return p.Line > 0 }

// Source records where a mapping and each of its fields were written, so
// that a problem found after decoding (a dangling reference, a policy the API
// server rejects) is reported at the exact line and column.
type Source struct {
	Position
	fields map[string]Position
}

// At returns the position of a field's value, or of the mapping itself when
// the field was not written.
func (s Source) At(field string) Position {
	if p, ok := s.fields[field]; ok {
		return p
	}
	return s.Position
}

// has reports whether the field was written.
func (s Source) has(field string) bool {
	_, ok := s.fields[field]
	return ok
}

// WireWitnessOn is the wire witness setting in force on cluster c when no
// step says otherwise: defaults.wireWitness, with auto resolved (on for a
// kind cluster, off for an existing one; a rehearsal treats every cluster
// as one it creates). It is on, required or off.
func (s *Suite) WireWitnessOn(c *Cluster, rehearsal bool) WireWitness {
	switch w := s.Defaults.WireWitness; {
	case w == WitnessAuto || w == "":
		if rehearsal || c.Provider == ProviderKind {
			return WitnessOn
		}
		return WitnessOff
	default:
		return w
	}
}

// StepWireWitness is the setting for one step of a scenario on cluster c:
// the step's own when it sets one, else the cluster's (WireWitnessOn).
func (s *Suite) StepWireWitness(c *Cluster, st *Step, rehearsal bool) WireWitness {
	if st.WireWitness != "" && st.WireWitness != WitnessAuto {
		return st.WireWitness
	}
	return s.WireWitnessOn(c, rehearsal)
}

// DeployWireWitness is whether cluster c needs the witness at all, and
// how strictly: the strictest setting any of its steps runs with (off
// when none watches).
func (s *Suite) DeployWireWitness(c *Cluster, rehearsal bool) WireWitness {
	out := WitnessOff
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		if sc.Cluster != c.Name {
			continue
		}
		for j := range sc.Steps {
			switch s.StepWireWitness(c, &sc.Steps[j], rehearsal) {
			case WitnessRequired:
				return WitnessRequired
			case WitnessOn:
				out = WitnessOn
			}
		}
	}
	return out
}
