package envoy

// The sources each step of the evaluation follows, referred to in
// comments and in the explanations of a Trace by their tag.
//
//	[LISTENER-ORIGDST] Listener.use_original_dst: "the listener hands off
//	    redirected connections to the listener associated with the
//	    original destination address. If there is no listener associated
//	    with the original destination address, the connection is handled
//	    by the listener that receives it",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto
//	[LISTENER-ADDR] the listener associated with an address is the one
//	    bound to that IP and port, else the one on the wildcard address and
//	    that port (Envoy's ConnectionHandlerImpl::getBalancedHandlerByAddress,
//	    source/common/listener_manager/connection_handler_impl.cc)
//	[LF-DISABLED] ListenerFilter.filter_disabled: "Optional match predicate
//	    used to disable the filter. The filter is enabled when this field
//	    is empty", ListenerFilterChainMatchPredicate,
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto
//	[TLS-INSPECTOR] "detecting whether the transport appears to be TLS or
//	    plaintext, and if it is TLS, it detects the Server Name Indication
//	    and/or Application-Layer Protocol Negotiation from the client",
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/tls_inspector
//	[HTTP-INSPECTOR] "detecting whether the application protocol appears
//	    to be HTTP, and if it is HTTP, it detects the HTTP protocol
//	    (HTTP/1.x or HTTP/2) further"; it inspects only connections whose
//	    transport is not TLS (it returns at once when the transport
//	    protocol detected is not raw_buffer: source/extensions/filters/
//	    listener/http_inspector/http_inspector.cc onAccept),
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/http_inspector
//	[FCM] FilterChainMatch: the criteria in order destination port,
//	    destination IP, server name, transport protocol (raw_buffer "used
//	    when no transport protocol is detected", tls "set by
//	    envoy.filters.listener.tls_inspector when TLS protocol is
//	    detected"), application protocols, direct source IP, source type,
//	    source IP, source port; "the most specific value in any of the
//	    configured filter chains that matches the incoming connection is
//	    going to be used",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto
//	    and, for how each level narrows without going back to a less
//	    specific branch, FilterChainManagerImpl::findFilterChain and its
//	    findFilterChainFor* steps, source/common/listener_manager/
//	    filter_chain_manager_impl.cc
//	[DEFAULT-CHAIN] Listener.default_filter_chain: "The default filter
//	    chain if none of the filter chain matches. If no default filter
//	    chain is supplied, the connection will be closed",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto
//	[DOWNSTREAM-TLS] DownstreamTlsContext.require_client_certificate: "If
//	    specified, Envoy will reject connections without a valid client
//	    certificate",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto
//	[CERT-VALIDATION] CertificateValidationContext: trusted_ca,
//	    match_typed_subject_alt_names ("Envoy will verify that the Subject
//	    Alternative Name of the presented certificate matches one of the
//	    specified matchers"),
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto
//	[SDS] certificates and validation contexts named by SDS secret configs
//	    come from the secret discovery service (for an Istio sidecar,
//	    istio-agent: "default" is the workload certificate, "ROOTCA" the
//	    mesh's roots; istio/istio pkg/security SdsDefaultSecretName,
//	    SdsRootSecretName),
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret
//	[TSM] Cluster.transport_socket_matches: "A list of metadata based
//	    transport socket matches... the first one matching [the endpoint's
//	    envoy.transport_socket_match metadata] is used... If no match is
//	    found, the default transport_socket is used",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto
//	[LB-HEALTH] the load balancer picks among healthy hosts; an EDS
//	    endpoint's health_status UNHEALTHY, DRAINING or TIMEOUT makes it
//	    unhealthy, HEALTHY and UNKNOWN healthy,
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto
//	[ORIGDST-CLUSTER] an ORIGINAL_DST cluster connects to the downstream
//	    connection's original destination,
//	    https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery
//	[VHOST] VirtualHost.domains: exact names first, then suffix wildcards
//	    ("*.foo.com"), then prefix wildcards ("foo.*"), longest first, then
//	    "*"; "the first virtual host matching ... will be used",
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto
//	[HOST-PORT] RouteConfiguration.ignore_port_in_host_matching ("Envoy
//	    will ignore the port number in the :authority header (if any) when
//	    picking VirtualHost"), and HttpConnectionManager.strip_matching_host_port
//	    and strip_any_host_port, which remove the port before the lookup,
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route.proto
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto
//	[ROUTE] "The router ... match[es] the incoming request against the
//	    routes of the virtual host in order; the first match is used",
//	    https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_routing
//	[LOCAL-REPLY] Envoy's local replies: 503 with body "no healthy
//	    upstream" (response flag UH, "No healthy upstream hosts in upstream
//	    cluster") and "upstream connect error or disconnect/reset before
//	    headers. reset reason: ..." (UF, "Upstream connection failure"),
//	    404 for no route (NR),
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage
//	[XFCC] x-forwarded-client-cert: "By" the local certificate's URI SAN,
//	    "Hash" the SHA-256 of the client certificate, then Subject, URI,
//	    DNS as set_current_client_cert_details says; forward_client_cert_
//	    details SANITIZE (the default) removes the header, SANITIZE_SET and
//	    APPEND_FORWARD set or append it "if the client connection is
//	    mTLS",
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers
//	[RETRY] a route's retry policy: retry_on connect-failure ("Envoy will
//	    attempt a retry if a request is failed because of a connection
//	    failure to the upstream server (connect timeout, etc.)"; 5xx and
//	    gateway-error include it), num_retries (default 1), and the
//	    previous_hosts retry host predicate, which "will reject any host
//	    that has been previously attempted",
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto
//	    https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/retry/host/previous_hosts/v3/previous_hosts.proto
//	[TCP-PROXY] the TCP proxy filter proxies a connection to its cluster's
//	    upstream host; an upstream that cannot be connected closes the
//	    downstream connection,
//	    https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/tcp_proxy_filter
//
// Istio's own extensions, as istio/proxy implements them:
//
//	[ISTIO-ALPN] istio.alpn (istio.envoy.config.filter.http.alpn.v2alpha1.
//	    FilterConfig): sets the upstream TLS ALPN to the list configured for
//	    the request's upstream HTTP protocol, unless the cluster's filter
//	    metadata istio.alpn_override is "false" (istio/proxy source/
//	    extensions/filters/http/alpn/alpn_filter.cc; istiod sets that
//	    metadata for DestinationRule SIMPLE and MUTUAL, istio/istio
//	    pilot/pkg/networking/util/util.go AddALPNOverrideToMetadata)
//	[ISTIO-STATS] istio.stats (stats.PluginConfig) as a network filter
//	    counts each connection in istio_tcp_connections_opened_total with
//	    connection_security_policy mutual_tls when the downstream connection
//	    carries a peer certificate, else none (istio/proxy source/
//	    extensions/filters/http/istio_stats/istio_stats.cc)
