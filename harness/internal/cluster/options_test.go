package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/e2e-framework/support"
)

func TestNewKindDefaults(t *testing.T) {
	k, err := NewKind("")
	if err != nil {
		t.Fatal(err)
	}
	if k.Name() != DefaultName {
		t.Errorf("name = %q, want %q", k.Name(), DefaultName)
	}
	if k.waitTimeout != DefaultWaitTimeout || k.pollInterval != defaultPollInterval {
		t.Errorf("wait = %s every %s, want %s every %s", k.waitTimeout, k.pollInterval, DefaultWaitTimeout, defaultPollInterval)
	}
	if k.nodeImage != "" || k.rawConfig != nil || k.configFile != "" {
		t.Errorf("kind configuration set by default: image %q, raw %q, file %q", k.nodeImage, k.rawConfig, k.configFile)
	}
	if k.reuse || k.deleteReused {
		t.Errorf("reuse=%v deleteReused=%v by default, want both off", k.reuse, k.deleteReused)
	}
	if k.kubeconfigDir != "" || k.logger == nil {
		t.Errorf("kubeconfigDir = %q, logger = %v", k.kubeconfigDir, k.logger)
	}
	if k.GetKubectlContext() != "kind-meshproof" {
		t.Errorf("context = %q", k.GetKubectlContext())
	}
	if k.GetKubeconfig() != "" || k.KubernetesRestConfig() != nil || k.Reused() {
		t.Error("a fresh Kind reports a kubeconfig, REST config or reuse")
	}
}

func TestNewKindOptions(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	k, err := NewKind("mp",
		WithNodeImage("kindest/node:v1.33.1"),
		WithConfig([]byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")),
		WithReuse(true),
		WithDeleteReused(true),
		WithWaitTimeout(90*time.Second),
		WithKubeconfigDir("/run/dir"),
		WithLogger(logger),
		nil, // ignored, as kind ignores nil options
	)
	if err != nil {
		t.Fatal(err)
	}
	if k.nodeImage != "kindest/node:v1.33.1" || !strings.HasPrefix(string(k.rawConfig), "kind: Cluster") ||
		!k.reuse || !k.deleteReused || k.waitTimeout != 90*time.Second || k.kubeconfigDir != "/run/dir" || k.logger != logger {
		t.Errorf("options not applied: %+v", k.settings)
	}

	k2, err := NewKind("mp", WithConfigFile("kind.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if k2.configFile != "kind.yaml" {
		t.Errorf("configFile = %q", k2.configFile)
	}
}

func TestNewKindRejectsBadOptions(t *testing.T) {
	cases := []struct {
		desc string
		name string
		opts []Option
		want string
	}{
		{"both config forms", "mp", []Option{WithConfig([]byte("x: y")), WithConfigFile("kind.yaml")}, "both WithConfig and WithConfigFile"},
		{"empty raw config", "mp", []Option{WithConfig(nil)}, "WithConfig: the kind configuration is empty"},
		{"empty config path", "mp", []Option{WithConfigFile("")}, "WithConfigFile: the path is empty"},
		{"zero timeout", "mp", []Option{WithWaitTimeout(0)}, "the timeout must be positive, got 0s"},
		{"negative timeout", "mp", []Option{WithWaitTimeout(-time.Second)}, "the timeout must be positive, got -1s"},
		{"empty kubeconfig dir", "mp", []Option{WithKubeconfigDir("")}, "WithKubeconfigDir: the directory is empty"},
		{"nil logger", "mp", []Option{WithLogger(nil)}, "WithLogger: the logger is nil"},
		{"bad name", "Mesh_Proof", nil, "only lower-case letters"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			k, err := NewKind(tc.name, tc.opts...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewKind error = %v, want it to contain %q", err, tc.want)
			}
			if k != nil {
				t.Error("NewKind returned a provider along with an error")
			}
		})
	}
}

func TestKindE2EFrameworkMethods(t *testing.T) {
	k, err := NewKind("mp")
	if err != nil {
		t.Fatal(err)
	}
	var p support.E2EClusterProvider = k
	p = p.WithName("").SetDefaults()
	if k.Name() != DefaultName {
		t.Errorf("SetDefaults left name %q", k.Name())
	}
	p = p.WithName("other").WithVersion("v1.33.1").WithPath("/usr/bin/kind")
	if k.Name() != "other" || k.nodeImage != "kindest/node:v1.33.1" {
		t.Errorf("name %q, node image %q", k.Name(), k.nodeImage)
	}
	p.WithOpts(func(c support.E2EClusterProvider) { c.WithName("viaopts") })
	if k.Name() != "viaopts" {
		t.Errorf("WithOpts did not apply: name %q", k.Name())
	}
}

func TestKindLoggerLevels(t *testing.T) {
	var out bytes.Buffer
	l := kindLogger{slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	l.V(0).Infof(" • %s  ...\n", "Preparing nodes")
	l.V(1).Info("debug detail")
	l.Warnf("cluster name %q is long", "x")
	got := out.String()
	if !strings.Contains(got, `level=INFO msg="• Preparing nodes  ..." source=kind`) {
		t.Errorf("V(0) not logged at Info, trimmed:\n%s", got)
	}
	if strings.Contains(got, "debug detail") || l.V(1).Enabled() || !l.V(0).Enabled() {
		t.Errorf("V(1) should map to Debug, which this handler drops:\n%s", got)
	}
	if !strings.Contains(got, `level=WARN msg="cluster name \"x\" is long"`) {
		t.Errorf("warning missing:\n%s", got)
	}
}
