package envoy

import (
	"net"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// routeConfig is the route configuration an HTTP connection manager uses:
// inline, or by RDS name from the snapshot.
func (p *Proxy) routeConfig(hcm *hcmv3.HttpConnectionManager) (*routev3.RouteConfiguration, string, error) {
	switch r := hcm.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		return r.RouteConfig, r.RouteConfig.GetName(), nil
	case *hcmv3.HttpConnectionManager_Rds:
		name := r.Rds.GetRouteConfigName()
		rc := p.Config.Routes[name]
		if rc == nil {
			// Envoy keeps a listener whose routes have not arrived warming:
			// it takes no connections yet.
			return nil, name, undecidable("route configuration %q is not in the configuration held (snapshot %d): the listener would still be warming", name, p.Config.Seq)
		}
		return rc, name, nil
	}
	return nil, "", undecidable("an HTTP connection manager with scoped routes")
}

// virtualHost picks the virtual host for host ([VHOST], [HOST-PORT]).
func virtualHost(rc *routev3.RouteConfiguration, hcm *hcmv3.HttpConnectionManager, host string) *routev3.VirtualHost {
	host = strings.ToLower(host)
	if rc.GetIgnorePortInHostMatching() || hcm.GetStripAnyHostPort() || hcm.GetStripMatchingHostPort() {
		// strip_matching_host_port strips only the listener's own port;
		// the evaluator's requests name the port they are sent to, which
		// is the listener's, so both strip it.
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	var exact, suffix, prefix, any *routev3.VirtualHost
	suffixLen, prefixLen := -1, -1
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				if any == nil {
					any = vh
				}
			case d == host:
				if exact == nil {
					exact = vh
				}
			case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
				if len(d) > suffixLen {
					suffix, suffixLen = vh, len(d)
				}
			case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
				if len(d) > prefixLen {
					prefix, prefixLen = vh, len(d)
				}
			}
		}
	}
	for _, vh := range []*routev3.VirtualHost{exact, suffix, prefix, any} {
		if vh != nil {
			return vh
		}
	}
	return nil
}

// matchRoute is the first route of vh matching a request for path
// ([ROUTE]). Routes matching on headers, query parameters or runtime
// fractions, or with a regex path, are undecidable: the probe's request
// carries only its path and the usual headers.
func matchRoute(vh *routev3.VirtualHost, path string) (*routev3.Route, error) {
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 {
			return nil, undecidable("virtual host %s: route %q matches on headers, query parameters or other request properties", vh.GetName(), r.GetName())
		}
		fold := func(s string) string {
			if m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue() {
				return strings.ToLower(s)
			}
			return s
		}
		switch ps := m.GetPathSpecifier().(type) {
		case *routev3.RouteMatch_Prefix:
			if strings.HasPrefix(fold(path), fold(ps.Prefix)) {
				return r, nil
			}
		case *routev3.RouteMatch_Path:
			if fold(path) == fold(ps.Path) {
				return r, nil
			}
		case *routev3.RouteMatch_PathSeparatedPrefix:
			pre := fold(ps.PathSeparatedPrefix)
			if p := fold(path); p == pre || strings.HasPrefix(p, pre+"/") {
				return r, nil
			}
		default:
			return nil, undecidable("virtual host %s: route %q has a path match of kind %T", vh.GetName(), r.GetName(), ps)
		}
	}
	return nil, nil
}

// routeCluster is the cluster a route sends to; a weighted or header-named
// cluster is undecidable unless all its weights name one cluster.
func routeCluster(r *routev3.Route) (string, error) {
	ra := r.GetRoute()
	switch cs := ra.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		return cs.Cluster, nil
	case *routev3.RouteAction_WeightedClusters:
		var names []string
		for _, c := range cs.WeightedClusters.GetClusters() {
			if c.GetWeight().GetValue() > 0 {
				names = append(names, c.GetName())
			}
		}
		slices.Sort(names)
		if names = slices.Compact(names); len(names) == 1 {
			return names[0], nil
		}
		return "", undecidable("route %q splits traffic over clusters %v by weight", r.GetName(), names)
	}
	return "", undecidable("route %q names its cluster by %T", r.GetName(), ra.GetClusterSpecifier())
}
