package scenario

import (
	"strings"
	"testing"
)

// A rotate step whose within is shorter than the renewal of the workload's
// certificate can take never passes: refused at within, with the numbers.
func TestRotateWithinShorterThanARenewal(t *testing.T) {
	file := func(istio, step string) string {
		return "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: " + istio + "\nscenarios:\n- name: s\n  steps:\n  - " + step + "\n"
	}
	for _, tc := range []struct{ name, istio, step, want string }{
		{"Istio's default lifetime", "{version: 1.30.3}", "{timeout: 1h, rotate: {workload: service-b, within: 2m}}",
			"test.yaml:9:57: scenarios[0].steps[0].rotate.within: rotate.within 2m0s is shorter than a renewal can take: workload certificates on cluster c1 live 24h0m0s (Istio's default; istio.workloadCertTTL sets it), and istio-agent renews one up to 24h0m0s × (1 − 0.5 + 0.01) = 12h14m24s after it was issued (SECRET_GRACE_PERIOD_RATIO 0.5, its jitter 0.01); with 1s for the new certificate to reach the sidecar and one probe interval (2s), within must be at least 12h14m27s"},
		{"ten minutes", "{version: 1.30.3, workloadCertTTL: 10m}", "{rotate: {workload: service-b, within: 1m}}",
			"rotate.within 1m0s is shorter than a renewal can take: workload certificates on cluster c1 live 10m0s (istio.workloadCertTTL), and istio-agent renews one up to 10m0s × (1 − 0.5 + 0.01) = 5m6s after it was issued"},
		{"within unset", "{version: 1.30.3, workloadCertTTL: 10m}", "{rotate: {workload: service-b}}",
			"test.yaml:9:14: scenarios[0].steps[0].rotate.within: rotate.within (unset: the step's timeout, 2m0s) is shorter than a renewal can take"},
		{"grace ratio from the values", "{version: 1.30.3, workloadCertTTL: 10m, values: {meshConfig: {defaultConfig: {proxyMetadata: {SECRET_GRACE_PERIOD_RATIO: '0.2'}}}}}", "{timeout: 10m, rotate: {workload: service-b, within: 6m}}",
			"10m0s × (1 − 0.2 + 0.01) = 8m6s after it was issued (SECRET_GRACE_PERIOD_RATIO 0.2, its jitter 0.01)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, file(tc.istio, tc.step))
			if len(errs) != 1 || !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
		})
	}
	for name, f := range map[string]string{
		"long enough":  file("{version: 1.30.3, workloadCertTTL: 10m}", "{timeout: 10m, rotate: {workload: service-b, within: 5m9s}}"),
		"use-existing": "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- {name: c1, provider: existing, istio: {version: 1.30.3}}\nscenarios:\n- name: s\n  steps:\n  - {timeout: 1h, rotate: {workload: service-b, within: 50m}}\n",
	} {
		if _, err := Load("test.yaml", []byte(f)); err != nil {
			t.Errorf("%s: refused:\n%v", name, err)
		}
	}
}

// ztunnel renews an ambient workload's certificate at half its validity
// counted from NotBefore, which istiod backdates by 2 minutes: at a TTL of
// 2m or less it would renew continuously (refused at workloadCertTTL), and
// a rotate step of an ambient workload needs (TTL − 2m) / 2, not the
// sidecar's half TTL.
func TestAmbientCertificateRenewal(t *testing.T) {
	file := func(ttl, within string) string {
		return "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c1\n  istio: {version: 1.30.3, profile: ambient, workloadCertTTL: " + ttl + "}\n" +
			"fixtures:\n  workloads:\n  - {name: amb, dataPlane: ambient}\n  - {name: side}\n" +
			"scenarios:\n- name: s\n  steps:\n  - {rotate: {workload: amb, within: " + within + "}}\n"
	}
	for _, tc := range []struct{ name, ttl, within, want string }{
		{"a minute", "1m", "1m",
			"test.yaml:5:63: clusters[0].istio.workloadCertTTL: workloadCertTTL 1m with profile ambient: ztunnel renews a certificate at half its validity counted from NotBefore, which istiod backdates by 2m, so it would ask istiod for a new one continuously; use more than 2m"},
		{"two minutes", "2m", "1m", "workloadCertTTL 2m with profile ambient"},
		{"three minutes, within too short", "3m", "20s",
			"test.yaml:13:38: scenarios[0].steps[0].rotate.within: rotate.within 20s is shorter than a renewal can take: ztunnel's certificates on cluster c1 live 3m0s (istio.workloadCertTTL), and ztunnel renews amb's at half its validity counted from NotBefore, which istiod backdates by 2m: (3m0s + 2m) / 2 − 2m = 30s after it was issued; with 1s for the new certificate to reach ztunnel and one probe interval (2s), within must be at least 33s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, file(tc.ttl, tc.within))
			if len(errs) != 1 || !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
		})
	}
	// The same TTL that lets ztunnel renew an ambient workload's in 30s
	// makes a sidecar's take 90s: each rotate step is held to its own.
	if _, err := Load("test.yaml", []byte(file("3m", "33s"))); err != nil {
		t.Errorf("an ambient rotation within 33s at 3m refused:\n%v", err)
	}
	sidecar := strings.Replace(file("3m", "33s"), "workload: amb,", "workload: side,", 1)
	if errs := loadErrors(t, sidecar); len(errs) != 1 || !strings.Contains(errs.Error(), "istio-agent renews one up to 3m0s × (1 − 0.5 + 0.01) = 1m32s") {
		t.Errorf("a sidecar rotation within 33s at 3m: %v, want the sidecar's renewal", errs)
	}
}
