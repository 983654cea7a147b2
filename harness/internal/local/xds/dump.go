package xds

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// snapshotJSON is a Snapshot as MarshalSnapshot writes it: each resource
// in protobuf JSON (the form of Envoy's config dump), sorted by name.
type snapshotJSON struct {
	Seq       int               `json:"seq"`
	Push      Push              `json:"push"`
	Accepted  map[string]Push   `json:"accepted"`
	Unknown   []string          `json:"unknownTypes,omitempty"`
	Listeners []json.RawMessage `json:"listeners"`
	Clusters  []json.RawMessage `json:"clusters"`
	Endpoints []json.RawMessage `json:"endpoints"`
	Routes    []json.RawMessage `json:"routes"`
}

var jsonOptions = protojson.MarshalOptions{Multiline: true, Indent: "  "}

// MarshalSnapshot is s as indented JSON, its resources in protobuf JSON.
// Types nested in Any fields that are not registered (see Snapshot.Unknown)
// make it fail.
func MarshalSnapshot(s *Snapshot) ([]byte, error) {
	out := snapshotJSON{Seq: s.Seq, Push: s.Push, Accepted: s.Accepted, Unknown: s.Unknown}
	var err error
	if out.Listeners, err = marshalAll(s.Listeners); err != nil {
		return nil, err
	}
	if out.Clusters, err = marshalAll(s.Clusters); err != nil {
		return nil, err
	}
	if out.Endpoints, err = marshalAll(s.Endpoints); err != nil {
		return nil, err
	}
	if out.Routes, err = marshalAll(s.Routes); err != nil {
		return nil, err
	}
	return json.MarshalIndent(out, "", "  ")
}

func marshalAll[M proto.Message](m map[string]M) ([]json.RawMessage, error) {
	out := []json.RawMessage{}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b, err := jsonOptions.Marshal(m[k])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// UnmarshalSnapshot reads what MarshalSnapshot wrote. The resources are
// checked as the client checks what istiod sends (Decode's validation,
// checkListener); a snapshot that fails is an error.
func UnmarshalSnapshot(b []byte) (*Snapshot, error) {
	var in snapshotJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, err
	}
	s := &Snapshot{Seq: in.Seq, Push: in.Push, Accepted: in.Accepted, Unknown: in.Unknown,
		Listeners: map[string]*listenerv3.Listener{}, Clusters: map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}, Routes: map[string]*routev3.RouteConfiguration{}}
	if s.Accepted == nil {
		s.Accepted = map[string]Push{}
	}
	for _, raw := range in.Listeners {
		l := &listenerv3.Listener{}
		if err := unmarshalChecked(raw, l); err != nil {
			return nil, err
		}
		if err := checkListener(l); err != nil {
			return nil, err
		}
		s.Listeners[l.GetName()] = l
	}
	for _, raw := range in.Clusters {
		c := &clusterv3.Cluster{}
		if err := unmarshalChecked(raw, c); err != nil {
			return nil, err
		}
		s.Clusters[c.GetName()] = c
	}
	for _, raw := range in.Endpoints {
		e := &endpointv3.ClusterLoadAssignment{}
		if err := unmarshalChecked(raw, e); err != nil {
			return nil, err
		}
		s.Endpoints[e.GetClusterName()] = e
	}
	for _, raw := range in.Routes {
		r := &routev3.RouteConfiguration{}
		if err := unmarshalChecked(raw, r); err != nil {
			return nil, err
		}
		s.Routes[r.GetName()] = r
	}
	return s, nil
}

func unmarshalChecked(raw []byte, m proto.Message) error {
	if err := protojson.Unmarshal(raw, m); err != nil {
		return err
	}
	if err := validate(m); err != nil {
		return err
	}
	_, err := nested(m.ProtoReflect())
	return err
}
