package envoy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// Listener filters Envoy's and Istio's configurations use, by type URL.
const (
	tlsInspectorType  = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
	httpInspectorType = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
	originalDstType   = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
)

// Transport protocols as the filter chain match names them ([FCM]).
const (
	transportRawBuffer = "raw_buffer"
	transportTLS       = "tls"
)

// Connection is what a listener can know of a new connection.
type Connection struct {
	// Destination is the connection's original destination (iptables
	// redirects it; the original_dst listener filter restores it).
	Destination netip.AddrPort
	// Source is the client's address.
	Source netip.AddrPort
	// TLS is the client's TLS hello, nil for a plaintext connection.
	TLS *ClientHello
	// FirstBytes is what a plaintext connection starts with, as the HTTP
	// inspector would classify it: "http/1.1", "http/1.0", "h2c", or ""
	// for bytes that are not HTTP.
	FirstBytes string
}

// ClientHello is what the TLS inspector reads of a TLS connection.
type ClientHello struct {
	SNI  string
	ALPN []string
}

// detected is what the listener filters made of a connection: the
// properties the filter chain match reads.
type detected struct {
	transport string
	sni       string
	alpn      []string
	// inspectors says which inspectors ran, for the trace.
	inspectors []string
}

// inspect runs a listener's listener filters over conn ([LF-DISABLED],
// [TLS-INSPECTOR], [HTTP-INSPECTOR]). A listener filter of a type the
// evaluator does not know makes the connection undecidable.
func inspect(l *listenerv3.Listener, conn Connection) (detected, error) {
	d := detected{transport: transportRawBuffer}
	for _, lf := range l.GetListenerFilters() {
		disabled, err := predicate(lf.GetFilterDisabled(), conn)
		if err != nil {
			return d, undecidable("listener %s: listener filter %s: %v", l.GetName(), lf.GetName(), err)
		}
		if disabled {
			continue
		}
		switch t := lf.GetTypedConfig().GetTypeUrl(); t {
		case originalDstType:
			// The destination is already the original one.
		case tlsInspectorType:
			d.inspectors = append(d.inspectors, "tls_inspector")
			if conn.TLS != nil {
				d.transport, d.sni, d.alpn = transportTLS, strings.ToLower(conn.TLS.SNI), conn.TLS.ALPN
			}
		case httpInspectorType:
			d.inspectors = append(d.inspectors, "http_inspector")
			if conn.TLS == nil && conn.FirstBytes != "" && d.transport == transportRawBuffer {
				d.alpn = []string{conn.FirstBytes}
			}
		default:
			return d, undecidable("listener %s: listener filter %s (%s) is not one the evaluator knows", l.GetName(), lf.GetName(), t)
		}
	}
	return d, nil
}

// predicate evaluates a ListenerFilterChainMatchPredicate ([LF-DISABLED]);
// nil is false (the filter is not disabled).
func predicate(p *listenerv3.ListenerFilterChainMatchPredicate, conn Connection) (bool, error) {
	if p == nil {
		return false, nil
	}
	switch r := p.GetRule().(type) {
	case *listenerv3.ListenerFilterChainMatchPredicate_AnyMatch:
		return r.AnyMatch, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_NotMatch:
		v, err := predicate(r.NotMatch, conn)
		return !v, err
	case *listenerv3.ListenerFilterChainMatchPredicate_OrMatch:
		for _, sub := range r.OrMatch.GetRules() {
			v, err := predicate(sub, conn)
			if err != nil || v {
				return v, err
			}
		}
		return false, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_AndMatch:
		for _, sub := range r.AndMatch.GetRules() {
			v, err := predicate(sub, conn)
			if err != nil || !v {
				return v, err
			}
		}
		return true, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_DestinationPortRange:
		port := int32(conn.Destination.Port())
		// Int32Range: start inclusive, end exclusive.
		return port >= r.DestinationPortRange.GetStart() && port < r.DestinationPortRange.GetEnd(), nil
	}
	return false, fmt.Errorf("a match predicate of a kind the evaluator does not know (%T)", p.GetRule())
}

// matchFilterChain picks the filter chain of l that takes conn, as
// Envoy's filter chain manager does ([FCM]): criteria in Envoy's order,
// each level keeping only the most specific branch that matches, without
// going back to a less specific one when a later level fails; the default
// filter chain when nothing matches, nil when there is none either
// ([DEFAULT-CHAIN]: the connection is closed).
func matchFilterChain(l *listenerv3.Listener, conn Connection, d detected) (*listenerv3.FilterChain, error) {
	if l.GetFilterChainMatcher() != nil {
		return nil, undecidable("listener %s selects filter chains with the matcher API (filter_chain_matcher), which the evaluator does not evaluate", l.GetName())
	}
	chains := l.GetFilterChains()
	port := uint32(conn.Destination.Port())
	// Destination port: chains naming the port, else chains naming none.
	// Envoy returns the default chain when the port's branch exists but
	// nothing under it matches, without trying the catch-all branch.
	byPort := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool {
		return m.GetDestinationPort() != nil && m.GetDestinationPort().GetValue() == port
	})
	if len(byPort) == 0 {
		byPort = filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return m.GetDestinationPort() == nil })
	}
	fc, err := matchBelowPort(byPort, conn, d)
	if err != nil || fc != nil {
		return fc, err
	}
	return l.GetDefaultFilterChain(), nil
}

func filterChains(chains []*listenerv3.FilterChain, keep func(*listenerv3.FilterChainMatch) bool) []*listenerv3.FilterChain {
	var out []*listenerv3.FilterChain
	for _, fc := range chains {
		if keep(fc.GetFilterChainMatch()) {
			out = append(out, fc)
		}
	}
	return out
}

// matchBelowPort is findFilterChainForDestinationIP and the levels below.
func matchBelowPort(chains []*listenerv3.FilterChain, conn Connection, d detected) (*listenerv3.FilterChain, error) {
	// Destination IP: the longest prefix that contains it; a chain with no
	// prefix ranges matches every address with length 0.
	chains, err := longestPrefix(chains, conn.Destination.Addr(), func(m *listenerv3.FilterChainMatch) []*corev3.CidrRange { return m.GetPrefixRanges() })
	if err != nil || len(chains) == 0 {
		return nil, err
	}
	// Server name: exact, then the longest wildcard, then chains without.
	chains = serverNames(chains, d.sni)
	if len(chains) == 0 {
		return nil, nil
	}
	// Transport protocol: exact, else chains without one.
	chains = exactOrEmpty(chains, func(m *listenerv3.FilterChainMatch) []string { return nonEmpty(m.GetTransportProtocol()) }, []string{d.transport})
	if len(chains) == 0 {
		return nil, nil
	}
	// Application protocols: the first of the connection's protocols that
	// some chain names, else chains naming none.
	chains = exactOrEmpty(chains, func(m *listenerv3.FilterChainMatch) []string { return m.GetApplicationProtocols() }, d.alpn)
	if len(chains) == 0 {
		return nil, nil
	}
	// Direct source IP, source type, source IP and port.
	chains, err = longestPrefix(chains, conn.Source.Addr(), func(m *listenerv3.FilterChainMatch) []*corev3.CidrRange { return m.GetDirectSourcePrefixRanges() })
	if err != nil || len(chains) == 0 {
		return nil, err
	}
	chains, err = sourceType(chains, conn)
	if err != nil || len(chains) == 0 {
		return nil, err
	}
	chains, err = longestPrefix(chains, conn.Source.Addr(), func(m *listenerv3.FilterChainMatch) []*corev3.CidrRange { return m.GetSourcePrefixRanges() })
	if err != nil || len(chains) == 0 {
		return nil, err
	}
	exact := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool {
		return slices.Contains(m.GetSourcePorts(), uint32(conn.Source.Port()))
	})
	if len(exact) == 0 {
		exact = filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return len(m.GetSourcePorts()) == 0 })
	}
	switch len(exact) {
	case 0:
		return nil, nil
	case 1:
		return exact[0], nil
	}
	// Envoy refuses such a listener (checked when it is accepted).
	return nil, undecidable("filter chains %q and %q both match the connection", exact[0].GetName(), exact[1].GetName())
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// exactOrEmpty keeps the chains that list the first of want's values any
// chain lists, else the chains that list nothing.
func exactOrEmpty(chains []*listenerv3.FilterChain, values func(*listenerv3.FilterChainMatch) []string, want []string) []*listenerv3.FilterChain {
	for _, w := range want {
		if out := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return slices.Contains(values(m), w) }); len(out) > 0 {
			return out
		}
	}
	return filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return len(values(m)) == 0 })
}

// serverNames is findFilterChainForServerName: the exact name, else the
// most specific wildcard ("*.example.com" for www.example.com, then
// "*.com"), else chains without server names.
func serverNames(chains []*listenerv3.FilterChain, sni string) []*listenerv3.FilterChain {
	if sni != "" {
		if out := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return slices.Contains(m.GetServerNames(), sni) }); len(out) > 0 {
			return out
		}
		for i := strings.Index(sni[1:], "."); i >= 0 && i+1 < len(sni)-1; {
			suffix := "*" + sni[i+1:]
			if out := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return slices.Contains(m.GetServerNames(), suffix) }); len(out) > 0 {
				return out
			}
			next := strings.Index(sni[i+2:], ".")
			if next < 0 {
				break
			}
			i += next + 1
		}
	}
	return filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return len(m.GetServerNames()) == 0 })
}

// longestPrefix keeps the chains whose ranges (per ranges) hold the
// longest prefix containing addr; a chain without ranges matches with
// length -1 (below any range, as Envoy's catch-all 0.0.0.0/0 and ::/0
// entries, which a 0-length range shares).
func longestPrefix(chains []*listenerv3.FilterChain, addr netip.Addr, ranges func(*listenerv3.FilterChainMatch) []*corev3.CidrRange) ([]*listenerv3.FilterChain, error) {
	best := -2
	var out []*listenerv3.FilterChain
	for _, fc := range chains {
		rs := ranges(fc.GetFilterChainMatch())
		length := -2
		if len(rs) == 0 {
			length = 0
		}
		for _, r := range rs {
			p, err := netip.ParsePrefix(fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			if err != nil {
				return nil, undecidable("filter chain %q: CIDR range %s/%d: %v", fc.GetName(), r.GetAddressPrefix(), r.GetPrefixLen().GetValue(), err)
			}
			if p.Masked().Contains(addr.Unmap()) && p.Bits() > length {
				length = p.Bits()
			}
		}
		switch {
		case length < -1:
		case length > best:
			best, out = length, []*listenerv3.FilterChain{fc}
		case length == best:
			out = append(out, fc)
		}
	}
	return out, nil
}

// sourceType is findFilterChainForSourceTypes: LOCAL chains for a
// connection from the same IP or loopback, EXTERNAL ones otherwise, else
// the chains of ANY.
func sourceType(chains []*listenerv3.FilterChain, conn Connection) ([]*listenerv3.FilterChain, error) {
	local := conn.Source.Addr() == conn.Destination.Addr() || conn.Source.Addr().IsLoopback()
	want := listenerv3.FilterChainMatch_EXTERNAL
	if local {
		want = listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK
	}
	if out := filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return m.GetSourceType() == want }); len(out) > 0 {
		return out, nil
	}
	return filterChains(chains, func(m *listenerv3.FilterChainMatch) bool { return m.GetSourceType() == listenerv3.FilterChainMatch_ANY }), nil
}
