package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// Snapshot is the configuration an Envoy sidecar holds after one push:
// every resource it accepted, by name, and when each type was last
// accepted. Snapshots are never changed once made; each accepted response
// makes a new one.
type Snapshot struct {
	// Seq numbers the snapshots of one client from 1; 0 is the empty
	// configuration before the first push.
	Seq int
	// Push is the response that made this snapshot.
	Push Push
	// Accepted is the last accepted push of each type.
	Accepted map[string]Push

	Listeners map[string]*listenerv3.Listener
	Clusters  map[string]*clusterv3.Cluster
	// Endpoints are by the cluster's EDS service name.
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	Routes    map[string]*routev3.RouteConfiguration
	// Unknown are the type URLs nested in the configuration that this
	// client does not decode (Istio's own Envoy extensions); an evaluator
	// that meets one where it matters cannot decide.
	Unknown []string
}

// Push is one response of istiod, as the client received it.
type Push struct {
	TypeURL  string
	Version  string
	Nonce    string
	Received time.Time
	// Resources is how many resources it carried.
	Resources int
}

// NACK is a response the client rejected, as Envoy would have, and why:
// a finding worth reporting, since a real sidecar keeps its previous
// configuration and istiod logs the rejection.
type NACK struct {
	Push  Push
	Error string
}

func (n NACK) String() string {
	return fmt.Sprintf("NACK of %s version %s at %s: %s", shortType(n.Push.TypeURL), n.Push.Version, n.Push.Received.Format(time.RFC3339Nano), n.Error)
}

// Warm reports whether the snapshot holds what Envoy needs before it
// serves: clusters and listeners received, and the endpoints of every EDS
// cluster and the routes of every listener that names them.
func (s *Snapshot) Warm() bool {
	for _, t := range []string{ClusterType, ListenerType} {
		if _, ok := s.Accepted[t]; !ok {
			return false
		}
	}
	for _, n := range edsNames(s.Clusters) {
		if s.Endpoints[n] == nil {
			return false
		}
	}
	names, _ := rdsNames(s.Listeners)
	for _, n := range names {
		if s.Routes[n] == nil {
			return false
		}
	}
	return true
}

// Sidecar is the xDS client of one pod's Envoy sidecar: it asks istiod
// for the pod's configuration as Envoy does (state-of-the-world ADS,
// clusters, their endpoints, listeners, their routes, ACKs and NACKs),
// keeps it current as istiod pushes, and keeps the snapshots it went
// through.
type Sidecar struct {
	node    *corev3.Node
	stream  *Stream
	history int

	mu sync.Mutex
	// snapshots are the latest ones, oldest first (at most history).
	snapshots []*Snapshot
	nacks     []NACK
	// changed is closed and replaced whenever a response arrives.
	changed chan struct{}
	// edsDone and ldsDone are whether the first endpoints and listeners
	// arrived: Envoy asks for listeners once its clusters are warm.
	edsDone bool
}

// SidecarOption configures a Sidecar.
type SidecarOption func(*sidecarConfig)

type sidecarConfig struct {
	history int
	stream  []StreamOption
}

// WithStreamOptions configures the client's stream.
func WithStreamOptions(opts ...StreamOption) SidecarOption {
	return func(c *sidecarConfig) { c.stream = append(c.stream, opts...) }
}

// NewSidecar returns the client of node (see SidecarNode) to the xDS
// server at address. Start connects it.
func NewSidecar(address string, node *corev3.Node, opts ...SidecarOption) *Sidecar {
	cfg := sidecarConfig{history: 1024}
	for _, o := range opts {
		o(&cfg)
	}
	s := &Sidecar{node: node, history: cfg.history, changed: make(chan struct{})}
	s.snapshots = []*Snapshot{{Accepted: map[string]Push{}, Listeners: map[string]*listenerv3.Listener{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}, Routes: map[string]*routev3.RouteConfiguration{}}}
	s.stream = NewStream(address, node, StateOfTheWorld, (*sidecarHandler)(s), cfg.stream...)
	return s
}

// Node is the node the client presents.
func (s *Sidecar) Node() *corev3.Node { return s.node }

// Start connects and keeps the configuration current until Stop or ctx
// ends.
func (s *Sidecar) Start(ctx context.Context) error { return s.stream.Start(ctx) }

// Stop disconnects.
func (s *Sidecar) Stop() { s.stream.Stop() }

// Status is the stream's.
func (s *Sidecar) Status() StreamStatus { return s.stream.Status() }

// Snapshot is the configuration held now.
func (s *Sidecar) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshots[len(s.snapshots)-1]
}

// Snapshots are the kept snapshots, oldest first.
func (s *Sidecar) Snapshots() []*Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.snapshots)
}

// NACKs are the responses rejected so far.
func (s *Sidecar) NACKs() []NACK {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.nacks)
}

// Wait waits until cond holds of the configuration held, or ctx ends.
func (s *Sidecar) Wait(ctx context.Context, cond func(*Snapshot) bool) (*Snapshot, error) {
	for {
		s.mu.Lock()
		cur, changed := s.snapshots[len(s.snapshots)-1], s.changed
		s.mu.Unlock()
		if cond(cur) {
			return cur, nil
		}
		select {
		case <-ctx.Done():
			return cur, fmt.Errorf("xds: %s: configuration (snapshot %d) not as wanted: %w", s.node.GetId(), cur.Seq, context.Cause(ctx))
		case <-changed:
		}
	}
}

// sidecarHandler is the Handler side of a Sidecar.
type sidecarHandler Sidecar

// Subscriptions are Envoy's: clusters first; the endpoints of its EDS
// clusters once it has clusters; listeners once the first clusters are
// warm (their endpoints arrived, or none needed any); the routes its
// listeners name once it has listeners (Envoy's docs, "xDS REST and gRPC
// protocol": "Eventual consistency considerations", and the
// initialization of the cluster manager before listeners, "Initialization"
// in the architecture overview).
func (h *sidecarHandler) Subscriptions() []Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.snapshots[len(h.snapshots)-1]
	subs := []Subscription{{TypeURL: ClusterType}}
	if _, ok := cur.Accepted[ClusterType]; !ok {
		return subs
	}
	if eds := edsNames(cur.Clusters); len(eds) > 0 || h.edsDone {
		subs = append(subs, Subscription{TypeURL: EndpointType, Names: nonNil(eds)})
		if !h.edsDone {
			return subs
		}
	}
	subs = append(subs, Subscription{TypeURL: ListenerType})
	if _, ok := cur.Accepted[ListenerType]; !ok {
		return subs
	}
	if rds, _ := rdsNames(cur.Listeners); len(rds) > 0 || cur.Accepted[RouteType].TypeURL != "" {
		subs = append(subs, Subscription{TypeURL: RouteType, Names: nonNil(rds)})
	}
	return subs
}

// nonNil keeps an empty list of names from reading as a wildcard.
func nonNil(names []string) []string {
	if names == nil {
		return []string{}
	}
	return names
}

// Handle decodes and checks one response as Envoy would and, when it
// passes, makes the next snapshot.
func (h *sidecarHandler) Handle(r Response) error {
	push := Push{TypeURL: r.TypeURL, Version: r.Version, Nonce: r.Nonce, Received: r.Received, Resources: len(r.Resources)}
	h.mu.Lock()
	cur := h.snapshots[len(h.snapshots)-1]
	h.mu.Unlock()
	next, err := apply(cur, r)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.nacks = append(h.nacks, NACK{Push: push, Error: err.Error()})
	} else {
		next.Seq, next.Push = cur.Seq+1, push
		next.Accepted = maps.Clone(cur.Accepted)
		next.Accepted[r.TypeURL] = push
		if r.TypeURL == EndpointType {
			h.edsDone = true
		}
		h.snapshots = append(h.snapshots, next)
		if len(h.snapshots) > h.history {
			h.snapshots = slices.Delete(h.snapshots, 0, len(h.snapshots)-h.history)
		}
	}
	close(h.changed)
	h.changed = make(chan struct{})
	return err
}

// apply is cur with the resources of r, or why Envoy would reject r.
// Listeners and clusters are the whole set in every response (resources
// left out are removed); endpoints and routes are the ones sent, the
// others kept as long as a cluster or listener still names them (Envoy's
// docs, "xDS REST and gRPC protocol", "Resource types": LDS and CDS
// responses carry all resources, RDS and EDS ones those requested).
func apply(cur *Snapshot, r Response) (*Snapshot, error) {
	next := &Snapshot{Listeners: cur.Listeners, Clusters: cur.Clusters, Endpoints: cur.Endpoints, Routes: cur.Routes, Unknown: cur.Unknown}
	var unknown []string
	var errs []error
	seen := map[string]bool{}
	named := func(name string) bool {
		if seen[name] {
			errs = append(errs, fmt.Errorf("duplicate %s resource %q in one response", shortType(r.TypeURL), name))
			return false
		}
		seen[name] = true
		return true
	}
	switch r.TypeURL {
	case ListenerType:
		out := map[string]*listenerv3.Listener{}
		for _, res := range r.Resources {
			l, u, err := decode[*listenerv3.Listener](res.Body)
			unknown = append(unknown, u...)
			if err == nil {
				err = checkListener(l)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("listener %q: %w", l.GetName(), err))
				continue
			}
			if named(l.GetName()) {
				out[l.GetName()] = l
			}
		}
		next.Listeners = out
		// Routes no listener names any more are dropped.
		names, err := rdsNames(out)
		if err != nil {
			errs = append(errs, err)
		}
		next.Routes = keep(cur.Routes, names)
	case ClusterType:
		out := map[string]*clusterv3.Cluster{}
		for _, res := range r.Resources {
			c, u, err := decode[*clusterv3.Cluster](res.Body)
			unknown = append(unknown, u...)
			if err != nil {
				errs = append(errs, fmt.Errorf("cluster %q: %w", c.GetName(), err))
				continue
			}
			if named(c.GetName()) {
				out[c.GetName()] = c
			}
		}
		next.Clusters = out
		next.Endpoints = keep(cur.Endpoints, edsNames(out))
	case EndpointType:
		out := maps.Clone(cur.Endpoints)
		for _, res := range r.Resources {
			e, u, err := decode[*endpointv3.ClusterLoadAssignment](res.Body)
			unknown = append(unknown, u...)
			if err != nil {
				errs = append(errs, fmt.Errorf("endpoints %q: %w", e.GetClusterName(), err))
				continue
			}
			if named(e.GetClusterName()) {
				out[e.GetClusterName()] = e
			}
		}
		next.Endpoints = out
	case RouteType:
		out := maps.Clone(cur.Routes)
		for _, res := range r.Resources {
			rc, u, err := decode[*routev3.RouteConfiguration](res.Body)
			unknown = append(unknown, u...)
			if err != nil {
				errs = append(errs, fmt.Errorf("route configuration %q: %w", rc.GetName(), err))
				continue
			}
			if named(rc.GetName()) {
				out[rc.GetName()] = rc
			}
		}
		next.Routes = out
	default:
		return nil, fmt.Errorf("a response of type %s, which an Envoy sidecar never asked for", r.TypeURL)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, u := range unknown {
		if !slices.Contains(next.Unknown, u) {
			next.Unknown = append(slices.Clone(next.Unknown), u)
		}
	}
	return next, nil
}

// keep is m without the keys not in names.
func keep[V any](m map[string]V, names []string) map[string]V {
	out := map[string]V{}
	for _, n := range names {
		if v, ok := m[n]; ok {
			out[n] = v
		}
	}
	return out
}

// edsNames are the EDS service names of the clusters that take their
// endpoints from EDS, sorted: the resource names Envoy asks for
// (eds_cluster_config.service_name, else the cluster's name).
func edsNames(clusters map[string]*clusterv3.Cluster) []string {
	var names []string
	for _, c := range clusters {
		if c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		n := c.GetEdsClusterConfig().GetServiceName()
		if n == "" {
			n = c.GetName()
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// rdsNames are the route configurations the listeners' HTTP connection
// managers take from RDS, sorted.
func rdsNames(listeners map[string]*listenerv3.Listener) ([]string, error) {
	var names []string
	var errs []error
	for _, l := range listeners {
		chains := slices.Clone(l.GetFilterChains())
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains, l.GetDefaultFilterChain())
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				if f.GetTypedConfig().GetTypeUrl() != hcmType {
					continue
				}
				hcm, err := Unpack[*hcmv3.HttpConnectionManager](f.GetTypedConfig())
				if err != nil {
					errs = append(errs, fmt.Errorf("listener %q: %w", l.GetName(), err))
					continue
				}
				if n := hcm.GetRds().GetRouteConfigName(); n != "" {
					names = append(names, n)
				}
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names), errors.Join(errs...)
}

const hcmType = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
