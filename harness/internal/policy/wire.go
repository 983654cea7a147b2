package policy

import (
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Unstructured returns the object as it is sent to the API server, with
// every TLS mode written out. Istio's JSON marshaller leaves out enum zero
// values (PeerAuthentication UNSET, DestinationRule DISABLE), so DISABLE
// would travel as `tls: {}`; server-side apply over a previously set mode
// then turns that into null and the API server refuses it
// (kubernetes/kubernetes#135841). Writing the mode keeps the request
// explicit, and the plan readable.
func (o Object) Unstructured() (*unstructured.Unstructured, error) {
	b, err := json.Marshal(o.Object)
	if err != nil {
		return nil, fmt.Errorf("encoding %s/%s: %w", o.GetNamespace(), o.GetName(), err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("decoding %s/%s: %w", o.GetNamespace(), o.GetName(), err)
	}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	spec, _ := u.Object["spec"].(map[string]any)
	switch u.GetKind() {
	case "PeerAuthentication":
		defaultMode(spec, "mtls", "UNSET")
		if ports, ok := spec["portLevelMtls"].(map[string]any); ok {
			for port := range ports {
				defaultMode(ports, port, "UNSET")
			}
		}
	case "DestinationRule":
		tp, _ := spec["trafficPolicy"].(map[string]any)
		defaultMode(tp, "tls", "DISABLE")
		if settings, ok := tp["portLevelSettings"].([]any); ok {
			for _, s := range settings {
				if s, ok := s.(map[string]any); ok {
					defaultMode(s, "tls", "DISABLE")
				}
			}
		}
	}
	return u, nil
}

// defaultMode sets parent[key].mode to zero when parent[key] exists
// without a mode.
func defaultMode(parent map[string]any, key, zero string) {
	if parent == nil {
		return
	}
	settings, ok := parent[key].(map[string]any)
	if !ok {
		return
	}
	if _, set := settings["mode"]; !set {
		settings["mode"] = zero
	}
}
