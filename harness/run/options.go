package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/onsi/ginkgo/v2/types"
	"helm.sh/helm/v4/pkg/postrenderer"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/cluster"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/scenario"
)

// ProviderFunc makes the provider of a scenario cluster. kubeconfigDir is
// where a provider should write the kubeconfig it creates: a private
// directory of the run under meshproof's cache, outside the reports folder
// (kubeconfigs hold credentials), removed at the end of the run unless
// --keep.
type ProviderFunc func(c *scenario.Cluster, kubeconfigDir string, logger *slog.Logger) (support.E2EClusterProvider, error)

// target is a reached cluster, as the mesh installer sees it.
type target struct {
	Kube client.Client
	REST *rest.Config
	// Ledger records what the run creates on the cluster; teardown
	// removes only what it lists.
	Ledger *ledger.Ledger
}

// meshFunc installs the mesh a scenario cluster asks for and waits until it
// is ready (istiod available and injecting). It may return a partly
// installed mesh with an error: Teardown then removes what was installed.
type meshFunc func(ctx context.Context, on target, c *scenario.Cluster, log *slog.Logger, more []istio.Option) (*mesh.Mesh, error)

// istioOptions are the installer options the settings add for the cluster
// cfg reaches.
func (s *settings) istioOptions(cfg *rest.Config) ([]istio.Option, error) {
	var opts []istio.Option
	if s.postRenderer != nil {
		pr, err := s.postRenderer(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, istio.WithPostRenderer(pr))
	}
	if s.istioReadyTimeout > 0 {
		opts = append(opts, istio.WithReadyTimeout(s.istioReadyTimeout))
	}
	return opts, nil
}

// ImageDelivery makes the echo image available to a cluster's nodes and
// returns the reference the fixtures run.
type ImageDelivery interface {
	Deliver(ctx context.Context, p support.E2EClusterProvider, c *scenario.Cluster, log *slog.Logger) (ref string, err error)
}

// TransportFunc builds the pod transport (exec into pods) of a cluster.
type TransportFunc func(*rest.Config) (probe.Execer, error)

// Option configures a Run.
type Option func(*settings)

type settings struct {
	reports            string
	suiteName          string
	runID              string
	logger             *slog.Logger
	keep               bool
	istioVersion       string
	labelFilter        types.LabelFilter
	providers          ProviderFunc
	mesh               meshFunc
	postRenderer       func(*rest.Config) (postrenderer.PostRenderer, error)
	istioReadyTimeout  time.Duration
	images             ImageDelivery
	transport          TransportFunc
	dataPlane          string
	transportWitness   bool
	reachTimeout       time.Duration
	leaseWait          time.Duration
	leaseDuration      time.Duration
	terminatingTimeout time.Duration
	gracePeriod        time.Duration
	cleanupTimeout     time.Duration
	parallel           int
	shard              schedule.Shard
	scenarioFilter     func(*scenario.Scenario) bool
}

func defaultSettings() settings {
	return settings{
		reports:            "reports",
		suiteName:          SuiteName("scenarios.yaml"),
		logger:             slog.New(slog.DiscardHandler),
		providers:          DefaultProvider,
		mesh:               installMesh,
		images:             BuiltImage{},
		transport:          probe.NewKubeExecer,
		reachTimeout:       DefaultReachTimeout,
		leaseWait:          DefaultLeaseWait,
		leaseDuration:      DefaultLeaseDuration,
		terminatingTimeout: deploy.DefaultTerminatingTimeout,
		gracePeriod:        DefaultGracePeriod,
		cleanupTimeout:     DefaultCleanupTimeout,
		parallel:           1,
	}
}

// WithReports sets the folder run folders are written under (default
// "reports").
func WithReports(dir string) Option { return func(s *settings) { s.reports = dir } }

// WithSuiteName names the JUnit suite (default SuiteName("scenarios.yaml");
// use SuiteName of the file the suite was read from).
func WithSuiteName(name string) Option { return func(s *settings) { s.suiteName = name } }

// WithLogger receives the run's progress lines (default: none).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.logger = l } }

// WithKeep leaves clusters, Istio and fixtures in place after the run, for
// debugging.
func WithKeep(keep bool) Option { return func(s *settings) { s.keep = keep } }

// WithIstioVersion installs version on every cluster instead of the
// file's.
func WithIstioVersion(v string) Option { return func(s *settings) { s.istioVersion = v } }

// WithLabelFilter selects the scenarios whose labels match a Ginkgo label
// filter expression (e.g. "rotation && !slow"), as `ginkgo --label-filter`
// does; it is an error to give an expression Ginkgo cannot parse.
func WithLabelFilter(expr string) (Option, error) {
	if expr == "" {
		return func(*settings) {}, nil
	}
	f, err := types.ParseLabelFilter(expr)
	if err != nil {
		return nil, labelFilterError(expr, err)
	}
	return func(s *settings) { s.labelFilter = f }, nil
}

// styleTag is one of the formatting tags of Ginkgo's messages ({{red}}).
var styleTag = regexp.MustCompile(`\{\{[a-z/-]*\}\}`)

// labelFilterError says what is wrong with a label filter in plain text
// (Ginkgo's error colours it for a terminal whatever the output is), with
// a caret under the character Ginkgo points at.
func labelFilterError(expr string, err error) error {
	var ge types.GinkgoError
	if !errors.As(err, &ge) {
		return fmt.Errorf("label filter %q: %w", expr, err)
	}
	input, why, _ := strings.Cut(ge.Message, "\n")
	caret := ""
	if i := strings.Index(input, "{{red}}{{bold}}{{underline}}"); i >= 0 {
		caret = fmt.Sprintf("\n  %s\n  %s^", expr, strings.Repeat(" ", utf8.RuneCountInString(styleTag.ReplaceAllString(input[:i], ""))))
	}
	return fmt.Errorf("label filter %q: %s: %s%s", expr, strings.ToLower(styleTag.ReplaceAllString(ge.Heading, "")), strings.TrimSpace(styleTag.ReplaceAllString(why, "")), caret)
}

// WithProviders makes the cluster providers (default DefaultProvider: kind
// or an existing cluster, as the file says).
func WithProviders(f ProviderFunc) Option { return func(s *settings) { s.providers = f } }

// withMesh replaces the mesh installer (default installMesh: Istio with
// Helm), for tests of clusters that run no istiod.
func withMesh(f meshFunc) Option { return func(s *settings) { s.mesh = f } }

// WithHelmPostRenderer has Helm pass the objects of Istio's charts through
// the post-renderer f returns for the cluster a config reaches, before it
// applies them, as `helm install --post-renderer` does. A rehearsal uses it
// to point Istio's webhooks at local istiod processes instead of a Service.
func WithHelmPostRenderer(f func(*rest.Config) (postrenderer.PostRenderer, error)) Option {
	return func(s *settings) { s.postRenderer = f }
}

// WithIstioReadyTimeout bounds the wait for istiod to serve and inject once
// Istio is installed (default: the installer's, 5 min).
func WithIstioReadyTimeout(d time.Duration) Option {
	return func(s *settings) { s.istioReadyTimeout = d }
}

// WithImageDelivery delivers the echo image (default BuiltImage).
func WithImageDelivery(d ImageDelivery) Option { return func(s *settings) { s.images = d } }

// WithTransport builds the pod transport (default: exec through the API
// server, probe.NewKubeExecer).
func WithTransport(f TransportFunc) Option { return func(s *settings) { s.transport = f } }

// WithDataPlane labels every observation and verdict of the run with what
// stands in for the cluster's sidecars (results.Observation.DataPlane), so
// that results.json, junit.xml and report.html say it. A transport that
// is not the cluster's real data plane must come with its label.
func WithDataPlane(label string) Option { return func(s *settings) { s.dataPlane = label } }

// WithTransportWitness says the transport itself sets what the wire
// witness saw of each probe request (echoapi.ProbeResult.Witness), as a
// rehearsal's does on loopback: the run then deploys no witness pods, and
// the steps' wireWitness settings resolve auto as in a rehearsal.
func WithTransportWitness() Option { return func(s *settings) { s.transportWitness = true } }

// WithReachTimeout bounds how long a cluster's API server may take to
// answer (default DefaultReachTimeout).
func WithReachTimeout(d time.Duration) Option { return func(s *settings) { s.reachTimeout = d } }

// WithLeaseWait bounds how long a run waits for another run to release the
// cluster (default DefaultLeaseWait).
func WithLeaseWait(d time.Duration) Option { return func(s *settings) { s.leaseWait = d } }

// WithLeaseDuration is how long the cluster's Lease stays valid without
// renewal (default DefaultLeaseDuration): how soon the next run may take
// over from a run that crashed. It is renewed at a third of it.
func WithLeaseDuration(d time.Duration) Option { return func(s *settings) { s.leaseDuration = d } }

// WithTerminatingTimeout bounds the wait for an earlier run's namespaces to
// finish terminating (default deploy.DefaultTerminatingTimeout).
func WithTerminatingTimeout(d time.Duration) Option {
	return func(s *settings) { s.terminatingTimeout = d }
}

// WithGracePeriod is how long an interrupted run may take for diagnostics
// (default DefaultGracePeriod); match it to the caller's own grace period,
// e.g. Ginkgo's --grace-period.
func WithGracePeriod(d time.Duration) Option { return func(s *settings) { s.gracePeriod = d } }

// WithCleanupTimeout bounds each clean-up of Execute and Start (a
// scenario's end, the teardown) from when it begins (default
// DefaultCleanupTimeout).
func WithCleanupTimeout(d time.Duration) Option { return func(s *settings) { s.cleanupTimeout = d } }

// WithParallel runs up to n scenarios at once (default 1; meshproof run
// and the Ginkgo suite use DefaultParallel). With n > 1 a scenario whose
// policies touch only its own namespaces runs in a copy of the fixtures it
// uses, in namespaces named from the run and the scenario, beside others;
// one that changes what every namespace shares (mesh-scope policies,
// upgrades, root rotations) runs alone, after them, on the fixtures' own
// namespaces (package schedule says which and why; Run.Schedule shows
// it). With 1 every scenario runs on the fixtures' own namespaces, one
// after the other, in file order.
func WithParallel(n int) Option { return func(s *settings) { s.parallel = max(n, 1) } }

// Shard is one of Count parts of a file's scenarios (Index from 1), each
// run by a CI job of its own on a cluster of its own; the zero Shard is the
// whole run.
type Shard = schedule.Shard

// ParseShard reads "i/n", as `meshproof run --shard` takes it.
func ParseShard(s string) (Shard, error) { return schedule.ParseShard(s) }

// WithShard runs only shard's part of the scenarios the label filter
// selects (schedule.Shard.Select), e.g. one CI job of a matrix; `meshproof
// report merge` combines the shards' run folders.
func WithShard(shard schedule.Shard) Option { return func(s *settings) { s.shard = shard } }

// WithScenarioFilter runs only the scenarios keep selects, besides the
// label filter (the Ginkgo suite passes its --focus and --skip).
func WithScenarioFilter(keep func(*scenario.Scenario) bool) Option {
	return func(s *settings) { s.scenarioFilter = keep }
}

// DefaultProvider is kind for kind clusters and cluster.Existing for
// existing ones.
func DefaultProvider(c *scenario.Cluster, kubeconfigDir string, logger *slog.Logger) (support.E2EClusterProvider, error) {
	opts := []cluster.Option{cluster.WithKubeconfigDir(kubeconfigDir), cluster.WithLogger(logger)}
	switch c.Provider {
	case scenario.ProviderKind:
		opts = append(opts, cluster.WithReuse(c.Kind.Reuse))
		if c.Kind.NodeImage != "" {
			opts = append(opts, cluster.WithNodeImage(c.Kind.NodeImage))
		}
		switch {
		case c.Kind.ConfigFile != "":
			opts = append(opts, cluster.WithConfigFile(c.Kind.ConfigFile))
		case c.Kind.Config != "":
			opts = append(opts, cluster.WithConfig([]byte(c.Kind.Config)))
		}
		return cluster.NewKind(c.Name, opts...)
	case scenario.ProviderExisting:
		path, kctx := "", ""
		if c.Existing != nil {
			path, kctx = expandHome(c.Existing.Kubeconfig), c.Existing.Context
		}
		return cluster.NewExisting(path, kctx, opts...)
	}
	return nil, fmt.Errorf("cluster %s: no provider for %q", c.Name, c.Provider)
}

// installMesh, in install mode, installs Istio with the plugged CA first
// (harness/internal/mesh), recording what it creates in the run's ledger and
// refusing releases it did not install (unless istio.adoptReleases), and
// waits until istiod serves and injects. In use-existing mode it installs
// nothing: it detects the control plane that is there and waits until it
// is healthy; the mesh it returns is nil (nothing to upgrade or remove).
// more are the installer options the run's settings add
// (WithHelmPostRenderer, WithIstioReadyTimeout).
func installMesh(ctx context.Context, on target, c *scenario.Cluster, log *slog.Logger, more []istio.Option) (*mesh.Mesh, error) {
	if c.Istio.Mode == scenario.IstioUseExisting {
		inst, err := istio.UseExisting(ctx, on.REST, scenario.IstioRootNamespace, useExistingTimeout, c.Ambient())
		if err != nil {
			return nil, fmt.Errorf("use-existing: %w", err)
		}
		for _, cp := range inst.ControlPlanes {
			log.Info("using the Istio installed there", "deployment", cp.Deployment, "revision", cp.Revision, "version", cp.Version, "multiRoot", cp.MultiRoot, "pluggedCA", inst.PluggedCA)
		}
		return nil, nil
	}
	extra := []istio.Option{istio.WithAdoptReleases(c.Istio.AdoptReleases)}
	if on.Ledger != nil {
		extra = append(extra, istio.WithLedger(on.Ledger))
	}
	m, err := mesh.Install(ctx, on.Kube, on.REST, c, log, append(extra, more...)...)
	if err != nil {
		return m, err
	}
	if err := m.Ready(ctx); err != nil {
		return m, fmt.Errorf("waiting for Istio: %w", err)
	}
	return m, nil
}

// useExistingTimeout bounds the wait for an installed control plane to be
// healthy in use-existing mode.
const useExistingTimeout = 5 * time.Minute

// BuiltImage builds the echo image from source (cached) and loads it into
// clusters whose provider can load images (kind). An existing cluster gets
// it the way its file says (existing.image): pushed to a repository with
// the user's registry credentials, or an image the user published; either
// way by digest, and any registry problem fails before a fixture is
// deployed.
type BuiltImage struct{}

// Deliver builds the image and delivers it to the cluster.
func (BuiltImage) Deliver(ctx context.Context, p support.E2EClusterProvider, c *scenario.Cluster, log *slog.Logger) (string, error) {
	var source *scenario.ImageSource
	if c.Existing != nil {
		source = c.Existing.Image
	}
	if source != nil && source.Ref != "" {
		return image.Deliver(ctx, nil, image.UseRef(source.Ref))
	}
	img, err := image.Build(ctx, image.WithArch(runtime.GOARCH))
	if err != nil {
		return "", err
	}
	if source != nil && source.Push != "" {
		ref, err := image.Deliver(ctx, img, image.PushTo(source.Push))
		if err == nil {
			log.Info("echo image pushed", "image", img.Ref, "ref", ref)
		}
		return ref, err
	}
	loader, ok := p.(support.E2EClusterProviderWithImageLoader)
	if !ok {
		return "", fmt.Errorf("cluster %s cannot load %s from an archive: set existing.image.push (a repository meshproof pushes the echo image to, with your docker credentials) or existing.image.ref (an echo image you published)", c.Name, img.Ref)
	}
	if err := loader.LoadImageArchive(ctx, img.TarballPath); err != nil {
		return "", fmt.Errorf("loading %s into the cluster's nodes: %w", img.Ref, err)
	}
	return img.Ref, nil
}

// NewProgressHandler is a slog handler for people watching a run: one line
// per record, "15:04:05 message key=value ...".
func NewProgressHandler(w io.Writer) slog.Handler { return &progressHandler{w: w, mu: &sync.Mutex{}} }

type progressHandler struct {
	w     io.Writer
	mu    *sync.Mutex // shared by the handlers WithAttrs derives: one writer
	attrs []slog.Attr
}

func (h *progressHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *progressHandler) Handle(_ context.Context, r slog.Record) error {
	line := r.Time.Format("15:04:05") + " " + r.Message
	seen := map[string]string{}
	add := func(a slog.Attr) bool {
		v := a.Value.Resolve().String()
		if prev, ok := seen[a.Key]; ok && prev == v {
			return true // the same attribute from a logger and from its caller
		}
		seen[a.Key] = v
		if v == "" || strings.ContainsAny(v, " =\"\t\n") {
			v = strconv.Quote(v)
		}
		line += " " + a.Key + "=" + v
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, line+"\n")
	return err
}

func (h *progressHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &progressHandler{w: h.w, mu: h.mu, attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}

// WithGroup is not used by meshproof's packages; groups are flattened.
func (h *progressHandler) WithGroup(string) slog.Handler { return h }
