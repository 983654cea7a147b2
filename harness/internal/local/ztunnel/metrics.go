package ztunnel

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// Reporter and the label values ztunnel's metrics use (src/proxy/
// metrics.rs): every label not known is "unknown" (DefaultedUnknown),
// response_flags "-" when none.
const (
	ReporterSource      = "source"
	ReporterDestination = "destination"
	PolicyMutualTLS     = "mutual_tls"
	PolicyUnknown       = "unknown"
	unknown             = "unknown"
	noFlags             = "-"
	// FlagPolicyDenied is ResponseFlags::AuthorizationPolicyDenied.
	FlagPolicyDenied = "DENY"
	// FlagConnectionFailure is ResponseFlags::ConnectionFailure.
	FlagConnectionFailure = "CONNECT"
)

// Labels are ztunnel's CommonTrafficLabels, in their declaration order,
// which is the order prometheus-client writes them in.
type Labels struct {
	Reporter string

	SourceWorkload, SourceCanonicalService, SourceCanonicalRevision, SourceWorkloadNamespace string
	SourcePrincipal, SourceApp, SourceVersion, SourceCluster                                 string

	DestinationService, DestinationServiceNamespace, DestinationServiceName                                    string
	DestinationWorkload, DestinationCanonicalService, DestinationCanonicalRevision                             string
	DestinationWorkloadNamespace, DestinationPrincipal, DestinationApp, DestinationVersion, DestinationCluster string

	RequestProtocol, ResponseFlags, ConnectionSecurityPolicy string

	// Locality is written only once a source or destination workload set
	// it (OptionallyEncode); ztunnel sets it whenever one is known.
	Locality                                                     bool
	SourceRegion, SourceZone, DestinationRegion, DestinationZone string
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// pairs are the labels as ztunnel writes them.
func (l Labels) pairs() [][2]string {
	p := [][2]string{
		{"reporter", l.Reporter},
		{"source_workload", orUnknown(l.SourceWorkload)},
		{"source_canonical_service", orUnknown(l.SourceCanonicalService)},
		{"source_canonical_revision", orUnknown(l.SourceCanonicalRevision)},
		{"source_workload_namespace", orUnknown(l.SourceWorkloadNamespace)},
		{"source_principal", orUnknown(l.SourcePrincipal)},
		{"source_app", orUnknown(l.SourceApp)},
		{"source_version", orUnknown(l.SourceVersion)},
		{"source_cluster", orUnknown(l.SourceCluster)},
		{"destination_service", orUnknown(l.DestinationService)},
		{"destination_service_namespace", orUnknown(l.DestinationServiceNamespace)},
		{"destination_service_name", orUnknown(l.DestinationServiceName)},
		{"destination_workload", orUnknown(l.DestinationWorkload)},
		{"destination_canonical_service", orUnknown(l.DestinationCanonicalService)},
		{"destination_canonical_revision", orUnknown(l.DestinationCanonicalRevision)},
		{"destination_workload_namespace", orUnknown(l.DestinationWorkloadNamespace)},
		{"destination_principal", orUnknown(l.DestinationPrincipal)},
		{"destination_app", orUnknown(l.DestinationApp)},
		{"destination_version", orUnknown(l.DestinationVersion)},
		{"destination_cluster", orUnknown(l.DestinationCluster)},
		{"request_protocol", cmpOr(l.RequestProtocol, "tcp")},
		{"response_flags", cmpOr(l.ResponseFlags, noFlags)},
		{"connection_security_policy", cmpOr(l.ConnectionSecurityPolicy, PolicyUnknown)},
	}
	if l.Locality {
		p = append(p, [2]string{"source_region", orUnknown(l.SourceRegion)}, [2]string{"source_zone", orUnknown(l.SourceZone)},
			[2]string{"destination_region", orUnknown(l.DestinationRegion)}, [2]string{"destination_zone", orUnknown(l.DestinationZone)})
	}
	return p
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// withSource sets the source labels from a workload (with_source): not its
// principal, which only the connection's mutual TLS gives.
func (l *Labels) withSource(w *Workload) {
	if w == nil {
		return
	}
	l.SourceWorkload, l.SourceCanonicalService, l.SourceCanonicalRevision = w.WorkloadName, w.CanonicalName, w.CanonicalRevision
	l.SourceWorkloadNamespace, l.SourceApp, l.SourceVersion, l.SourceCluster = w.Namespace, w.CanonicalName, w.CanonicalRevision, w.ClusterID
	l.Locality = true
}

// withDestination sets the destination labels from a workload
// (with_destination), its principal being the identity istiod gives it.
func (l *Labels) withDestination(w *Workload) {
	if w == nil {
		return
	}
	l.DestinationWorkload, l.DestinationCanonicalService, l.DestinationCanonicalRevision = w.WorkloadName, w.CanonicalName, w.CanonicalRevision
	l.DestinationWorkloadNamespace, l.DestinationPrincipal = w.Namespace, w.Identity()
	l.DestinationApp, l.DestinationVersion, l.DestinationCluster = w.CanonicalName, w.CanonicalRevision, w.ClusterID
	l.Locality = true
}

// withService sets destination_service* (with_destination_service).
func (l *Labels) withService(s *Service) {
	if s == nil {
		return
	}
	l.DestinationService, l.DestinationServiceName, l.DestinationServiceNamespace = s.Hostname, s.Name, s.Namespace
}

func (l Labels) key() string {
	var b strings.Builder
	for _, p := range l.pairs() {
		b.WriteString(p[0] + "=" + p[1] + "\x00")
	}
	return b.String()
}

// metrics are ztunnel's traffic counters (Metrics::new): each family keyed
// by its label set.
type metrics struct {
	mu       sync.Mutex
	labels   map[string]Labels
	opened   map[string]uint64
	closed   map[string]uint64
	failed   map[string]uint64
	received map[string]uint64
	sent     map[string]uint64
}

func newMetrics() *metrics {
	return &metrics{labels: map[string]Labels{}, opened: map[string]uint64{}, closed: map[string]uint64{}, failed: map[string]uint64{},
		received: map[string]uint64{}, sent: map[string]uint64{}}
}

// record counts one connection as ztunnel's ConnectionResult does: opened
// when it is built (before its authorization), then closed with its
// result; a failure (a denial) also counts as failed, under the labels
// with its response flag; bytes under the labels it was opened with.
func (m *metrics) record(l Labels, flags string, received, sent uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	open := l.key()
	m.labels[open] = l
	m.opened[open]++
	m.received[open] += received
	m.sent[open] += sent
	l.ResponseFlags = flags
	done := l.key()
	m.labels[done] = l
	m.closed[done]++
	if flags != "" && flags != noFlags {
		m.failed[done]++
	}
}

// families in the order ztunnel registers them, with their help texts.
var families = []struct{ name, help string }{
	{"tcp_connections_opened", "The total number of TCP connections opened"},
	{"tcp_connections_closed", "The total number of TCP connections closed"},
	{"tcp_received_bytes", "The size of total bytes received during request in case of a TCP connection"},
	{"tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection"},
	{"tcp_connections_failed", "The total number of TCP connections that failed to establish (unstable)"},
}

// exposition writes the counters as ztunnel's metrics server does
// (prometheus-client's OpenMetrics text encoder over the registry with
// prefix "istio": HELP and TYPE per family, then each sample with the
// _total suffix of a counter, then # EOF).
func (m *metrics) exposition() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b bytes.Buffer
	values := []map[string]uint64{m.opened, m.closed, m.received, m.sent, m.failed}
	for i, f := range families {
		name := "istio_" + f.name
		fmt.Fprintf(&b, "# HELP %s %s.\n# TYPE %s counter\n", name, f.help, name)
		for _, k := range slices.Sorted(maps.Keys(values[i])) {
			b.WriteString(name + "_total{")
			for j, p := range m.labels[k].pairs() {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, "%s=\"%s\"", p[0], escapeLabel(p[1]))
			}
			fmt.Fprintf(&b, "} %d\n", values[i][k])
		}
	}
	b.WriteString("# EOF\n")
	return b.Bytes()
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
