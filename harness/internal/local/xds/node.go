package xds

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"

	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// The node an Envoy sidecar presents to istiod is the one pilot-agent
// writes into Envoy's bootstrap: istio.io/istio pkg/istio-agent/agent.go
// (generateNodeMetadata) calls pkg/bootstrap/config.go GetNodeMetaData
// with the istio-proxy container's environment, and ConvertNodeToXDSNode
// turns it into the core.Node Envoy sends. SidecarNode rebuilds it from
// the pod as the API server stores it.

// Constants of pilot-agent (istio.io/istio pilot/cmd/pilot-agent).
const (
	// sidecarType is model.SidecarProxy, the node type of `pilot-agent
	// proxy sidecar` (initProxy in pilot/cmd/pilot-agent/app/cmd.go).
	sidecarType = "sidecar"
	// clusterDomain is constants.DefaultClusterLocalDomain, which
	// getDNSDomain appends to the namespace.
	clusterDomain = "cluster.local"
	// podTemplateHash is the label GetNodeMetaData leaves out of LABELS
	// (DefaultDeploymentUniqueLabelKey).
	podTemplateHash = "pod-template-hash"
	// The ports pilot-agent gives Envoy for its status and Prometheus
	// listeners unless ENVOY_STATUS_PORT and ENVOY_PROMETHEUS_PORT say
	// otherwise (pilot/cmd/pilot-agent/options/options.go).
	envoyStatusPort     = "15021"
	envoyPrometheusPort = "15090"
)

// defaultProxyConfig are the fields of istio.io/istio pkg/config/mesh
// DefaultProxyConfig (as protobuf JSON) under which pilot-agent merges the
// PROXY_CONFIG injection wrote (pilot/cmd/pilot-agent/config/config.go
// ConstructProxyConfig). The merge here is per top-level field.
var defaultProxyConfig = map[string]any{
	"configPath":               "./etc/istio/proxy",
	"serviceCluster":           "istio-proxy",
	"drainDuration":            "45s",
	"terminationDrainDuration": "5s",
	"proxyAdminPort":           15000,
	"controlPlaneAuthPolicy":   "MUTUAL_TLS",
	"discoveryAddress":         "istiod.istio-system.svc:15012",
	"binaryPath":               "/usr/local/bin/envoy",
	"statNameLength":           189,
	"statusPort":               15020,
}

// SidecarNode is the Envoy node of pod's sidecar: the ID
// sidecar~<podIP>~<pod>.<namespace>~<namespace>.svc.cluster.local (Proxy.
// ServiceNode in pkg/istio-agent/agent.go, with initProxy's ID and DNS
// domain) and the metadata GetNodeMetaData builds from env, the
// istio-proxy container's environment as the kubelet resolves it:
//   - every ISTIO_META_<KEY>=value as KEY, from PROXY_CONFIG's
//     proxyMetadata first, then from the environment;
//   - every ISTIO_METAJSON_* value's JSON object merged in;
//   - ISTIO_VERSION, when no ISTIO_META_ISTIO_VERSION says it, is the
//     agent's own version: the tag of the istio-proxy image, which is the
//     version of the pilot-agent in it;
//   - INSTANCE_IPS, the pod IP (INSTANCE_IP; a pod's private addresses are
//     that IP);
//   - NAME, NAMESPACE and SERVICE_ACCOUNT from POD_NAME, POD_NAMESPACE and
//     SERVICE_ACCOUNT (extractAttributesMetadata);
//   - LABELS and ANNOTATIONS, the pod's labels (but pod-template-hash) and
//     annotations, which the agent reads from the downward-API files
//     injection mounts in /etc/istio/pod;
//   - PROXY_CONFIG, Istio's default proxy config with PROXY_CONFIG's
//     fields over it; PILOT_SAN when it authenticates istiod (mutual TLS,
//     the default); ENVOY_STATUS_PORT and ENVOY_PROMETHEUS_PORT;
//     METADATA_DISCOVERY as ENABLE_HBONE says.
//
// The node's cluster is pilot-agent's service cluster: <app label>.<namespace>
// (getServiceCluster, serviceClusterOrDefault).
func SidecarNode(pod *corev1.Pod, env []string) (*corev3.Node, error) {
	proxy := injection.Proxy(pod)
	if proxy == nil {
		return nil, fmt.Errorf("pod %s/%s has no %s container: no Envoy sidecar asks istiod for configuration", pod.Namespace, pod.Name, injection.ContainerName)
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	podName, ns := vars["POD_NAME"], vars["POD_NAMESPACE"]
	if podName == "" || ns == "" {
		return nil, fmt.Errorf("pod %s/%s: the %s container's environment has no POD_NAME or POD_NAMESPACE", pod.Namespace, pod.Name, injection.ContainerName)
	}
	ip, err := netip.ParseAddr(vars["INSTANCE_IP"])
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s has no IP yet (INSTANCE_IP %q): istio-agent starts with the pod's IP", pod.Namespace, pod.Name, vars["INSTANCE_IP"])
	}

	meta := map[string]any{}
	proxyConfig := maps.Clone(defaultProxyConfig)
	if pc := strings.TrimSpace(vars["PROXY_CONFIG"]); pc != "" {
		var fromEnv map[string]any
		if err := json.Unmarshal([]byte(pc), &fromEnv); err != nil {
			return nil, fmt.Errorf("pod %s/%s: PROXY_CONFIG is not a JSON object: %w", pod.Namespace, pod.Name, err)
		}
		maps.Copy(proxyConfig, fromEnv)
	}
	if pm, ok := proxyConfig["proxyMetadata"].(map[string]any); ok {
		for k, v := range pm {
			if key, ok := strings.CutPrefix(k, "ISTIO_META_"); ok {
				meta[key] = v
			}
		}
	}
	for _, kv := range env {
		if rest, ok := strings.CutPrefix(kv, "ISTIO_META_"); ok && strings.Contains(rest, "=") {
			k, v, _ := strings.Cut(rest, "=")
			meta[k] = v
		}
	}
	for _, kv := range env {
		if rest, ok := strings.CutPrefix(kv, "ISTIO_METAJSON_"); ok && strings.Contains(rest, "=") {
			_, v, _ := strings.Cut(rest, "=")
			if err := json.Unmarshal([]byte(v), &meta); err != nil {
				return nil, fmt.Errorf("pod %s/%s: %s is not a JSON object: %w", pod.Namespace, pod.Name, strings.SplitN(kv, "=", 2)[0], err)
			}
		}
	}
	if _, ok := meta["ISTIO_VERSION"]; !ok {
		if tag := injection.ImageTag(proxy.Image); tag != "" {
			meta["ISTIO_VERSION"] = strings.SplitN(tag, "-", 2)[0]
		}
	}
	meta["INSTANCE_IPS"] = ip.String()
	meta["NAME"], meta["NAMESPACE"] = podName, ns
	if sa := vars["SERVICE_ACCOUNT"]; sa != "" {
		meta["SERVICE_ACCOUNT"] = sa
	}
	labels := map[string]any{}
	for k, v := range pod.Labels {
		if k != podTemplateHash {
			labels[k] = v
		}
	}
	if static, ok := meta["LABELS"].(map[string]any); ok { // ISTIO_METAJSON_LABELS
		meta["STATIC_LABELS"] = static
		for k, v := range static {
			if _, set := labels[k]; !set {
				labels[k] = v
			}
		}
	}
	meta["LABELS"] = labels
	annotations := map[string]any{}
	for k, v := range pod.Annotations {
		annotations[k] = v
	}
	meta["ANNOTATIONS"] = annotations
	meta["PROXY_CONFIG"] = proxyConfig
	if proxyConfig["controlPlaneAuthPolicy"] == "MUTUAL_TLS" {
		// config.GetPilotSan: istiod's host from discoveryAddress.
		host, _, _ := strings.Cut(fmt.Sprint(proxyConfig["discoveryAddress"]), ":")
		meta["PILOT_SAN"] = []any{host}
	}
	meta["ENVOY_STATUS_PORT"] = portOr(vars["ENVOY_STATUS_PORT"], envoyStatusPort)
	meta["ENVOY_PROMETHEUS_PORT"] = portOr(vars["ENVOY_PROMETHEUS_PORT"], envoyPrometheusPort)
	if _, ok := meta["METADATA_DISCOVERY"]; !ok {
		meta["METADATA_DISCOVERY"] = fmt.Sprint(meta["ENABLE_HBONE"] == "true")
	}
	st, err := structpb.NewStruct(meta)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: node metadata: %w", pod.Namespace, pod.Name, err)
	}
	return &corev3.Node{
		Id:            strings.Join([]string{sidecarType, ip.String(), podName + "." + ns, ns + ".svc." + clusterDomain}, "~"),
		Cluster:       serviceCluster(pod.Labels, ns),
		Metadata:      st,
		UserAgentName: "envoy",
	}, nil
}

// portOr is a port number from the environment, else def; the metadata
// carries it as a number (NodeMetadata.EnvoyStatusPort is an int).
func portOr(v, def string) float64 {
	n, err := strconv.Atoi(v)
	if err != nil {
		n, _ = strconv.Atoi(def)
	}
	return float64(n)
}

// serviceCluster is serviceClusterOrDefault for Istio's default proxy
// config (service cluster istio-proxy).
func serviceCluster(labels map[string]string, ns string) string {
	if app := labels["app"]; app != "" {
		return app + "." + ns
	}
	return "istio-proxy." + ns
}
