package ztunnel

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// ErrUndecidable marks a decision the simulation cannot take from what
// istiod served: a shape of configuration it does not model. A rehearsal
// reports it as a harness limit, never as an outcome.
var ErrUndecidable = errors.New("the simulated ztunnel cannot decide")

// state is what istiod has served the ztunnel: every workload and service
// (istio.workload.Address) and every authorization, by resource name. It
// is the xds.Handler of the ztunnel's stream.
type state struct {
	mu         sync.RWMutex
	workloads  map[string]*Workload
	services   map[string]*Service
	policies   map[string]*Authorization
	byName     map[string]string // resource name -> policy key
	pushes     int
	lastPush   time.Time
	lastChange map[string]time.Time // per type URL
}

func newState() *state {
	return &state{
		workloads: map[string]*Workload{}, services: map[string]*Service{}, policies: map[string]*Authorization{},
		byName: map[string]string{}, lastChange: map[string]time.Time{},
	}
}

var _ xds.Handler = (*state)(nil)

// Subscriptions are ztunnel's: every address and every authorization
// (wildcard), addresses first (src/xds/client.rs subscribes them in that
// order unless on-demand, which Istio's charts leave off).
func (s *state) Subscriptions() []xds.Subscription {
	return []xds.Subscription{{TypeURL: AddressType}, {TypeURL: AuthorizationType}}
}

// Handle applies one incremental response: every resource decoded first,
// so that a resource that does not decode rejects the response (NACK)
// and leaves the state as it was, as ztunnel keeps its last state.
func (s *state) Handle(r xds.Response) error {
	switch r.TypeURL {
	case AddressType:
		ws := map[string]*Workload{}
		ss := map[string]*Service{}
		for _, res := range r.Resources {
			if res.Body.GetTypeUrl() != AddressType {
				return fmt.Errorf("resource %s is a %s, not an address", res.Name, res.Body.GetTypeUrl())
			}
			w, svc, err := DecodeAddress(res.Body.GetValue())
			if err != nil {
				return fmt.Errorf("resource %s: %w", res.Name, err)
			}
			if w != nil {
				ws[res.Name] = w
			} else {
				ss[res.Name] = svc
			}
		}
		s.mu.Lock()
		for _, n := range r.Removed {
			delete(s.workloads, n)
			delete(s.services, n)
		}
		for n, w := range ws {
			delete(s.services, n)
			s.workloads[n] = w
		}
		for n, svc := range ss {
			delete(s.workloads, n)
			s.services[n] = svc
		}
		s.pushed(r)
		s.mu.Unlock()
	case AuthorizationType:
		ps := map[string]*Authorization{}
		for _, res := range r.Resources {
			if res.Body.GetTypeUrl() != AuthorizationType {
				return fmt.Errorf("resource %s is a %s, not an authorization", res.Name, res.Body.GetTypeUrl())
			}
			a, err := DecodeAuthorization(res.Body.GetValue())
			if err != nil {
				return fmt.Errorf("resource %s: %w", res.Name, err)
			}
			ps[res.Name] = a
		}
		s.mu.Lock()
		for _, n := range r.Removed {
			delete(s.policies, s.byName[n])
			delete(s.byName, n)
		}
		for n, a := range ps {
			if old, ok := s.byName[n]; ok {
				delete(s.policies, old)
			}
			s.byName[n] = a.Key()
			s.policies[a.Key()] = a
		}
		s.pushed(r)
		s.mu.Unlock()
	default:
		return fmt.Errorf("ztunnel does not subscribe to %s", r.TypeURL)
	}
	return nil
}

func (s *state) pushed(r xds.Response) {
	s.pushes++
	s.lastPush = r.Received
	s.lastChange[r.TypeURL] = r.Received
}

// Snapshot is a copy of what the ztunnel holds.
type Snapshot struct {
	Workloads []*Workload
	Services  []*Service
	Policies  map[string]*Authorization
	Pushes    int
	LastPush  time.Time
}

func (s *state) snapshot() Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := Snapshot{Policies: maps.Clone(s.policies), Pushes: s.pushes, LastPush: s.lastPush}
	for _, k := range slices.Sorted(maps.Keys(s.workloads)) {
		out.Workloads = append(out.Workloads, s.workloads[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.services)) {
		out.Services = append(out.Services, s.services[k])
	}
	return out
}

// WorkloadByIP is the workload of the network with that address, as
// ztunnel finds a connection's workloads (fetch_workload_by_address).
func (s Snapshot) WorkloadByIP(ip netip.Addr) *Workload {
	for _, w := range s.Workloads {
		if slices.Contains(w.Addresses, ip) {
			return w
		}
	}
	return nil
}

// ServiceByVIP is the service with that address.
func (s Snapshot) ServiceByVIP(ip netip.Addr) *Service {
	for _, svc := range s.Services {
		if slices.Contains(svc.Addresses, ip) {
			return svc
		}
	}
	return nil
}
