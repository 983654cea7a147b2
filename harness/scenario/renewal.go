package scenario

import (
	"fmt"
	"strconv"
	"time"
)

// Istio's defaults for workload certificates: istio-agent asks for
// SECRET_TTL (DEFAULT_WORKLOAD_CERT_TTL, 24h) and renews a certificate when
// what is left of its lifetime falls below SECRET_GRACE_PERIOD_RATIO (0.5)
// of it, that ratio moved by up to ±SECRET_GRACE_PERIOD_RATIO_JITTER (0.01)
// at random (security/pkg/nodeagent/cache/secretcache.go, rotateTime).
const (
	defaultCertTTL          = 24 * time.Hour
	defaultGracePeriodRatio = 0.5
	defaultGraceJitter      = 0.01
	// renewalPropagation is allowed for a renewed certificate to reach the
	// sidecar over SDS (milliseconds on a healthy mesh) and to be read back
	// by meshproof (a handshake and a config dump), besides one probe
	// interval: the least a rotation can take, not a comfortable margin.
	renewalPropagation = time.Second
)

// renewal is how long after its issue a workload certificate is renewed at
// the latest on a cluster whose Istio meshproof installs, and how that was
// reckoned.
type renewal struct {
	ttl, latest time.Duration
	ratio       float64
	jitter      float64
	ttlFrom     string // where the TTL comes from
}

func renewalOf(in Istio) (renewal, error) {
	r := renewal{ttl: defaultCertTTL, ratio: defaultGracePeriodRatio, jitter: defaultGraceJitter, ttlFrom: "Istio's default; istio.workloadCertTTL sets it"}
	if !in.WorkloadCertTTL.IsZero() {
		r.ttl, r.ttlFrom = in.WorkloadCertTTL.Duration, "istio.workloadCertTTL"
	}
	// Helm values the file passes win over meshproof's own.
	if v, ok := proxyMetadata(in.Values, "SECRET_TTL"); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return r, fmt.Errorf("istio.values meshConfig.defaultConfig.proxyMetadata.SECRET_TTL %q is not a positive duration", v)
		}
		r.ttl, r.ttlFrom = d, "istio.values' SECRET_TTL"
	}
	for _, f := range []struct {
		name string
		to   *float64
	}{{"SECRET_GRACE_PERIOD_RATIO", &r.ratio}, {"SECRET_GRACE_PERIOD_RATIO_JITTER", &r.jitter}} {
		if v, ok := proxyMetadata(in.Values, f.name); ok {
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || x < 0 || x > 1 {
				return r, fmt.Errorf("istio.values meshConfig.defaultConfig.proxyMetadata.%s %q is not a number from 0 to 1", f.name, v)
			}
			*f.to = x
		}
	}
	r.latest = time.Duration(float64(r.ttl) * min(1, 1-r.ratio+r.jitter))
	return r, nil
}

// proxyMetadata is a value of meshConfig.defaultConfig.proxyMetadata in
// Helm values, as the agent reads it (a string).
func proxyMetadata(values Values, key string) (string, bool) {
	m, _ := values["meshConfig"].(map[string]any)
	d, _ := m["defaultConfig"].(map[string]any)
	p, _ := d["proxyMetadata"].(map[string]any)
	v, ok := p[key]
	if !ok {
		return "", false
	}
	return fmt.Sprint(v), true
}

// rotateWithin refuses a rotate step whose within is shorter than the
// renewal of the workload's certificate can take, on a cluster whose Istio
// meshproof installs (of an existing installation the lifetime is not
// known before the run).
func (v *validator) rotateWithin(st *Step, sc *Scenario, path string) {
	c := v.s.Cluster(sc.Cluster)
	if c == nil || c.Istio.Mode == IstioUseExisting {
		return
	}
	r, err := renewalOf(c.Istio)
	if err != nil {
		v.errorf(c.Istio.Source.At("values"), fmt.Sprintf("clusters[%s].istio.values", c.Name), "%v", err)
		return
	}
	within, pos, what := st.Rotate.Within, st.Rotate.Source.At("within"), "rotate.within "+st.Rotate.Within.String()
	if !st.Rotate.Source.has("within") {
		pos, what = st.Source.At("rotate"), "rotate.within (unset: the step's timeout, "+st.Timeout.String()+")"
	}
	if w := v.s.Workload(st.Rotate.Workload); w != nil && w.Ambient() {
		// ztunnel holds an ambient workload's certificate and renews it
		// at half its validity counted from NotBefore, without jitter
		// (src/tls/certificate.rs refresh_at); istiod backdates NotBefore
		// (ambientProfile refuses a TTL at or under the backdate).
		ttl, from := ztunnelTTL(c.Istio), "istio.workloadCertTTL"
		if c.Istio.WorkloadCertTTL.IsZero() {
			from = "Istio's default; istio.workloadCertTTL sets it"
		}
		latest := max(0, (ttl-istiodBackdate)/2)
		need := latest + renewalPropagation + v.s.Defaults.Interval.Duration
		if within.Duration < need {
			v.errorf(pos, path+".rotate.within", "%s is shorter than a renewal can take: ztunnel's certificates on cluster %s live %s (%s), and ztunnel renews %s's at half its validity counted from NotBefore, which istiod backdates by 2m: (%s + 2m) / 2 − 2m = %s after it was issued; with %s for the new certificate to reach ztunnel and one probe interval (%s), within must be at least %s",
				what, c.Name, ttl, from, w.Name, ttl, latest.Round(time.Second), renewalPropagation, v.s.Defaults.Interval, need.Round(time.Second))
		}
		return
	}
	need := r.latest + renewalPropagation + v.s.Defaults.Interval.Duration
	if within.Duration >= need {
		return
	}
	v.errorf(pos, path+".rotate.within", "%s is shorter than a renewal can take: workload certificates on cluster %s live %s (%s), and istio-agent renews one up to %s × (1 − %g + %g) = %s after it was issued (SECRET_GRACE_PERIOD_RATIO %g, its jitter %g); with %s for the new certificate to reach the sidecar and one probe interval (%s), within must be at least %s",
		what, c.Name, r.ttl, r.ttlFrom, r.ttl, r.ratio, r.jitter, r.latest.Round(time.Second), r.ratio, r.jitter, renewalPropagation, v.s.Defaults.Interval, need.Round(time.Second))
}

// ztunnelTTL is the lifetime ztunnel asks for its workloads' certificates:
// workloadCertTTL (its chart's env SECRET_TTL), not the sidecars'
// proxyMetadata.
func ztunnelTTL(in Istio) time.Duration {
	if !in.WorkloadCertTTL.IsZero() {
		return in.WorkloadCertTTL.Duration
	}
	return defaultCertTTL
}

// RenewalAfter is roughly how long after its issue a certificate of w on
// cluster c is renewed: by ztunnel, for an ambient workload, at half its
// validity counted from NotBefore, which istiod backdates by 2 minutes
// (src/tls/certificate.rs refresh_at); by istio-agent otherwise, when
// SECRET_GRACE_PERIOD_RATIO of its lifetime is left (without the agent's
// jitter). Values the suite's validation refused give Istio's defaults.
func (c *Cluster) RenewalAfter(w *Workload) time.Duration {
	if w != nil && w.Ambient() {
		return max(0, (ztunnelTTL(c.Istio)-istiodBackdate)/2)
	}
	r, _ := renewalOf(c.Istio)
	return time.Duration(float64(r.ttl) * (1 - r.ratio))
}
