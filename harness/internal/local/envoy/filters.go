package envoy

import (
	"fmt"

	udpav1 "github.com/cncf/xds/go/udpa/type/v1"
	xdsv3 "github.com/cncf/xds/go/xds/type/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	alpnv2 "istio.io/api/envoy/config/filter/http/alpn/v2alpha1"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// Filters by type URL.
const (
	hcmType        = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	tcpProxyType   = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	netRBACType    = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
	httpRBACType   = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	httpFaultType  = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	istioStatsType = "type.googleapis.com/stats.PluginConfig"
	istioALPNType  = "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig"
)

// passiveNetworkFilters are network filters that observe a connection and
// never decide whether it goes through: Istio's metadata exchange and
// stats (istio/proxy source/extensions/filters/network/metadata_exchange,
// source/extensions/filters/http/istio_stats).
var passiveNetworkFilters = map[string]bool{
	istioStatsType: true,
	"type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange": true,
}

// passiveHTTPFilters are HTTP filters that do not refuse, answer or
// redirect a plain request: CORS (it acts on preflight requests and
// Origin headers, which the probe sends none of), gRPC stats, Istio's ALPN
// override, metadata exchange and stats, and the router itself.
var passiveHTTPFilters = map[string]bool{
	"type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors":               true,
	"type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": true,
	"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router":           true,
	"type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb":        true,
	"type.googleapis.com/io.istio.http.peer_metadata.Config":                       true,
	"type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault":         false,
	istioALPNType:  true,
	istioStatsType: true,
}

// filterType is the type of a filter's configuration: the Any's type, or
// the type a TypedStruct (udpa.type.v1, xds.type.v3) names for an
// extension configured as JSON, as Envoy resolves it
// (Config::Utility::translateOpaqueConfig).
func filterType(a *anypb.Any) (string, error) {
	switch a.GetTypeUrl() {
	case udpaTypedStruct:
		ts, err := xds.Unpack[*udpav1.TypedStruct](a)
		if err != nil {
			return "", err
		}
		return ts.GetTypeUrl(), nil
	case xdsTypedStruct:
		ts, err := xds.Unpack[*xdsv3.TypedStruct](a)
		if err != nil {
			return "", err
		}
		return ts.GetTypeUrl(), nil
	}
	return a.GetTypeUrl(), nil
}

const (
	udpaTypedStruct = "type.googleapis.com/udpa.type.v1.TypedStruct"
	xdsTypedStruct  = "type.googleapis.com/xds.type.v3.TypedStruct"
)

// terminalFilter decodes the last network filter of a chain (the one that
// takes the connection somewhere), after checking that the filters before
// it cannot refuse it.
func terminalFilter(fc *listenerv3.FilterChain) (proto.Message, error) {
	fs := fc.GetFilters()
	if len(fs) == 0 {
		return nil, undecidable("filter chain %s has no filters", chainName(fc))
	}
	for _, f := range fs[:len(fs)-1] {
		url, err := filterType(f.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		if passiveNetworkFilters[url] {
			continue
		}
		if url == netRBACType {
			r, err := xds.Unpack[*rbacnetv3.RBAC](f.GetTypedConfig())
			if err != nil {
				return nil, err
			}
			if len(r.GetRules().GetPolicies()) > 0 || r.GetMatcher() != nil {
				return nil, undecidable("filter chain %s: network RBAC filter %s has policies (an AuthorizationPolicy), which the evaluator does not evaluate", chainName(fc), f.GetName())
			}
			continue
		}
		return nil, undecidable("filter chain %s: network filter %s (%s) is not one the evaluator knows", chainName(fc), f.GetName(), url)
	}
	last := fs[len(fs)-1]
	switch url := last.GetTypedConfig().GetTypeUrl(); url {
	case hcmType:
		h, err := xds.Unpack[*hcmv3.HttpConnectionManager](last.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		return h, nil
	case tcpProxyType:
		t, err := xds.Unpack[*tcpv3.TcpProxy](last.GetTypedConfig())
		if err != nil {
			return nil, err
		}
		return t, nil
	default:
		return nil, undecidable("filter chain %s ends in network filter %s (%s)", chainName(fc), last.GetName(), url)
	}
}

// tcpCluster is a TCP proxy's cluster.
func tcpCluster(t *tcpv3.TcpProxy) (string, error) {
	if c := t.GetCluster(); c != "" {
		return c, nil
	}
	var names []string
	for _, w := range t.GetWeightedClusters().GetClusters() {
		if w.GetWeight() > 0 {
			names = append(names, w.GetName())
		}
	}
	if len(names) == 1 {
		return names[0], nil
	}
	return "", undecidable("tcp_proxy %s splits connections over clusters %v", t.GetStatPrefix(), names)
}

// httpFiltersDecidable checks that none of a connection manager's HTTP
// filters can refuse or answer the request in the evaluator's place.
func httpFiltersDecidable(hcm *hcmv3.HttpConnectionManager, side string) error {
	for _, f := range hcm.GetHttpFilters() {
		url, err := filterType(f.GetTypedConfig())
		if err != nil {
			return err
		}
		if passiveHTTPFilters[url] {
			continue
		}
		if url == httpFaultType {
			fault, err := xds.Unpack[*faultv3.HTTPFault](f.GetTypedConfig())
			if err != nil {
				return err
			}
			if fault.GetAbort() != nil || fault.GetDelay() != nil {
				return undecidable("%s: HTTP fault filter %s injects faults (a VirtualService fault), which the evaluator does not evaluate", side, f.GetName())
			}
			// Istio adds the fault filter empty; a route can still turn it
			// on with its per-filter configuration (routeFaults).
			continue
		}
		if url == httpRBACType {
			r, err := xds.Unpack[*rbachttpv3.RBAC](f.GetTypedConfig())
			if err != nil {
				return err
			}
			if len(r.GetRules().GetPolicies()) > 0 || r.GetMatcher() != nil {
				return undecidable("%s: HTTP RBAC filter %s has policies (an AuthorizationPolicy), which the evaluator does not evaluate", side, f.GetName())
			}
			continue
		}
		return undecidable("%s: HTTP filter %s (%s) is not one the evaluator knows", side, f.GetName(), url)
	}
	return nil
}

// alpnFilter is the istio.alpn filter's configuration in a connection
// manager, nil when it has none.
func alpnFilter(hcm *hcmv3.HttpConnectionManager) (*alpnv2.FilterConfig, error) {
	for _, f := range hcm.GetHttpFilters() {
		if f.GetTypedConfig().GetTypeUrl() != istioALPNType {
			continue
		}
		c, err := xds.Unpack[*alpnv2.FilterConfig](f.GetTypedConfig())
		if err != nil {
			return nil, fmt.Errorf("decoding %s: %w", f.GetName(), err)
		}
		return c, nil
	}
	return nil, nil
}

// statsCount is the connection the chain's istio.stats network filter
// counts ([ISTIO-STATS]), nil when the chain has none.
func statsCount(fc *listenerv3.FilterChain, s *Proxy, mtls *Session) *TCPCount {
	found := false
	for _, f := range fc.GetFilters() {
		if f.GetTypedConfig().GetTypeUrl() == istioStatsType {
			found = true
		}
	}
	if !found {
		return nil
	}
	c := &TCPCount{Proxy: s, Policy: PolicyNone, SourcePrincipal: unknownPrincipal, DestinationPrincipal: unknownPrincipal}
	if mtls != nil && mtls.ClientLeaf != nil {
		c.Policy, c.SourcePrincipal, c.DestinationPrincipal = PolicyMutualTLS, principal(mtls.ClientID), principal(mtls.ServerID)
	}
	return c
}

// principal is Istio's principal of a SPIFFE ID: without the scheme
// (source_principal "spiffe://cluster.local/ns/a/sa/b" is reported as is
// by current proxies; older ones strip it).
func principal(id string) string {
	if id == "" {
		return unknownPrincipal
	}
	return id
}

// routeFilterConfigs refuses a route or virtual host that configures an
// HTTP filter for itself (typed_per_filter_config: a fault, an
// authorization or a filter turned off for the route), which the
// evaluator does not evaluate.
func routeFilterConfigs(vh *routev3.VirtualHost, r *routev3.Route) error {
	for _, m := range []map[string]*anypb.Any{vh.GetTypedPerFilterConfig(), r.GetTypedPerFilterConfig()} {
		for name := range m {
			return undecidable("virtual host %s, route %q: a per-route configuration of HTTP filter %s", vh.GetName(), r.GetName(), name)
		}
	}
	return nil
}
