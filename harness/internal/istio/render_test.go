package istio

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

func TestRenderSetsImageHubAndTag(t *testing.T) {
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v)
			c := discoveryContainer(t, istiodDeployment(t, m, "istiod"))
			if want := DefaultHub + "/pilot:" + v; c.Image != want {
				t.Errorf("istiod image = %q, want %q", c.Image, want)
			}

			m = render(t, v, WithHub("registry.example/mirror"), WithTag(v+"-distroless"))
			c = discoveryContainer(t, istiodDeployment(t, m, "istiod"))
			if want := "registry.example/mirror/pilot:" + v + "-distroless"; c.Image != want {
				t.Errorf("istiod image = %q, want %q", c.Image, want)
			}
			// The injector renders sidecars from the same values: the proxy
			// image must come from the same hub and tag.
			cm := typed[corev1.ConfigMap](t, m.Istiod.Find("ConfigMap", "istio-sidecar-injector"))
			var vals map[string]any
			if err := yaml.Unmarshal([]byte(cm.Data["values"]), &vals); err != nil {
				t.Fatal(err)
			}
			hub, _, _ := unstructured.NestedString(vals, "global", "hub")
			tag, _, _ := unstructured.NestedFieldNoCopy(vals, "global", "tag")
			if hub != "registry.example/mirror" || tag != v+"-distroless" {
				t.Errorf("injector values global.hub=%q global.tag=%v, want registry.example/mirror and %s-distroless", hub, tag, v)
			}
		})
	}
}

func TestRenderWorkloadCertTTLAndTrustDomain(t *testing.T) {
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v, WithWorkloadCertTTL(time.Minute), WithTrustDomain("example.org"))
			mesh := meshConfig(t, m, "istio")
			if got := proxyMetadata(t, mesh)["SECRET_TTL"]; got != "1m0s" {
				t.Errorf("defaultConfig.proxyMetadata.SECRET_TTL = %v, want 1m0s", got)
			}
			if got := mesh["trustDomain"]; got != "example.org" {
				t.Errorf("trustDomain = %v, want example.org", got)
			}
			// The chart's own mesh defaults survive the merge.
			addr, _, _ := unstructured.NestedString(mesh, "defaultConfig", "discoveryAddress")
			if addr != "istiod.istio-system.svc:15012" {
				t.Errorf("defaultConfig.discoveryAddress = %q, want istiod.istio-system.svc:15012", addr)
			}
			if mesh["enablePrometheusMerge"] != true {
				t.Errorf("enablePrometheusMerge = %v, want the chart default true", mesh["enablePrometheusMerge"])
			}

			// Without the options the chart defaults stand.
			mesh = meshConfig(t, render(t, v), "istio")
			if _, ok := proxyMetadata(t, mesh)["SECRET_TTL"]; ok {
				t.Errorf("SECRET_TTL set without WithWorkloadCertTTL: %v", proxyMetadata(t, mesh))
			}
			if mesh["trustDomain"] != "cluster.local" {
				t.Errorf("default trustDomain = %v, want cluster.local", mesh["trustDomain"])
			}
		})
	}
}

func TestRenderRevisionNamesAndLabels(t *testing.T) {
	const rev = "canary"
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v, WithRevision(rev))
			if m.Istiod.Name != "istiod-"+rev {
				t.Errorf("istiod release name = %q, want istiod-%s", m.Istiod.Name, rev)
			}
			if d := m.Istiod.Find("Deployment", "istiod"); d != nil {
				t.Errorf("revisioned install still renders Deployment istiod")
			}
			d := istiodDeployment(t, m, "istiod-"+rev)
			if d.Labels["istio.io/rev"] != rev || d.Spec.Template.Labels["istio.io/rev"] != rev {
				t.Errorf("Deployment istio.io/rev labels = %q / pod %q, want %q", d.Labels["istio.io/rev"], d.Spec.Template.Labels["istio.io/rev"], rev)
			}
			if rv, _ := envValue(discoveryContainer(t, d), "REVISION"); rv != rev {
				t.Errorf("istiod REVISION env = %q, want %q", rv, rev)
			}
			if m.Istiod.Find("Service", "istiod-"+rev) == nil {
				t.Errorf("no Service istiod-%s", rev)
			}
			mesh := meshConfig(t, m, "istio-"+rev)
			addr, _, _ := unstructured.NestedString(mesh, "defaultConfig", "discoveryAddress")
			if addr != "istiod-"+rev+".istio-system.svc:15012" {
				t.Errorf("discoveryAddress = %q, want the revision's istiod", addr)
			}

			mwc := typed[admissionv1.MutatingWebhookConfiguration](t, m.Istiod.Find("MutatingWebhookConfiguration", "istio-sidecar-injector-"+rev))
			if mwc.Labels["istio.io/rev"] != rev {
				t.Errorf("injector webhook istio.io/rev = %q, want %q", mwc.Labels["istio.io/rev"], rev)
			}
			selectsRevision := false
			for _, wh := range mwc.Webhooks {
				if wh.ClientConfig.Service == nil || wh.ClientConfig.Service.Name != "istiod-"+rev {
					t.Errorf("webhook %s calls %+v, want service istiod-%s", wh.Name, wh.ClientConfig.Service, rev)
				}
				if wh.NamespaceSelector == nil {
					continue
				}
				for _, e := range wh.NamespaceSelector.MatchExpressions {
					if e.Key == "istio.io/rev" && slices.Equal(e.Values, []string{rev}) {
						selectsRevision = true
					}
				}
			}
			if !selectsRevision {
				t.Errorf("no injector webhook selects namespaces labelled istio.io/rev=%s", rev)
			}

			// The base release's default validator must call the revision's
			// istiod, the only one there is.
			vwc := typed[admissionv1.ValidatingWebhookConfiguration](t, m.Base.Find("ValidatingWebhookConfiguration", "istiod-default-validator"))
			if svc := vwc.Webhooks[0].ClientConfig.Service; svc == nil || svc.Name != "istiod-"+rev {
				t.Errorf("default validator calls %+v, want istiod-%s", svc, rev)
			}
		})
	}
}

func TestRenderMultiRoot(t *testing.T) {
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v, WithMultiRoot(true), WithWorkloadCertTTL(time.Minute))
			c := discoveryContainer(t, istiodDeployment(t, m, "istiod"))
			if got, ok := envValue(c, "ISTIO_MULTIROOT_MESH"); !ok || got != "true" {
				t.Errorf("istiod env ISTIO_MULTIROOT_MESH = %q (set %v), want true", got, ok)
			}
			md := proxyMetadata(t, meshConfig(t, m, "istio"))
			if md["PROXY_CONFIG_XDS_AGENT"] != "true" || md["SECRET_TTL"] != "1m0s" {
				t.Errorf("proxyMetadata = %v, want PROXY_CONFIG_XDS_AGENT=true next to SECRET_TTL=1m0s", md)
			}

			m = render(t, v)
			if _, ok := envValue(discoveryContainer(t, istiodDeployment(t, m, "istiod")), "ISTIO_MULTIROOT_MESH"); ok {
				t.Error("ISTIO_MULTIROOT_MESH set without WithMultiRoot")
			}
		})
	}
}

func TestRenderValuesPassthroughDeepMerges(t *testing.T) {
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v,
				WithWorkloadCertTTL(time.Minute),
				WithValues(map[string]any{
					"meshConfig": map[string]any{
						"accessLogFile": "/dev/stdout",
						"defaultConfig": map[string]any{"proxyMetadata": map[string]any{
							"SECRET_TTL": "2m0s", // the caller's value wins
							"EXTRA":      "x",
						}},
					},
					"global": map[string]any{"logging": map[string]any{"level": "default:debug"}},
				}))
			mesh := meshConfig(t, m, "istio")
			md := proxyMetadata(t, mesh)
			if md["SECRET_TTL"] != "2m0s" || md["EXTRA"] != "x" {
				t.Errorf("proxyMetadata = %v, want SECRET_TTL=2m0s (caller wins) and EXTRA=x", md)
			}
			if mesh["accessLogFile"] != "/dev/stdout" {
				t.Errorf("accessLogFile = %v, want /dev/stdout", mesh["accessLogFile"])
			}
			if mesh["enablePrometheusMerge"] != true {
				t.Errorf("chart default enablePrometheusMerge lost: %v", mesh["enablePrometheusMerge"])
			}
			c := discoveryContainer(t, istiodDeployment(t, m, "istiod"))
			if !slices.Contains(c.Args, "--log_output_level=default:debug") {
				t.Errorf("istiod args %v lack --log_output_level=default:debug", c.Args)
			}
			// Setting one key of global must not drop meshproof's others.
			if want := DefaultHub + "/pilot:" + v; c.Image != want {
				t.Errorf("image = %q, want %q: global.hub/tag lost in the merge", c.Image, want)
			}
		})
	}
}

func TestRenderBaseHasIstioCRDs(t *testing.T) {
	for _, v := range testVersions {
		t.Run(v, func(t *testing.T) {
			m := render(t, v)
			var names []string
			for _, crd := range m.Base.OfKind("CustomResourceDefinition") {
				if !isIstioCRD(crd) {
					t.Errorf("base CRD %s is not in an istio.io group", crd.GetName())
				}
				names = append(names, crd.GetName())
			}
			for _, want := range []string{
				"peerauthentications.security.istio.io",
				"authorizationpolicies.security.istio.io",
				"destinationrules.networking.istio.io",
				"virtualservices.networking.istio.io",
				"telemetries.telemetry.istio.io",
			} {
				if !slices.Contains(names, want) {
					t.Errorf("base chart lacks CRD %s; has %v", want, names)
				}
			}
			if len(m.Base.OfKind("Deployment")) != 0 {
				t.Error("base chart renders a Deployment")
			}
			if !strings.Contains(m.Base.YAML, "kind: CustomResourceDefinition") {
				t.Error("RenderedRelease.YAML lacks the CRDs of Objects")
			}
		})
	}
}

// TestPurgeRulesCoverChartObjects ties Uninstall's purge rules to the real
// charts: every cluster-scoped object the charts create, for the default
// and a named revision, is recognised as Istio's.
func TestPurgeRulesCoverChartObjects(t *testing.T) {
	clusterScoped := map[string]func(*unstructured.Unstructured) bool{
		"CustomResourceDefinition":         isIstioCRD,
		"MutatingWebhookConfiguration":     isIstioObject,
		"ValidatingWebhookConfiguration":   isIstioObject,
		"ValidatingAdmissionPolicy":        isIstioObject,
		"ValidatingAdmissionPolicyBinding": isIstioObject,
		"ClusterRole":                      isIstioObject,
		"ClusterRoleBinding":               isIstioObject,
	}
	for _, v := range testVersions {
		for _, rev := range []string{"", "canary"} {
			// stableValidationPolicy adds the admission policies, so that
			// they are covered too.
			m := render(t, v, WithRevision(rev), WithValues(map[string]any{"experimental": map[string]any{"stableValidationPolicy": true}}))
			seen := map[string]int{}
			for _, r := range []RenderedRelease{m.Base, m.Istiod} {
				for _, o := range r.Objects {
					is, ok := clusterScoped[o.GetKind()]
					if !ok {
						continue
					}
					seen[o.GetKind()]++
					if !is(o) {
						t.Errorf("%s rev %q: purge would miss %s %s (labels %v)", v, rev, o.GetKind(), o.GetName(), o.GetLabels())
					}
				}
			}
			for _, k := range []string{"CustomResourceDefinition", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding"} {
				if seen[k] == 0 {
					t.Errorf("%s rev %q: charts rendered no %s; the coverage check is vacuous", v, rev, k)
				}
			}
		}
	}
	foreign := &unstructured.Unstructured{}
	foreign.SetKind("ClusterRole")
	foreign.SetName("system:aggregate-to-view")
	foreign.SetLabels(map[string]string{"rbac.authorization.k8s.io/aggregate-to-view": "true"})
	if isIstioObject(foreign) {
		t.Error("purge rules claim a Kubernetes system ClusterRole")
	}
	crd := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"group": "gateway.networking.k8s.io"}}}
	if isIstioCRD(crd) {
		t.Error("purge rules claim a Gateway API CRD")
	}
}

func TestRenderNeedsNoCluster(t *testing.T) {
	in, err := New(nil, chartOptions(t, "1.30.3")...)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, op := range map[string]func() error{
		"Install":   func() error { return in.Install(ctx) },
		"WaitReady": func() error { return in.WaitReady(ctx) },
		"Uninstall": func() error { return in.Uninstall(ctx, true) },
		"Upgrade":   func() error { return in.Upgrade(ctx, "1.30.3", "") },
	} {
		if err := op(); err != errNoCluster {
			t.Errorf("%s without a cluster: err = %v, want %v", name, err, errNoCluster)
		}
	}
}

// labelEverything is a post-renderer that labels every rendered object, as a
// user's `helm --post-renderer` might.
type labelEverything struct{ calls int }

func (p *labelEverything) Run(in *bytes.Buffer) (*bytes.Buffer, error) {
	p.calls++
	var out bytes.Buffer
	for _, doc := range strings.Split(in.String(), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, err
		}
		if len(obj) == 0 {
			continue
		}
		u := unstructured.Unstructured{Object: obj}
		labels := u.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels["post-rendered"] = "yes"
		u.SetLabels(labels)
		data, err := yaml.Marshal(u.Object)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(data)
	}
	return &out, nil
}

// WithPostRenderer's renderer sees both releases, and what it returns is what
// Render (and so Install) has.
func TestRenderAppliesThePostRenderer(t *testing.T) {
	pr := &labelEverything{}
	m := render(t, DefaultVersion, WithPostRenderer(pr))
	if pr.calls != 2 {
		t.Errorf("post-renderer ran %d times, want once per release (base, istiod)", pr.calls)
	}
	for _, rel := range []RenderedRelease{m.Base, m.Istiod} {
		if len(rel.Objects) == 0 {
			t.Fatalf("release %s rendered no objects", rel.Name)
		}
		for _, o := range rel.Objects {
			if o.GetLabels()["post-rendered"] != "yes" {
				t.Errorf("release %s: %s %s was not post-rendered", rel.Name, o.GetKind(), o.GetName())
			}
		}
	}
}
