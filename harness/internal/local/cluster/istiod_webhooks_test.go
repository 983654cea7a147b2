package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

// The rewriter, run by Helm on the real charts (base and istiod, default and
// a revision), leaves no webhook calling istiod's Service: each calls its
// revision's reserved port on 127.0.0.1 with the chart's path, and nothing
// else of the release changes.
func TestPostRendererPointsIstioWebhooksAtLoopback(t *testing.T) {
	charts := filepath.Join(testsupport.IstioCharts(t), istio.DefaultVersion)
	s := newIstiod("", "", t.TempDir(), nil, slog.Default())
	for _, rev := range []string{"", "canary"} {
		t.Run("revision "+revisionName(rev), func(t *testing.T) {
			opts := []istio.Option{istio.WithVersion(istio.DefaultVersion), istio.WithChartsDir(charts)}
			if rev != "" {
				opts = append(opts, istio.WithRevision(rev))
			}
			plain := renderIstio(t, opts...)
			rewritten := renderIstio(t, append(opts, istio.WithPostRenderer(s.PostRenderer()))...)
			ports, err := s.reserve(revisionName(rev))
			if err != nil {
				t.Fatal(err)
			}
			wantPrefix := fmt.Sprintf("https://127.0.0.1:%d/", ports.https)

			before, after := webhookConfigs(t, plain), webhookConfigs(t, rewritten)
			if len(before) == 0 || len(before) != len(after) {
				t.Fatalf("%d webhook configurations rendered, %d after the post-renderer", len(before), len(after))
			}
			rewrittenHooks := 0
			for name, cfg := range after {
				orig := before[name]
				for i, hook := range cfg.hooks {
					was := orig.hooks[i]
					if was.Service == nil || !strings.HasPrefix(was.Service.Name, "istiod") {
						t.Errorf("%s webhook %d: rendered with %+v, not istiod's Service: the check proves nothing", name, i, was)
						continue
					}
					if hook.Service != nil || hook.URL == nil {
						t.Errorf("%s webhook %d still calls Service %+v", name, i, hook.Service)
						continue
					}
					want := wantPrefix + strings.TrimPrefix(ptr.Deref(was.Service.Path, ""), "/")
					if *hook.URL != want {
						t.Errorf("%s webhook %d calls %s, want %s", name, i, *hook.URL, want)
					}
					rewrittenHooks++
				}
			}
			t.Logf("%d webhooks in %d configurations point at %s...", rewrittenHooks, len(after), wantPrefix)

			// Everything else is as rendered.
			for _, rel := range [][2]istio.RenderedRelease{{plain.Base, rewritten.Base}, {plain.Istiod, rewritten.Istiod}} {
				if got, want := objectNames(rel[1]), objectNames(rel[0]); !slices.Equal(got, want) {
					t.Errorf("release %s: objects %v after the post-renderer, %v before", rel[0].Name, got, want)
				}
			}
		})
	}
	defaultPorts, _ := s.reserve(defaultRev)
	canaryPorts, _ := s.reserve("canary")
	if defaultPorts == canaryPorts {
		t.Errorf("revisions default and canary share ports %+v", defaultPorts)
	}
}

func renderIstio(t *testing.T, opts ...istio.Option) istio.Manifests {
	t.Helper()
	in, err := istio.New(nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	m, err := in.Render(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type webhookConfig struct {
	hooks []admissionv1.WebhookClientConfig
}

// webhookConfigs are the rendered webhook configurations by kind/name.
func webhookConfigs(t *testing.T, m istio.Manifests) map[string]webhookConfig {
	t.Helper()
	out := map[string]webhookConfig{}
	for _, rel := range []istio.RenderedRelease{m.Base, m.Istiod} {
		for _, o := range rel.OfKind("MutatingWebhookConfiguration") {
			var cfg admissionv1.MutatingWebhookConfiguration
			convert(t, o, &cfg)
			var wc webhookConfig
			for _, w := range cfg.Webhooks {
				wc.hooks = append(wc.hooks, w.ClientConfig)
			}
			out["mutating/"+cfg.Name] = wc
		}
		for _, o := range rel.OfKind("ValidatingWebhookConfiguration") {
			var cfg admissionv1.ValidatingWebhookConfiguration
			convert(t, o, &cfg)
			var wc webhookConfig
			for _, w := range cfg.Webhooks {
				wc.hooks = append(wc.hooks, w.ClientConfig)
			}
			out["validating/"+cfg.Name] = wc
		}
	}
	return out
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatal(err)
	}
}

func objectNames(r istio.RenderedRelease) []string {
	var out []string
	for _, o := range r.Objects {
		out = append(out, o.GetKind()+"/"+o.GetName())
	}
	slices.Sort(out)
	return out
}

func TestWithoutFlagsDropsEveryForm(t *testing.T) {
	got := withoutFlags([]string{"discovery", "--monitoringAddr=:15014", "--domain", "cluster.local", "-httpAddr", ":8080",
		"--keepaliveMaxServerConnectionAge", "30m", "--log_as_json", "-ctrlz_port=9876"}, listenerFlags...)
	want := []string{"discovery", "--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m", "--log_as_json"}
	if !slices.Equal(got, want) {
		t.Errorf("withoutFlags = %q, want %q", got, want)
	}
}
