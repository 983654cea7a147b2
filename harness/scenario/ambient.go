package scenario

import (
	"fmt"
	"strings"
	"time"
)

// This file holds the checks of ambient mode: where an ambient workload
// can run, which of the older fields it contradicts, and expectations that
// rely on what Istio's ambient data plane does not do.

// dataPlane checks a workload's dataPlane against the older fields that
// say the same (mesh, proxyless) and against the clusters it is deployed
// to: the fixtures go to every cluster, so an ambient workload needs
// ambient on each.
func (v *validator) dataPlane(w Workload, path string) {
	dp := w.Plane()
	if w.Source.has("dataPlane") {
		dp = w.DataPlane
		if w.Source.has("mesh") && w.Mesh != nil && *w.Mesh != (dp != DataPlaneNone) {
			v.errorf(w.Source.At("mesh"), path+".mesh", "mesh: %t contradicts dataPlane: %s; remove mesh (dataPlane: none is outside the mesh, any other data plane inside it)", *w.Mesh, dp)
		}
		if w.Source.has("proxyless") && w.Proxyless != (dp == DataPlaneProxyless) {
			v.errorf(w.Source.At("proxyless"), path+".proxyless", "proxyless: %t contradicts dataPlane: %s; remove proxyless (dataPlane: proxyless says it)", w.Proxyless, dp)
		}
	}
	if dp != DataPlaneAmbient {
		return
	}
	at := w.Source.At("dataPlane")
	for i := range v.s.Clusters {
		c := &v.s.Clusters[i]
		if c.Ambient() {
			continue
		}
		where := c.Istio.Source.At("profile")
		if !c.Istio.Source.has("profile") {
			where = c.Source.At("istio")
		}
		v.errorf(at, path+".dataPlane", "workload %q is ambient, but cluster %s installs Istio without ambient mode (profile %s at %s): no ztunnel would carry its traffic and no istio-cni would redirect it; set istio.profile: ambient on the cluster, or give the workload another data plane",
			w.Name, c.Name, c.Istio.Profile, where)
	}
}

// ambientProfile checks a cluster's Istio profile against what it can do.
func (v *validator) ambientProfile(c *Cluster, path string) {
	in := c.Istio
	if in.Profile != ProfileAmbient {
		return
	}
	if in.Revision != "" {
		// istio-cni and ztunnel serve every revision of a cluster; Istio
		// revisions ambient's control plane only (revision tags), which
		// meshproof does not manage.
		v.errorf(in.Source.At("revision"), path+".istio.revision", "a revision with profile ambient is not supported: istio-cni and ztunnel are one per node for every revision, and meshproof installs them for the default revision only; remove revision")
	}
	if ttl := in.WorkloadCertTTL.Duration; ttl > 0 && ttl <= istiodBackdate {
		// ztunnel refreshes a certificate at half its validity counted
		// from NotBefore (src/tls/certificate.rs refresh_at), and istiod
		// backdates NotBefore by 2 minutes (measured: a 1m certificate is
		// valid from 2m before it was issued). At or under 2m, refresh_at
		// is already past when the certificate arrives: ztunnel would ask
		// istiod for a new one at once, again and again, and a rotate
		// step would prove nothing.
		v.errorf(in.Source.At("workloadCertTTL"), path+".istio.workloadCertTTL",
			"workloadCertTTL %s with profile ambient: ztunnel renews a certificate at half its validity counted from NotBefore, which istiod backdates by 2m, so it would ask istiod for a new one continuously; use more than 2m (ztunnel then renews every (TTL - 2m) / 2: every 30s with 3m, and sidecars at half the TTL: every 90s with 3m)",
			strings.TrimSuffix(strings.TrimSuffix(in.WorkloadCertTTL.String(), "0s"), "0m"))
	}
}

// istiodBackdate is how far before its issue istiod dates a workload
// certificate's NotBefore (for clock skew), measured on the local
// cluster's istiod (1.29 and 1.30).
const istiodBackdate = 2 * time.Minute

// ambientUpgrade refuses a canary upgrade of an ambient cluster: Istio
// upgrades ztunnel in place only (its DaemonSet serves every revision on
// a node), so a canary would leave the ambient data plane on the old
// version.
func (v *validator) ambientUpgrade(st *Step, sc *Scenario, path string) {
	c := v.s.Cluster(sc.Cluster)
	if c == nil || !c.Ambient() || st.Upgrade.Method != UpgradeCanary {
		return
	}
	v.errorf(st.Upgrade.Source.At("method"), path+".upgrade.method", "cluster %s runs ambient mode, whose ztunnel and istio-cni Istio upgrades in place only (one DaemonSet per node serves every revision): a canary would leave ambient workloads on the old data plane; use method: inPlace", c.Name)
}

// ambientRows refuses expect rows that count on a DestinationRule where
// Istio's ambient data plane ignores it. ztunnel receives no
// DestinationRule at all (istiod sends it workloads, services and
// authorizations only), so it sends HBONE mutual TLS to an ambient or
// HBONE-capable peer (the ambient profile's sidecars are: it sets
// ISTIO_META_ENABLE_HBONE) and plaintext to any other, whatever the rule
// says;
// and a sidecar sends HBONE to an ambient pod under DISABLE and
// ISTIO_MUTUAL alike (istiod's applyHBONETransportSocketMatches puts the
// hbone transport socket match first). The rows refused are those whose
// result only the rule could give.
func (v *validator) ambientRows(e *ExpectStep, sc *Scenario, index int, path string) {
	if e.Auto {
		return
	}
	pol := policiesBefore(sc, index+1)
	if pol == nil || len(pol.DestinationRules) == 0 {
		return
	}
	for i, x := range e.Table {
		from, to := v.s.Workload(x.From), v.s.Workload(x.To)
		if from == nil || to == nil {
			continue
		}
		dr, ok := pol.ClientTLS(to, x.Port)
		if !ok {
			continue
		}
		xpath := fmt.Sprintf("%s[%d].result", path, i)
		at := x.Source.At("result")
		switch {
		case from.Ambient() && to.Ambient() && x.Result != ResultMTLS && dr.Mode != TLSIstioMutual:
			v.errorf(at, xpath, "%s and %s are both ambient: their ztunnels always speak HBONE mutual TLS to each other and ignore the DestinationRule %s for %s (at %s), which istiod never sends to ztunnel; expect mtls",
				x.From, x.To, dr.Mode, dr.Target(), dr.Source.Position)
		case from.Ambient() && to.HasSidecar() && x.Result != ResultMTLS:
			v.errorf(at, xpath, "%s is ambient: its ztunnel ignores the DestinationRule %s for %s (at %s) and sends HBONE mutual TLS to %s, whose sidecar the ambient profile makes HBONE-capable (ISTIO_META_ENABLE_HBONE); expect mtls",
				x.From, dr.Mode, dr.Target(), dr.Source.Position, x.To)
		case from.HasSidecar() && to.Ambient() && dr.Mode == TLSDisable && x.Result == ResultPlaintext:
			v.errorf(at, xpath, "%s is ambient: %s's sidecar sends it HBONE mutual TLS even under the DestinationRule DISABLE for %s (at %s), since istiod puts the hbone transport socket match before the rule's plaintext one; expect mtls",
				x.To, x.From, dr.Target(), dr.Source.Position)
		}
	}
}

// ClientTLS is the DestinationRule of the set that decides the client TLS
// towards a server's Service port, as Istio picks it: the server's own
// rule (its port-level setting, else its destination-level one), else the
// mesh-wide rule's. It reports false when no rule sets a mode for the
// port.
func (m *MTLSStep) ClientTLS(server *Workload, port int) (DestinationRule, bool) {
	pick := func(scope DestinationRuleScope, match func(DestinationRule) bool) (DestinationRule, bool, bool) {
		var all *DestinationRule
		found := false
		for i := range m.DestinationRules {
			dr := m.DestinationRules[i]
			if dr.Scope != scope || !match(dr) {
				continue
			}
			found = true
			if dr.Port == port {
				return dr, true, true
			}
			if dr.Port == 0 {
				all = &m.DestinationRules[i]
			}
		}
		if all != nil {
			return *all, true, true
		}
		return DestinationRule{}, false, found
	}
	if dr, ok, found := pick(DRScopeWorkload, func(dr DestinationRule) bool { return dr.Workload == server.Name }); ok || found {
		// A rule for the host shadows the mesh-wide one on every port,
		// also those it leaves unset.
		return dr, ok
	}
	dr, ok, _ := pick(DRScopeMesh, func(DestinationRule) bool { return true })
	return dr, ok
}
