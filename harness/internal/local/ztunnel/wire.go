package ztunnel

import (
	"errors"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protowire"
)

// The type URLs of what istiod serves ztunnel.
const (
	AddressType       = "type.googleapis.com/istio.workload.Address"
	AuthorizationType = "type.googleapis.com/istio.security.Authorization"
)

// TunnelProtocol is istio.workload.TunnelProtocol: how a workload accepts
// mesh traffic.
type TunnelProtocol int

const (
	TunnelNone            TunnelProtocol = 0
	TunnelHBONE           TunnelProtocol = 1
	TunnelLegacyIstioMTLS TunnelProtocol = 2
)

func (p TunnelProtocol) String() string {
	switch p {
	case TunnelNone:
		return "NONE"
	case TunnelHBONE:
		return "HBONE"
	case TunnelLegacyIstioMTLS:
		return "LEGACY_ISTIO_MTLS"
	}
	return fmt.Sprintf("TunnelProtocol(%d)", int(p))
}

// Workload is the part of istio.workload.Workload ztunnel's decisions read.
type Workload struct {
	UID, Name, Namespace string
	Addresses            []netip.Addr
	Network              string
	Tunnel               TunnelProtocol
	TrustDomain          string
	ServiceAccount       string
	Node                 string
	CanonicalName        string
	CanonicalRevision    string
	WorkloadName         string
	ClusterID            string
	// Services maps "<namespace>/<hostname>" to the workload's ports of
	// that service.
	Services map[string][]Port
	// AuthorizationPolicies are the keys ("<namespace>/<name>") of the
	// authorizations attached to the workload.
	AuthorizationPolicies []string
	// Unhealthy is status UNHEALTHY.
	Unhealthy bool
	// Unmodelled names the fields set that would change what ztunnel does
	// and this simulation does not model (waypoint, network gateway,
	// application tunnel, extensions).
	Unmodelled []string
}

// Identity is the workload's SPIFFE identity, as ztunnel forms it: the
// trust domain istiod gives (cluster.local when it gives none:
// pickTrustDomain in istiod leaves the default out), namespace and
// ServiceAccount.
func (w *Workload) Identity() string {
	td := w.TrustDomain
	if td == "" {
		td = "cluster.local"
	}
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", td, w.Namespace, w.ServiceAccount)
}

// Port is an istio.workload.Port: a service port and the workload's port
// behind it (0: the same).
type Port struct {
	ServicePort, TargetPort uint32
}

// Service is the part of istio.workload.Service ztunnel's decisions read.
type Service struct {
	Name, Namespace, Hostname string
	Addresses                 []netip.Addr
	Ports                     []Port
	Unmodelled                []string
}

// Key is how workloads refer to the service ("<namespace>/<hostname>").
func (s *Service) Key() string { return s.Namespace + "/" + s.Hostname }

// Scope and Action are istio.security.Scope and Action.
type (
	Scope  int
	Action int
)

const (
	ScopeGlobal           Scope = 0
	ScopeNamespace        Scope = 1
	ScopeWorkloadSelector Scope = 2

	ActionAllow Action = 0
	ActionDeny  Action = 1
)

func (a Action) String() string {
	if a == ActionDeny {
		return "DENY"
	}
	return "ALLOW"
}

// Authorization is an istio.security.Authorization.
type Authorization struct {
	Name, Namespace string
	Scope           Scope
	Action          Action
	// Groups are the policy's rules: a group of clauses (istio.security.
	// Rules), each clause a list of matches.
	Groups [][][]Match
	DryRun bool
	// Extensions counts extensions (not modelled).
	Extensions int
}

// Key is how workloads refer to the policy.
func (a *Authorization) Key() string { return a.Namespace + "/" + a.Name }

// StringMatch is an istio.security.StringMatch.
type StringMatch struct {
	Exact, Prefix, Suffix string
	Presence              bool
	kind                  int // 1 exact, 2 prefix, 3 suffix, 4 presence
}

// ServiceAccountMatch is an istio.security.ServiceAccountMatch.
type ServiceAccountMatch struct{ Namespace, ServiceAccount string }

// Match is an istio.security.Match.
type Match struct {
	Namespaces, NotNamespaces           []StringMatch
	ServiceAccounts, NotServiceAccounts []ServiceAccountMatch
	Principals, NotPrincipals           []StringMatch
	SourceIPs, NotSourceIPs             []netip.Prefix
	DestinationIPs, NotDestinationIPs   []netip.Prefix
	DestinationPorts, NotDestination    []uint32
	Extensions                          int
}

// fields walks the fields of one message, calling f with each field's
// number, wire type and its value's bytes (a varint's value in v).
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, data []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var data []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			data, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, data); err != nil {
			return fmt.Errorf("field %d: %w", num, err)
		}
	}
	return nil
}

func addr(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%d bytes are no IP address", len(b))
	}
	return a.Unmap(), nil
}

// DecodeAddress decodes an istio.workload.Address (workload.proto: oneof
// type { Workload workload = 1; Service service = 2; }); exactly one of
// the results is non-nil.
func DecodeAddress(b []byte) (*Workload, *Service, error) {
	var w *Workload
	var s *Service
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, data []byte) error {
		var err error
		switch {
		case num == 1 && typ == protowire.BytesType:
			w, err = decodeWorkload(data)
		case num == 2 && typ == protowire.BytesType:
			s, err = decodeService(data)
		}
		return err
	})
	switch {
	case err != nil:
		return nil, nil, fmt.Errorf("istio.workload.Address: %w", err)
	case w == nil && s == nil:
		return nil, nil, errors.New("istio.workload.Address: neither a workload nor a service")
	}
	return w, s, nil
}

// decodeWorkload reads istio.workload.Workload: uid 20, name 1,
// namespace 2, addresses 3, network 4, tunnel_protocol 5, trust_domain 6,
// service_account 7, waypoint 8, node 9, canonical_name 10,
// canonical_revision 11, workload_name 13, authorization_policies 16,
// status 17, cluster_id 18, network_gateway 19, services 22,
// application_tunnel 23, extensions 26.
func decodeWorkload(b []byte) (*Workload, error) {
	w := &Workload{Services: map[string][]Port{}}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, data []byte) error {
		switch num {
		case 20:
			w.UID = string(data)
		case 1:
			w.Name = string(data)
		case 2:
			w.Namespace = string(data)
		case 3:
			a, err := addr(data)
			if err != nil {
				return err
			}
			w.Addresses = append(w.Addresses, a)
		case 4:
			w.Network = string(data)
		case 5:
			w.Tunnel = TunnelProtocol(v)
		case 6:
			w.TrustDomain = string(data)
		case 7:
			w.ServiceAccount = string(data)
		case 8:
			w.Unmodelled = append(w.Unmodelled, "waypoint")
		case 9:
			w.Node = string(data)
		case 10:
			w.CanonicalName = string(data)
		case 11:
			w.CanonicalRevision = string(data)
		case 13:
			w.WorkloadName = string(data)
		case 16:
			w.AuthorizationPolicies = append(w.AuthorizationPolicies, string(data))
		case 17:
			w.Unhealthy = v == 1
		case 18:
			w.ClusterID = string(data)
		case 19:
			w.Unmodelled = append(w.Unmodelled, "network gateway")
		case 22:
			return decodeServicesEntry(data, w.Services)
		case 23:
			w.Unmodelled = append(w.Unmodelled, "application tunnel")
		case 26:
			w.Unmodelled = append(w.Unmodelled, "extensions")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("istio.workload.Workload: %w", err)
	}
	return w, nil
}

// decodeServicesEntry reads one entry of map<string, PortList> services:
// key 1, value 2 (PortList: repeated Port ports = 1; Port: service_port
// 1, target_port 2).
func decodeServicesEntry(b []byte, into map[string][]Port) error {
	var key string
	var ports []Port
	err := fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
		switch num {
		case 1:
			key = string(data)
		case 2:
			return fields(data, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
				if num != 1 {
					return nil
				}
				p, err := decodePort(data)
				ports = append(ports, p)
				return err
			})
		}
		return nil
	})
	into[key] = append(into[key], ports...)
	return err
}

func decodePort(b []byte) (Port, error) {
	var p Port
	err := fields(b, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) error {
		switch num {
		case 1:
			p.ServicePort = uint32(v)
		case 2:
			p.TargetPort = uint32(v)
		}
		return nil
	})
	return p, err
}

// decodeService reads istio.workload.Service: name 1, namespace 2,
// hostname 3, addresses 4 (NetworkAddress: network 1, address 2), ports 5,
// waypoint 7, extensions 10.
func decodeService(b []byte) (*Service, error) {
	s := &Service{}
	err := fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
		switch num {
		case 1:
			s.Name = string(data)
		case 2:
			s.Namespace = string(data)
		case 3:
			s.Hostname = string(data)
		case 4:
			return fields(data, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
				if num != 2 {
					return nil
				}
				a, err := addr(data)
				s.Addresses = append(s.Addresses, a)
				return err
			})
		case 5:
			p, err := decodePort(data)
			s.Ports = append(s.Ports, p)
			return err
		case 7:
			s.Unmodelled = append(s.Unmodelled, "waypoint")
		case 10:
			s.Unmodelled = append(s.Unmodelled, "extensions")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("istio.workload.Service: %w", err)
	}
	return s, nil
}

// DecodeAuthorization reads an istio.security.Authorization
// (authorization.proto): name 1, namespace 2, scope 3, action 4, groups 5
// (Group: rules 1; Rules: matches 2), dry_run 6, extensions 7.
func DecodeAuthorization(b []byte) (*Authorization, error) {
	a := &Authorization{}
	err := fields(b, func(num protowire.Number, _ protowire.Type, v uint64, data []byte) error {
		switch num {
		case 1:
			a.Name = string(data)
		case 2:
			a.Namespace = string(data)
		case 3:
			a.Scope = Scope(v)
		case 4:
			a.Action = Action(v)
		case 5:
			var group [][]Match
			err := fields(data, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
				if num != 1 {
					return nil
				}
				var clause []Match
				err := fields(data, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
					if num != 2 {
						return nil
					}
					m, err := decodeMatch(data)
					clause = append(clause, m)
					return err
				})
				group = append(group, clause)
				return err
			})
			a.Groups = append(a.Groups, group)
			return err
		case 6:
			a.DryRun = v != 0
		case 7:
			a.Extensions++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("istio.security.Authorization: %w", err)
	}
	return a, nil
}

// decodeMatch reads an istio.security.Match: namespaces 1, not_namespaces
// 2, principals 3, not_principals 4, source_ips 5, not_source_ips 6,
// destination_ips 7, not_destination_ips 8, destination_ports 9 and
// not_destination_ports 10 (packed or not), service_accounts 11,
// not_service_accounts 12, extensions 13.
func decodeMatch(b []byte) (Match, error) {
	var m Match
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, data []byte) error {
		var err error
		switch num {
		case 1:
			m.Namespaces, err = appendStringMatch(m.Namespaces, data)
		case 2:
			m.NotNamespaces, err = appendStringMatch(m.NotNamespaces, data)
		case 3:
			m.Principals, err = appendStringMatch(m.Principals, data)
		case 4:
			m.NotPrincipals, err = appendStringMatch(m.NotPrincipals, data)
		case 5:
			m.SourceIPs, err = appendPrefix(m.SourceIPs, data)
		case 6:
			m.NotSourceIPs, err = appendPrefix(m.NotSourceIPs, data)
		case 7:
			m.DestinationIPs, err = appendPrefix(m.DestinationIPs, data)
		case 8:
			m.NotDestinationIPs, err = appendPrefix(m.NotDestinationIPs, data)
		case 9:
			m.DestinationPorts, err = appendPorts(m.DestinationPorts, typ, v, data)
		case 10:
			m.NotDestination, err = appendPorts(m.NotDestination, typ, v, data)
		case 11:
			m.ServiceAccounts, err = appendSAMatch(m.ServiceAccounts, data)
		case 12:
			m.NotServiceAccounts, err = appendSAMatch(m.NotServiceAccounts, data)
		case 13:
			m.Extensions++
		}
		return err
	})
	return m, err
}

func appendStringMatch(list []StringMatch, b []byte) ([]StringMatch, error) {
	var s StringMatch
	err := fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
		s.kind = int(num)
		switch num {
		case 1:
			s.Exact = string(data)
		case 2:
			s.Prefix = string(data)
		case 3:
			s.Suffix = string(data)
		case 4:
			s.Presence = true
		}
		return nil
	})
	return append(list, s), err
}

func appendSAMatch(list []ServiceAccountMatch, b []byte) ([]ServiceAccountMatch, error) {
	var s ServiceAccountMatch
	err := fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, data []byte) error {
		switch num {
		case 1:
			s.Namespace = string(data)
		case 2:
			s.ServiceAccount = string(data)
		}
		return nil
	})
	return append(list, s), err
}

// appendPrefix reads an istio.security.Address: address 1, length 2.
func appendPrefix(list []netip.Prefix, b []byte) ([]netip.Prefix, error) {
	var a netip.Addr
	var length uint64
	err := fields(b, func(num protowire.Number, _ protowire.Type, v uint64, data []byte) error {
		switch num {
		case 1:
			var err error
			a, err = addr(data)
			return err
		case 2:
			length = v
		}
		return nil
	})
	if err != nil {
		return list, err
	}
	p, err := a.Prefix(int(length))
	return append(list, p), err
}

// appendPorts reads repeated uint32, packed (proto3's default) or not.
func appendPorts(list []uint32, typ protowire.Type, v uint64, data []byte) ([]uint32, error) {
	if typ == protowire.VarintType {
		return append(list, uint32(v)), nil
	}
	for len(data) > 0 {
		p, n := protowire.ConsumeVarint(data)
		if n < 0 {
			return list, protowire.ParseError(n)
		}
		list = append(list, uint32(p))
		data = data[n:]
	}
	return list, nil
}
