package envoy

import "strings"

// Step is one decision on a request's way: which side made it (the client
// or server sidecar, the network), what it chose (a listener, a filter
// chain, a route, a cluster, a transport socket, a handshake) and why,
// with the tag of the source it follows (refs.go).
type Step struct {
	Side string `json:"side"`
	What string `json:"what"`
	Name string `json:"name,omitempty"`
	Why  string `json:"why,omitempty"`
}

func (s Step) String() string {
	out := s.Side + ": " + s.What
	if s.Name != "" {
		out += " " + s.Name
	}
	if s.Why != "" {
		out += " (" + s.Why + ")"
	}
	return out
}

// Trace is the steps of one evaluation, in order.
type Trace []Step

func (t Trace) String() string {
	parts := make([]string, len(t))
	for i, s := range t {
		parts[i] = s.String()
	}
	return strings.Join(parts, "; ")
}

// DecidedBy names the configuration that decided the outcome: the client
// sidecar's filter chain, cluster and transport socket, and the server
// sidecar's listener and filter chain, e.g. "client filter chain X,
// cluster outbound|8080||b.ns.svc.cluster.local (match tlsMode-istio);
// server virtualInbound filter chain 0.0.0.0_8080".
func (t Trace) DecidedBy() string {
	var client, server []string
	for _, s := range t {
		var part string
		switch s.What {
		case "filter chain":
			part = "filter chain " + cmpOr(s.Name, "(none)")
		case "cluster":
			part = "cluster " + s.Name
		case "transport socket":
			part = "transport socket " + s.Name
		case "listener":
			part = "listener " + s.Name
		default:
			continue
		}
		switch {
		case strings.HasPrefix(s.Side, "client"):
			client = append(client, part)
		case strings.HasPrefix(s.Side, "server"):
			server = append(server, part)
		}
	}
	var out []string
	if len(client) > 0 {
		out = append(out, "client sidecar: "+strings.Join(client, ", "))
	}
	if len(server) > 0 {
		out = append(out, "server sidecar: "+strings.Join(server, ", "))
	}
	return strings.Join(out, "; ")
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
