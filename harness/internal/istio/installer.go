package istio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"helm.sh/helm/v4/pkg/postrenderer"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"

	"github.com/meshproof/meshproof/harness/internal/istiocharts"
	"github.com/meshproof/meshproof/harness/internal/ledger"
)

const (
	// DefaultVersion is the Istio version meshproof installs unless told
	// otherwise.
	DefaultVersion = "1.30.3"
	// DefaultNamespace is where istiod and the Helm release records live.
	DefaultNamespace = "istio-system"
	// DefaultHub is the registry Istio publishes its release images to. The
	// charts ship with an empty (or testing) hub, so it is always set.
	DefaultHub = "docker.io/istio"
	// DefaultChartRepository is Istio's official Helm chart repository.
	DefaultChartRepository = istiocharts.DefaultRepository

	// BaseReleaseName and IstiodReleaseName are the Helm release names the
	// Istio documentation uses; a revisioned istiod gets "-<revision>"
	// appended so that several control planes can coexist.
	BaseReleaseName   = "istio-base"
	IstiodReleaseName = "istiod"
	// CNIReleaseName and ZtunnelReleaseName are the releases of ambient
	// mode's node agents, named as Istio's ambient Helm guide names them
	// (https://istio.io/latest/docs/ambient/install/helm/).
	CNIReleaseName     = "istio-cni"
	ZtunnelReleaseName = "ztunnel"
	// CNIDaemonSet and ZtunnelDaemonSet are the DaemonSets those releases
	// run on every node (the charts' names).
	CNIDaemonSet     = "istio-cni-node"
	ZtunnelDaemonSet = "ztunnel"
	// AmbientProfile is the profile of Istio's charts that turns ambient
	// mode on (files/profile-ambient.yaml in each chart).
	AmbientProfile = "ambient"

	defaultOperationTimeout = 5 * time.Minute
	defaultReadyTimeout     = 5 * time.Minute
)

// Installer installs, upgrades and removes one Istio control plane (the base
// and istiod Helm releases, plus canary istiod releases) in one namespace.
//
// An Installer remembers what it installed (version, chart source, revision,
// canary) so that Upgrade, canary steps and Uninstall act on the right
// releases. It is not safe for concurrent use.
type Installer struct {
	restConfig *rest.Config
	getter     *restClientGetter
	s          settings

	// current is the control plane the Installer manages; canary is the
	// second one during a canary upgrade (nil otherwise).
	current plane
	canary  *plane
}

// plane is one istiod release: its revision and where its charts come from.
type plane struct {
	revision string
	version  string
	tag      string
	charts   chartSource
}

type settings struct {
	version          string
	chartsDir        string
	chartRepository  string
	chartCacheDir    string
	namespace        string
	revision         string
	hub              string
	tag              string
	values           map[string]any
	workloadCertTTL  time.Duration
	trustDomain      string
	multiRoot        bool
	log              *slog.Logger
	operationTimeout time.Duration
	readyTimeout     time.Duration
	// ledger, when set, limits the Installer to what meshproof owns (see
	// WithLedger in ownership.go); adopt lets it upgrade foreign releases.
	ledger *ledger.Ledger
	adopt  bool
	// postRenderer, when set, rewrites every release's rendered manifests
	// before Helm applies them (WithPostRenderer).
	postRenderer postrenderer.PostRenderer
	// ambient installs Istio's ambient mode (WithAmbient).
	ambient bool
}

// Option configures an Installer.
type Option func(*settings)

// WithVersion selects the Istio version (e.g. "1.30.3"). It decides which
// charts are pulled from the repository and the default image tag.
func WithVersion(version string) Option { return func(s *settings) { s.version = version } }

// WithChartsDir uses local charts instead of the chart repository: dir must
// contain base/ and istiod/ chart directories for the selected version (for
// air-gapped users, and for tests).
func WithChartsDir(dir string) Option { return func(s *settings) { s.chartsDir = dir } }

// WithChartRepository replaces the official chart repository, e.g. with a
// mirror. Ignored when WithChartsDir is given.
func WithChartRepository(url string) Option { return func(s *settings) { s.chartRepository = url } }

// WithChartCacheDir sets where pulled chart archives are kept; charts for
// version v go to <dir>/<v>. The default is $MESHPROOF_CACHE/charts, else
// <user cache dir>/meshproof/charts ($HOME/.cache/meshproof/charts on Linux).
func WithChartCacheDir(dir string) Option { return func(s *settings) { s.chartCacheDir = dir } }

// WithNamespace sets the namespace of istiod and of the Helm release records.
func WithNamespace(ns string) Option { return func(s *settings) { s.namespace = ns } }

// WithRevision installs istiod as a named revision (istiod-<rev>, labelled
// istio.io/rev=<rev>), as Istio's canary upgrades require.
func WithRevision(rev string) Option { return func(s *settings) { s.revision = rev } }

// WithHub sets the image registry (global.hub). Default DefaultHub.
func WithHub(hub string) Option { return func(s *settings) { s.hub = hub } }

// WithTag sets the image tag (global.tag) of the initial install. Default:
// the Istio version. Upgrade and InstallCanary always use their target
// version as the tag, because an old explicit tag would pin old images.
func WithTag(tag string) Option { return func(s *settings) { s.tag = tag } }

// WithValues deep-merges extra Helm values into the istiod release's values;
// on conflict the values given here win over meshproof's own.
func WithValues(values map[string]any) Option {
	return func(s *settings) { s.values = deepMerge(s.values, values) }
}

// WithWorkloadCertTTL sets the lifetime of workload certificates
// (meshConfig.defaultConfig.proxyMetadata.SECRET_TTL), so that rotation can
// be observed in minutes instead of a day.
func WithWorkloadCertTTL(d time.Duration) Option {
	return func(s *settings) { s.workloadCertTTL = d }
}

// WithTrustDomain sets meshConfig.trustDomain (SPIFFE trust domain).
func WithTrustDomain(td string) Option { return func(s *settings) { s.trustDomain = td } }

// WithMultiRoot enables Istio's multi-root trust (istiod env
// ISTIO_MULTIROOT_MESH=true and proxy metadata PROXY_CONFIG_XDS_AGENT=true),
// needed to rotate the root CA without breaking mTLS.
func WithMultiRoot(enabled bool) Option { return func(s *settings) { s.multiRoot = enabled } }

// WithAmbient installs Istio's ambient mode beside sidecars, as Istio's
// ambient Helm guide does: every chart with profile ambient (istiod then
// runs with PILOT_ENABLE_AMBIENT), and after base and istiod the istio-cni
// node agent and ztunnel. Uninstall removes them first; Upgrade upgrades
// them after istiod; WaitReady waits for them after istiod. The charts
// directory must then hold cni/ and ztunnel/ too. Canary upgrades are
// refused: istio-cni and ztunnel serve every revision of a node.
func WithAmbient(enabled bool) Option { return func(s *settings) { s.ambient = enabled } }

// WithPostRenderer makes every install, upgrade and render of a release
// (base, istiod, canary istiod) pass its rendered manifests through pr
// before Helm applies or returns them, as `helm install --post-renderer`
// does. The local cluster uses it to point Istio's webhooks at istiod
// processes on 127.0.0.1 instead of a Service nothing serves.
func WithPostRenderer(pr postrenderer.PostRenderer) Option {
	return func(s *settings) { s.postRenderer = pr }
}

// WithLogger receives progress messages and Helm's warnings (default:
// none).
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.log = l } }

// WithOperationTimeout bounds each Helm install/upgrade/uninstall. Default 5m.
func WithOperationTimeout(d time.Duration) Option {
	return func(s *settings) { s.operationTimeout = d }
}

// WithReadyTimeout bounds WaitReady. Default 5m.
func WithReadyTimeout(d time.Duration) Option { return func(s *settings) { s.readyTimeout = d } }

// errNoCluster is returned by cluster operations of an Installer created
// without a rest config (which can only Render).
var errNoCluster = errors.New("istio: this Installer has no cluster: pass a *rest.Config to New")

// New returns an Installer. restConfig may be nil for an Installer that only
// renders manifests (Render needs no cluster).
func New(restConfig *rest.Config, opts ...Option) (*Installer, error) {
	s := settings{
		version:          DefaultVersion,
		chartRepository:  DefaultChartRepository,
		namespace:        DefaultNamespace,
		hub:              DefaultHub,
		log:              slog.New(slog.DiscardHandler),
		operationTimeout: defaultOperationTimeout,
		readyTimeout:     defaultReadyTimeout,
	}
	for _, o := range opts {
		o(&s)
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	charts, err := newChartSource(s.version, s.chartsDir, s.chartRepository, s.chartCacheDir, s.chartNames())
	if err != nil {
		return nil, err
	}
	tag := s.tag
	if tag == "" {
		tag = s.version
	}
	in := &Installer{
		restConfig: restConfig,
		s:          s,
		current:    plane{revision: s.revision, version: s.version, tag: tag, charts: charts},
	}
	if restConfig != nil {
		in.getter = newRESTClientGetter(restConfig, s.namespace)
	}
	return in, nil
}

func (s *settings) validate() error {
	var errs []error
	if err := validateVersion(s.version); err != nil {
		errs = append(errs, err)
	}
	if msgs := validation.IsDNS1123Label(s.namespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("namespace %q: %s", s.namespace, strings.Join(msgs, "; ")))
	}
	if err := validateRevision(s.revision); err != nil {
		errs = append(errs, err)
	}
	if s.hub == "" {
		errs = append(errs, errors.New("image hub must not be empty"))
	}
	if s.workloadCertTTL < 0 {
		errs = append(errs, fmt.Errorf("workload cert TTL %s is negative", s.workloadCertTTL))
	}
	if s.operationTimeout <= 0 || s.readyTimeout <= 0 {
		errs = append(errs, errors.New("timeouts must be positive"))
	}
	if s.ambient && s.revision != "" {
		errs = append(errs, fmt.Errorf("revision %q with ambient mode: istio-cni and ztunnel serve every revision of a node, and meshproof installs them for the default revision only", s.revision))
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if len(errs) > 0 {
		return fmt.Errorf("istio: invalid options: %w", errors.Join(errs...))
	}
	return nil
}

// validateVersion accepts Istio release versions like 1.30.3 (optionally
// with a pre-release suffix); the version becomes part of chart URLs, cache
// paths and image tags, so anything else is rejected early.
func validateVersion(v string) error {
	if v == "" {
		return errors.New("istio version must not be empty")
	}
	core, _, _ := strings.Cut(v, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return fmt.Errorf("istio version %q is not of the form MAJOR.MINOR.PATCH", v)
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return fmt.Errorf("istio version %q is not of the form MAJOR.MINOR.PATCH", v)
		}
	}
	if strings.ContainsAny(v, "/\\ ") {
		return fmt.Errorf("istio version %q contains a path separator or space", v)
	}
	return nil
}

// validateRevision checks a revision name: Istio uses it in object names and
// label values, so it must be a DNS label; "default" is the name of the
// unrevisioned control plane, not a revision.
func validateRevision(rev string) error {
	if rev == "" {
		return nil
	}
	if rev == "default" {
		return errors.New(`revision "default" is reserved for the unrevisioned control plane; use "" instead`)
	}
	if msgs := validation.IsDNS1123Label(rev); len(msgs) > 0 {
		return fmt.Errorf("revision %q: %s (e.g. use 1-30-3 for 1.30.3)", rev, strings.Join(msgs, "; "))
	}
	return nil
}

// chartNames are the charts the Installer's control plane needs.
func (s *settings) chartNames() []string {
	if s.ambient {
		return []string{baseChart, istiodChart, cniChart, ztunnelChart}
	}
	return []string{baseChart, istiodChart}
}

// Ambient reports whether the Installer installs Istio's ambient mode.
func (i *Installer) Ambient() bool { return i.s.ambient }

// Namespace is the namespace of istiod and of the Helm release records.
func (i *Installer) Namespace() string { return i.s.namespace }

// Version is the Istio version of the control plane the Installer manages.
func (i *Installer) Version() string { return i.current.version }

// Revision is the revision of the control plane the Installer manages (""
// for the default revision).
func (i *Installer) Revision() string { return i.current.revision }

// IstiodReleaseName returns the Helm release name of the istiod of revision
// rev: "istiod" for the default revision, "istiod-<rev>" otherwise.
func istiodReleaseName(rev string) string {
	if rev == "" {
		return IstiodReleaseName
	}
	return IstiodReleaseName + "-" + rev
}

// revisionLabelValue is the istio.io/rev value of a revision; the charts
// label the unrevisioned control plane "default".
func revisionLabelValue(rev string) string {
	if rev == "" {
		return "default"
	}
	return rev
}

// helmLogHandler forwards Helm's warnings and errors to the Installer's
// logger, marked as Helm's; Helm's debug and info chatter is dropped.
func (i *Installer) helmLogHandler() slog.Handler {
	return minLevel{Handler: i.s.log.With("source", "helm").Handler(), min: slog.LevelWarn}
}

// minLevel drops the records of a handler below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
