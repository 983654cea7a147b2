package xds

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// checkListener is what Envoy checks of a listener beyond its proto
// constraints before it adds it, where istiod can get it wrong: no two
// filter chains may match the same connection. Envoy's filter chain
// manager adds every combination of each chain's criteria to its match
// tree and rejects the listener when a combination is there already
// (envoyproxy/envoy source/common/listener_manager/
// filter_chain_manager_impl.cc addFilterChainForSourcePorts: "error adding
// listener '<address>': multiple filter chains with overlapping matching
// rules are defined"). Istio's own xDS tests hold its listeners to the
// same rule (pilot/test/xdstest validateFilterChainMatch).
func checkListener(l *listenerv3.Listener) error {
	if l.GetFilterChainMatcher() != nil {
		return nil // the matcher API replaces filter_chain_match
	}
	seen := map[string]int{}
	for i, fc := range l.GetFilterChains() {
		for _, key := range matchCombinations(fc.GetFilterChainMatch()) {
			if j, dup := seen[key]; dup {
				return fmt.Errorf("error adding listener '%s': multiple filter chains with overlapping matching rules are defined (filter chains %d %q and %d %q)",
					listenerAddress(l), j, l.GetFilterChains()[j].GetName(), i, fc.GetName())
			}
			seen[key] = i
		}
	}
	return nil
}

// listenerAddress is a listener's address as Envoy prints it.
func listenerAddress(l *listenerv3.Listener) string {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return l.GetName()
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
}

// matchCombinations are the distinct combinations of a filter chain
// match's criteria, one value of each list (or "any" for an empty one),
// in Envoy's order of criteria.
func matchCombinations(m *listenerv3.FilterChainMatch) []string {
	port := "any"
	if m.GetDestinationPort() != nil {
		port = strconv.Itoa(int(m.GetDestinationPort().GetValue()))
	}
	dims := [][]string{
		{port},
		cidrs(m.GetPrefixRanges()),
		orAny(m.GetServerNames()),
		{cmpOr(m.GetTransportProtocol(), "any")},
		orAny(m.GetApplicationProtocols()),
		cidrs(m.GetDirectSourcePrefixRanges()),
		{m.GetSourceType().String()},
		cidrs(m.GetSourcePrefixRanges()),
		ports(m.GetSourcePorts()),
	}
	combos := []string{""}
	for _, d := range dims {
		var next []string
		for _, c := range combos {
			for _, v := range d {
				next = append(next, c+"|"+v)
			}
		}
		combos = next
	}
	return combos
}

func orAny(vs []string) []string {
	if len(vs) == 0 {
		return []string{"any"}
	}
	return vs
}

func cidrs(rs []*corev3.CidrRange) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetAddressPrefix()+"/"+strconv.Itoa(int(r.GetPrefixLen().GetValue())))
	}
	return orAny(out)
}

func ports(ps []uint32) []string {
	var out []string
	for _, p := range ps {
		out = append(out, strconv.Itoa(int(p)))
	}
	return orAny(out)
}

func cmpOr(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}
