package xds

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	// The types Envoy's configuration nests in Any fields, registered so
	// that they are decoded and validated as Envoy decodes and validates
	// them when it instantiates the extension, with Istio's own
	// extensions whose protos istio.io/api publishes (ALPN override,
	// metadata exchange, stats). A type neither publishes is not among
	// them: see Snapshot.Unknown.
	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_stats/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/grpc_web/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/request_id/uuid/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/tcp/v3"
	_ "istio.io/api/envoy/config/filter/http/alpn/v2alpha1"
	_ "istio.io/api/envoy/config/filter/network/metadata_exchange"
	_ "istio.io/api/envoy/extensions/stats"
)

// The type URLs of the resources an Envoy sidecar asks istiod for, in the
// order it first asks for them (Envoy's docs, "xDS REST and gRPC
// protocol", "Eventual consistency considerations": CDS, then EDS for
// its clusters, then LDS, then RDS for its listeners).
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// validator is what protoc-gen-validate generates for Envoy's messages:
// the constraints of the API's annotations, which Envoy checks on every
// resource it accepts (MessageUtil::validate) and NACKs when one fails.
type validator interface{ ValidateAll() error }

// Decode unmarshals a in Envoy's way: into the type its URL names, which
// must be want's (a response of one type carries only that type), then
// checks the message's validation rules and those of every Any nested in
// it whose type this client knows. Types it does not know are returned
// (by URL) rather than rejected: they are Istio's own extensions, which
// the istio-proxy build of Envoy links in.
func Decode(a *anypb.Any, want proto.Message) (unknown []string, err error) {
	if a.GetTypeUrl() != typeURL(want) {
		return nil, fmt.Errorf("resource of type %s in a response of type %s", a.GetTypeUrl(), typeURL(want))
	}
	if err := a.UnmarshalTo(want); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", a.GetTypeUrl(), err)
	}
	if err := validate(want); err != nil {
		return nil, err
	}
	return nested(want.ProtoReflect())
}

func typeURL(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

func validate(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("proto constraint validation failed (%s): %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	return nil
}

// nested decodes and validates every Any in m, depth first, and returns
// the type URLs it does not know.
func nested(m protoreflect.Message) ([]string, error) {
	var unknown []string
	var errs []error
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			mt, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl())
			if err != nil {
				if !slices.Contains(unknown, a.GetTypeUrl()) {
					unknown = append(unknown, a.GetTypeUrl())
				}
				return
			}
			inner := mt.New().Interface()
			if err := proto.Unmarshal(a.GetValue(), inner); err != nil {
				errs = append(errs, fmt.Errorf("decoding %s: %w", a.GetTypeUrl(), err))
				return
			}
			if err := validate(inner); err != nil {
				errs = append(errs, err)
				return
			}
			walk(inner.ProtoReflect())
			return
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				l := v.List()
				for i := range l.Len() {
					walk(l.Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m)
	return unknown, errors.Join(errs...)
}

// shortType is a type URL without its prefix, for messages.
func shortType(url string) string {
	_, name, _ := strings.Cut(url, "/")
	return name
}
