package ztunnel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Connection is what ztunnel's authorization sees of a connection
// (src/rbac.rs Connection): the peer's identity, present only when the
// connection came over HBONE (its mutual TLS), and the addresses.
type Connection struct {
	// SrcIdentity is the peer's SPIFFE ID, "" without one (plaintext).
	SrcIdentity string
	Src         netip.Addr
	Dst         netip.AddrPort
}

// Rejection is why ztunnel denied a connection, worded as ztunnel's
// AuthorizationRejectionError is displayed (src/proxy.rs).
type Rejection struct {
	// Policy is the "<namespace>/<name>" of the DENY policy that matched,
	// "" when allow policies exist and none allowed.
	Policy string
}

func (r *Rejection) Error() string {
	if r.Policy == "" {
		return "connection closed due to policy rejection: allow policies exist, but none allowed"
	}
	return "connection closed due to policy rejection: explicitly denied by: " + r.Policy
}

// spiffe splits spiffe://<td>/ns/<ns>/sa/<sa>.
func spiffe(id string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", false
	}
	return parts[2], parts[4], true
}

func (s StringMatch) matches(check string) bool {
	switch s.kind {
	case 1:
		return check == s.Exact
	case 2:
		return strings.HasPrefix(check, s.Prefix)
	case 3:
		return strings.HasSuffix(check, s.Suffix)
	case 4:
		return check != ""
	}
	return false
}

// matchesPrincipal is StringMatch::matches_principal: Istio's principals
// are written without spiffe://, so the peer's ID is matched without it,
// and an ID without it (none at all) matches nothing.
func (s StringMatch) matchesPrincipal(id string) bool {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return false
	}
	return s.matches(rest)
}

// both is matches_internal: any of the positive values (or none given)
// and none of the negative ones.
func both[T any](pos, neg []T, pred func(T) bool) bool {
	if len(pos) > 0 && !slices.ContainsFunc(pos, pred) {
		return false
	}
	return !slices.ContainsFunc(neg, pred)
}

func (m *Match) empty() bool {
	return len(m.Namespaces)+len(m.NotNamespaces)+len(m.ServiceAccounts)+len(m.NotServiceAccounts)+len(m.Principals)+
		len(m.NotPrincipals)+len(m.SourceIPs)+len(m.NotSourceIPs)+len(m.DestinationIPs)+len(m.NotDestinationIPs)+
		len(m.DestinationPorts)+len(m.NotDestination) == 0
}

func (m *Match) matches(c Connection) bool {
	ns, sa, hasID := spiffe(c.SrcIdentity)
	return both(m.DestinationIPs, m.NotDestinationIPs, func(p netip.Prefix) bool { return p.Contains(c.Dst.Addr()) }) &&
		both(m.SourceIPs, m.NotSourceIPs, func(p netip.Prefix) bool { return p.Contains(c.Src) }) &&
		both(m.DestinationPorts, m.NotDestination, func(p uint32) bool { return p == uint32(c.Dst.Port()) }) &&
		both(m.ServiceAccounts, m.NotServiceAccounts, func(s ServiceAccountMatch) bool {
			return hasID && s.Namespace == ns && s.ServiceAccount == sa
		}) &&
		both(m.Principals, m.NotPrincipals, func(s StringMatch) bool { return s.matchesPrincipal(c.SrcIdentity) }) &&
		both(m.Namespaces, m.NotNamespaces, func(s StringMatch) bool { return s.matches(ns) })
}

// Matches is Authorization::matches (src/rbac.rs): the policy matches when
// any group does; a group when every clause does (an empty clause
// matches); a clause when any of its non-empty matches does.
func (a *Authorization) Matches(c Connection) bool {
	for _, group := range a.Groups {
		all := true
		for _, clause := range group {
			any := len(clause) == 0
			for i := range clause {
				if !clause[i].empty() && clause[i].matches(c) {
					any = true
					break
				}
			}
			if !any {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// unmodelled says what of a policy this simulation cannot evaluate.
func (a *Authorization) unmodelled() string {
	n := a.Extensions
	for _, g := range a.Groups {
		for _, c := range g {
			for _, m := range c {
				n += m.Extensions
			}
		}
	}
	if n > 0 {
		return fmt.Sprintf("authorization %s has %d extensions, which the simulated ztunnel does not evaluate", a.Key(), n)
	}
	return ""
}

// authorize is State::assert_rbac (src/state.rs): the namespace's policies
// (scope NAMESPACE, keyed by their namespace), the global ones (scope
// GLOBAL) and those the workload names; a policy named but unknown is
// skipped (ztunnel logs it); dry-run policies are not enforced; any
// matching DENY denies; with ALLOW policies, one must match.
func authorize(policies map[string]*Authorization, dst *Workload, c Connection) (*Rejection, error) {
	var keys []string
	for _, p := range policies {
		if (p.Scope == ScopeNamespace && p.Namespace == dst.Namespace) || p.Scope == ScopeGlobal {
			keys = append(keys, p.Key())
		}
	}
	slices.Sort(keys)
	keys = append(keys, dst.AuthorizationPolicies...)
	var allow []*Authorization
	for _, k := range keys {
		p := policies[k]
		if p == nil || p.DryRun {
			continue
		}
		if why := p.unmodelled(); why != "" {
			return nil, fmt.Errorf("%w: %s", ErrUndecidable, why)
		}
		if p.Action == ActionAllow {
			allow = append(allow, p)
			continue
		}
		if p.Matches(c) {
			return &Rejection{Policy: p.Key()}, nil
		}
	}
	if len(allow) == 0 {
		return nil, nil
	}
	for _, p := range allow {
		if p.Matches(c) {
			return nil, nil
		}
	}
	return &Rejection{}, nil
}
