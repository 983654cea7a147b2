// Package istiostats reads Istio's standard TCP metrics out of a sidecar's
// Prometheus statistics (Envoy's admin GET /stats/prometheus, run in the
// istio-proxy container as `pilot-agent request GET stats/prometheus`).
// Over TCP nothing carries the client's identity to the application, so
// this is how the harness sees whether a TCP connection arrived over Istio
// mutual TLS and from whom: the server sidecar counts every connection it
// accepted in istio_tcp_connections_opened_total with reporter
// "destination", labelled with connection_security_policy (mutual_tls or
// none) and the peer's and its own SPIFFE identity (source_principal,
// destination_principal). It depends on the standard library only.
//
// Istio's stats filter (istio/proxy source/extensions/filters/http/
// istio_stats/istio_stats.cc) sets those labels on the inbound side from
// the connection's TLS: mutual_tls when both the peer's and the local
// certificate have a URI SAN, the peer's as source_principal, the local one
// as destination_principal, "unknown" for a principal absent. It counts a
// TCP connection as opened once peer metadata is exchanged or, at the
// latest, when the connection closes; Envoy's Prometheus output drops the
// filter's stat namespace (istiocustom), so the metric keeps its Istio
// name.
package istiostats

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Istio's names, as its stats filter writes them.
const (
	// TCPConnectionsOpened counts the TCP connections a sidecar proxied.
	TCPConnectionsOpened = "istio_tcp_connections_opened_total"

	LabelReporter             = "reporter"
	LabelSecurityPolicy       = "connection_security_policy"
	LabelSourcePrincipal      = "source_principal"
	LabelDestinationPrincipal = "destination_principal"

	// ReporterDestination marks what the server's sidecar counted of the
	// connections it accepted ("source" is the client's sidecar).
	ReporterDestination = "destination"
	// PolicyMutualTLS and PolicyNone are connection_security_policy values.
	PolicyMutualTLS = "mutual_tls"
	PolicyNone      = "none"
	// Unknown is Istio's value for a label it could not fill, e.g. the
	// source_principal of a plaintext connection.
	Unknown = "unknown"
)

// Sample is one sample line of the Prometheus text format.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// maxLine bounds one line: Istio's samples carry some twenty labels of a
// few hundred bytes in all.
const maxLine = 1 << 20

// Parse reads the Prometheus text exposition format (version 0.0.4) that
// Envoy's admin interface serves: # comments and TYPE lines, then one
// sample a line, `name{label="value",...} value [timestamp]`, label values
// escaped with \\, \" and \n. Only samples named in keep are returned (all
// of them when keep is empty); every line is checked all the same, so
// output that is not Prometheus text (an error page, a truncated dump)
// is an error naming its line, not an empty result.
func Parse(text []byte, keep ...string) ([]Sample, error) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var out []Sample
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("statistics line %d: %w: %.120q", n, err, line)
		}
		if len(keep) == 0 || slices.Contains(keep, s.Name) {
			out = append(out, s)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading statistics: %w", err)
	}
	return out, nil
}

func isNameChar(c byte, first bool) bool {
	return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
}

func parseSample(line string) (Sample, error) {
	i := 0
	for i < len(line) && isNameChar(line[i], i == 0) {
		i++
	}
	if i == 0 {
		return Sample{}, errors.New("no metric name")
	}
	s := Sample{Name: line[:i], Labels: map[string]string{}}
	rest := line[i:]
	if strings.HasPrefix(rest, "{") {
		var err error
		if rest, err = parseLabels(rest[1:], s.Labels); err != nil {
			return Sample{}, err
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 || len(fields) > 2 || !strings.HasPrefix(rest, " ") && !strings.HasPrefix(rest, "\t") {
		return Sample{}, errors.New("want one value (and an optional timestamp) after the name and labels")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return Sample{}, fmt.Errorf("value %q: not a number", fields[0])
	}
	if len(fields) == 2 {
		if _, err := strconv.ParseInt(fields[1], 10, 64); err != nil {
			return Sample{}, fmt.Errorf("timestamp %q: not an integer", fields[1])
		}
	}
	s.Value = v
	return s, nil
}

// parseLabels reads `name="value",...}` into labels and returns what
// follows the closing brace.
func parseLabels(s string, labels map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, "}") {
			return s[1:], nil
		}
		i := 0
		for i < len(s) && isNameChar(s[i], i == 0) && s[i] != ':' {
			i++
		}
		if i == 0 {
			return "", errors.New("a label without a name")
		}
		name := s[:i]
		s = strings.TrimLeft(s[i:], " \t")
		if !strings.HasPrefix(s, `="`) {
			return "", fmt.Errorf("label %s: want =\"value\"", name)
		}
		value, rest, err := unquote(s[2:])
		if err != nil {
			return "", fmt.Errorf("label %s: %w", name, err)
		}
		if _, dup := labels[name]; dup {
			return "", fmt.Errorf("label %s twice", name)
		}
		labels[name] = value
		s = strings.TrimLeft(rest, " \t")
		switch {
		case strings.HasPrefix(s, ","):
			s = s[1:]
		case strings.HasPrefix(s, "}"):
		default:
			return "", fmt.Errorf("label %s: want , or } after the value", name)
		}
	}
}

// unquote reads an escaped label value up to its closing quote.
func unquote(s string) (value, rest string, err error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), s[i+1:], nil
		case '\\':
			if i+1 == len(s) {
				return "", "", errors.New("unterminated value")
			}
			i++
			switch s[i] {
			case '\\', '"':
				b.WriteByte(s[i])
			case 'n':
				b.WriteByte('\n')
			default:
				return "", "", fmt.Errorf("unknown escape \\%c", s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated value")
}

// Format writes samples the way Envoy's admin interface does: a TYPE line
// before the first sample of each name, then `name{label="value",...}
// value`, values escaped, counts written as integers. Labels come in the
// order given (Envoy writes a stat's tags in the order they were added),
// the others after them by name. It is what Parse reads.
func Format(samples []Sample, metricType string, labelOrder ...string) []byte {
	var b bytes.Buffer
	typed := map[string]bool{}
	for _, s := range samples {
		if !typed[s.Name] {
			fmt.Fprintf(&b, "# TYPE %s %s\n", s.Name, metricType)
			typed[s.Name] = true
		}
		b.WriteString(s.Name)
		if len(s.Labels) > 0 {
			b.WriteByte('{')
			for i, k := range labelsInOrder(s.Labels, labelOrder) {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(k + `="` + escape(s.Labels[k]) + `"`)
			}
			b.WriteByte('}')
		}
		b.WriteByte(' ')
		b.WriteString(formatValue(s.Value))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func labelsInOrder(labels map[string]string, order []string) []string {
	out := make([]string, 0, len(labels))
	for _, k := range order {
		if _, ok := labels[k]; ok && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func escape(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

func formatValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case v == math.Trunc(v) && math.Abs(v) < 1<<53:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Peer is what the server's sidecar knew of the connections it counted:
// whether they were mutual TLS, and the two identities.
type Peer struct {
	// SecurityPolicy is mutual_tls, none, or unknown.
	SecurityPolicy string
	// SourcePrincipal is the client's SPIFFE identity, "unknown" without
	// mutual TLS.
	SourcePrincipal string
	// DestinationPrincipal is the server sidecar's own identity.
	DestinationPrincipal string
}

func (p Peer) String() string {
	if p.SecurityPolicy == PolicyMutualTLS {
		return fmt.Sprintf("mutual_tls from %s to %s", p.SourcePrincipal, p.DestinationPrincipal)
	}
	return p.SecurityPolicy + " (source_principal " + p.SourcePrincipal + ")"
}

// Counts is how many inbound TCP connections a server's sidecar counted,
// by peer.
type Counts map[Peer]uint64

// InboundTCP sums the server-side (reporter "destination") samples of
// istio_tcp_connections_opened_total by peer. Other labels (workload,
// service, response_flags...) are summed over: a sidecar serves one
// workload, and the harness asks only how the connections arrived.
func InboundTCP(samples []Sample) (Counts, error) {
	out := Counts{}
	for _, s := range samples {
		if s.Name != TCPConnectionsOpened || s.Labels[LabelReporter] != ReporterDestination {
			continue
		}
		if s.Value < 0 || s.Value != math.Trunc(s.Value) || s.Value > 1<<53 {
			return nil, fmt.Errorf("%s: counter value %v is not a count", TCPConnectionsOpened, s.Value)
		}
		p := Peer{SecurityPolicy: s.Labels[LabelSecurityPolicy], SourcePrincipal: s.Labels[LabelSourcePrincipal], DestinationPrincipal: s.Labels[LabelDestinationPrincipal]}
		out[p] += uint64(s.Value)
	}
	return out, nil
}

// Since is what was counted after before: the positive differences by
// peer. A counter lower than before means the proxy restarted (Envoy's
// counters start again from zero), which makes the difference meaningless:
// an error.
func (c Counts) Since(before Counts) (Counts, error) {
	out := Counts{}
	for p, n := range c {
		switch b := before[p]; {
		case n < b:
			return nil, fmt.Errorf("the count of %s went down from %d to %d: the proxy (sidecar or ztunnel) restarted", p, b, n)
		case n > b:
			out[p] = n - b
		}
	}
	for p, b := range before {
		if _, ok := c[p]; !ok && b > 0 {
			return nil, fmt.Errorf("the count of %s disappeared (was %d): the proxy (sidecar or ztunnel) restarted", p, b)
		}
	}
	return out, nil
}

// Total is the number of connections counted.
func (c Counts) Total() uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

// String lists the counts in a stable order, for messages.
func (c Counts) String() string {
	if len(c) == 0 {
		return "no connections"
	}
	parts := make([]string, 0, len(c))
	for p, n := range c {
		parts = append(parts, fmt.Sprintf("%d %s", n, p))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// ztunnel's metrics (src/proxy/metrics.rs) use the same names and labels
// as the sidecars' stats filter, with "unknown" where a sidecar writes
// "none" for a connection without mutual TLS, and one ztunnel counts for
// every pod of its node: its counts are told apart by workload.
const (
	// TCPReceivedBytes is the bytes a proxy received of its connections.
	TCPReceivedBytes = "istio_tcp_received_bytes_total"

	ReporterSource = "source"
	// PolicyUnknown is ztunnel's connection_security_policy of a
	// connection without mutual TLS (plaintext passed through).
	PolicyUnknown = "unknown"

	LabelSourceWorkload               = "source_workload"
	LabelSourceWorkloadNamespace      = "source_workload_namespace"
	LabelDestinationWorkload          = "destination_workload"
	LabelDestinationWorkloadNamespace = "destination_workload_namespace"
)

// Workload names a workload in ztunnel's labels: its namespace and its
// workload name (the Deployment's).
type Workload struct{ Namespace, Name string }

// ZtunnelSelector picks the samples of one pair of workloads from a
// ztunnel's metrics: reporter "destination" with the server workload, or
// "source" with the client workload and, when set, the server.
type ZtunnelSelector struct {
	Reporter            string
	Source, Destination Workload
}

func (sel ZtunnelSelector) matches(s Sample) bool {
	l := s.Labels
	if l[LabelReporter] != sel.Reporter {
		return false
	}
	if sel.Destination.Name != "" && (l[LabelDestinationWorkload] != sel.Destination.Name || l[LabelDestinationWorkloadNamespace] != sel.Destination.Namespace) {
		return false
	}
	return sel.Source.Name == "" || l[LabelSourceWorkload] == sel.Source.Name && l[LabelSourceWorkloadNamespace] == sel.Source.Namespace
}

// ZtunnelTCP sums, by peer, the samples of name (TCPConnectionsOpened or
// TCPReceivedBytes) sel picks from a ztunnel's metrics.
func ZtunnelTCP(samples []Sample, name string, sel ZtunnelSelector) (Counts, error) {
	out := Counts{}
	for _, s := range samples {
		if s.Name != name || !sel.matches(s) {
			continue
		}
		if s.Value < 0 || s.Value != math.Trunc(s.Value) || s.Value > 1<<53 {
			return nil, fmt.Errorf("%s: counter value %v is not a count", name, s.Value)
		}
		p := Peer{SecurityPolicy: s.Labels[LabelSecurityPolicy], SourcePrincipal: s.Labels[LabelSourcePrincipal], DestinationPrincipal: s.Labels[LabelDestinationPrincipal]}
		out[p] += uint64(s.Value)
	}
	return out, nil
}
