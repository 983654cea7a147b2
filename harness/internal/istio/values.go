package istio

import (
	"fmt"
	"time"
)

// Where values go in Istio's charts (read from 1.29/1.30 values.yaml and
// templates): both charts keep their defaults under
// "_internal_defaults_do_not_set", and templates/zzz_profile.yaml deep-merges
// the user's values (the top level of .Values) over those defaults. So user
// values are written at their plain paths (global.hub, meshConfig, revision,
// env ...), never under the internal key. The istiod chart also copies
// anything under "pilot" to the top level (templates/zzy_descope_legacy.yaml),
// so "pilot.env" and "env" are equivalent; meshproof writes "env", the path
// values.yaml declares.

// baseValues are the values of the base release (CRDs and the default
// validating webhook).
func (i *Installer) baseValues(defaultRevision string) map[string]any {
	return map[string]any{
		"global": map[string]any{"istioNamespace": i.s.namespace},
		// The default validator (istiod-default-validator) must point at a
		// control plane that exists: istiod for the default revision,
		// istiod-<rev> otherwise.
		"defaultRevision": revisionLabelValue(defaultRevision),
	}
}

// istiodValues are the values of the istiod release of control plane p: the
// Installer's settings, then the caller's WithValues deep-merged on top.
func (i *Installer) istiodValues(p plane) map[string]any {
	proxyMetadata := map[string]any{}
	env := map[string]any{}
	mesh := map[string]any{}
	if i.s.workloadCertTTL > 0 {
		// Istio parses SECRET_TTL as a Go duration, so Duration.String's
		// format ("1m0s") is exactly what the agent reads.
		proxyMetadata["SECRET_TTL"] = i.s.workloadCertTTL.String()
	}
	if i.s.multiRoot {
		env["ISTIO_MULTIROOT_MESH"] = "true"
		// Proxy metadata values are strings; the agent needs its own xDS
		// proxy to receive the trust bundle of several roots.
		proxyMetadata["PROXY_CONFIG_XDS_AGENT"] = "true"
	}
	if i.s.trustDomain != "" {
		mesh["trustDomain"] = i.s.trustDomain
	}
	if len(proxyMetadata) > 0 {
		mesh["defaultConfig"] = map[string]any{"proxyMetadata": proxyMetadata}
	}

	v := map[string]any{
		"global": map[string]any{
			"hub":            i.s.hub,
			"tag":            p.tag,
			"istioNamespace": i.s.namespace,
		},
	}
	if p.revision != "" {
		v["revision"] = p.revision
	}
	if i.s.ambient {
		// The chart's files/profile-ambient.yaml: PILOT_ENABLE_AMBIENT for
		// istiod, ISTIO_META_ENABLE_HBONE for the proxies it injects.
		v["profile"] = AmbientProfile
	}
	if len(mesh) > 0 {
		v["meshConfig"] = mesh
	}
	if len(env) > 0 {
		v["env"] = env
	}
	return deepMerge(v, i.s.values)
}

// cniValues are the values of the istio-cni release of control plane p:
// the ambient profile (cni.ambient.enabled), the images of p. kind needs no
// platform value: its nodes use the chart's default CNI directories
// (/opt/cni/bin, /etc/cni/net.d), and Istio's own ambient CI runs on kind
// with these values (prow/config/ambient-sc.yaml, a stock kind config).
func (i *Installer) cniValues(p plane) map[string]any {
	return map[string]any{
		"profile": AmbientProfile,
		"global": map[string]any{
			"hub":            i.s.hub,
			"tag":            p.tag,
			"istioNamespace": i.s.namespace,
		},
	}
}

// ztunnelValues are the values of the ztunnel release of control plane p:
// the ambient profile, the images of p (this chart reads hub and tag at
// its top level, not under global), and the workload certificate TTL,
// which ztunnel reads from its SECRET_TTL environment variable (src/
// config.rs, parsed by duration_str). Unlike istio-agent, ztunnel renews at
// half the validity counted from NotBefore (src/tls/certificate.rs
// refresh_at), which istiod backdates by 2 minutes; the scenario's
// validation refuses a TTL at which that is already past.
func (i *Installer) ztunnelValues(p plane) map[string]any {
	v := map[string]any{
		"profile":        AmbientProfile,
		"hub":            i.s.hub,
		"tag":            p.tag,
		"istioNamespace": i.s.namespace,
	}
	if i.s.workloadCertTTL > 0 {
		// Whole seconds ("60s"), a form both Go and duration_str parse.
		v["env"] = map[string]any{"SECRET_TTL": fmt.Sprintf("%ds", int64(i.s.workloadCertTTL.Round(time.Second)/time.Second))}
	}
	return v
}

// deepMerge returns a new map with over merged into base: nested maps are
// merged key by key, any other value in over replaces the one in base.
// Neither argument is modified, so options can be reused safely.
func deepMerge(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = deepCopyValue(v)
	}
	for k, v := range over {
		if om, ok := v.(map[string]any); ok {
			if bm, ok := out[k].(map[string]any); ok {
				out[k] = deepMerge(bm, om)
				continue
			}
		}
		out[k] = deepCopyValue(v)
	}
	return out
}

func deepCopyValue(v any) any {
	switch t := v.(type) {
	case map[string]any:
		return deepMerge(t, nil)
	case []any:
		c := make([]any, len(t))
		for i, e := range t {
			c[i] = deepCopyValue(e)
		}
		return c
	default:
		return v
	}
}
