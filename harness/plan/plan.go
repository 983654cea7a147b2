// Package plan computes what a run of a scenario file does, without a
// cluster: the setup of each cluster, the ordered operations of every
// scenario step, and every Kubernetes object meshproof would apply, the
// objects of Istio's Helm charts included where meshproof installs Istio
// (WithIstioCharts; rendered by RenderCharts with the installer's own
// values). The
// `meshproof plan` command prints it; the Ginkgo suite names its specs after
// the same scenarios and steps, so the two listings agree.
package plan

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// PlaceholderImage stands for the echo image in a plan: the real tag is the
// digest of the binary, known once the image is built at run time.
const PlaceholderImage = "meshproof.local/echo:planned"

// Plan is everything a run does, in order.
type Plan struct {
	RunID     string
	Suite     *scenario.Suite
	Clusters  []ClusterPlan
	Scenarios []ScenarioPlan
	// Schedule says which scenarios run together, each in namespaces of
	// its own, and which run alone and why (WithParallel).
	Schedule schedule.Schedule
}

// DefaultParallel is how many scenarios a run starts at once unless told
// otherwise (meshproof run --parallel).
const DefaultParallel = schedule.DefaultParallel

// Option adjusts Build.
type Option func(*options)

type options struct {
	parallel int
	charts   func(*scenario.Cluster) (IstioCharts, error)
}

// WithParallel plans a run of up to n scenarios at once (default
// schedule.DefaultParallel, as meshproof run).
func WithParallel(n int) Option { return func(o *options) { o.parallel = n } }

// ClusterPlan is the setup of one cluster and the fixtures deployed on it.
type ClusterPlan struct {
	Cluster  *scenario.Cluster
	Setup    []string
	Fixtures []client.Object
	// Witness are the wire witness's objects (its namespace and one pod
	// per node), when the cluster's steps watch the wire.
	Witness []client.Object
	// Istio is the Istio the run installs there; nil when the cluster's
	// file says to use the Istio already installed (mode use-existing).
	Istio *IstioInstall
}

// ScenarioPlan is one scenario's steps.
type ScenarioPlan struct {
	Scenario *scenario.Scenario
	// Fixtures are the scenario's own copy of the fixtures it uses, when
	// it runs isolated (in namespaces of its own), deployed as it begins.
	Fixtures []client.Object
	Steps    []StepPlan
}

// StepPlan is what one step does, and the objects it applies.
type StepPlan struct {
	Step       *scenario.Step
	Operations []string
	Policies   []policy.Object
	// Patched are fixtures as the step leaves them (a moveDataPlane's
	// Deployments with their new pod template labels).
	Patched []client.Object
}

// Build computes the plan of a loaded, valid suite.
func Build(s *scenario.Suite, runID string, opts ...Option) (*Plan, error) {
	o := options{parallel: schedule.DefaultParallel}
	for _, opt := range opts {
		opt(&o)
	}
	p := &Plan{RunID: runID, Suite: s}
	all := make([]*scenario.Scenario, len(s.Scenarios))
	for i := range s.Scenarios {
		all[i] = &s.Scenarios[i]
	}
	p.Schedule = schedule.Build(s, all, o.parallel)
	defer func() {
		// Fixtures no scenario runs on are not deployed at setup: each
		// isolated scenario deploys its own copy.
		for i := range p.Clusters {
			cp := &p.Clusters[i]
			if slices.ContainsFunc(p.Schedule.Alone, func(pl schedule.Placement) bool { return pl.Scenario.Cluster == cp.Cluster.Name }) {
				continue
			}
			if i := slices.IndexFunc(cp.Setup, func(op string) bool { return strings.HasPrefix(op, deployFixtures) }); i >= 0 {
				cp.Setup[i] = "no fixtures at setup: each scenario deploys its own copy of those it uses, in namespaces of its own (see the schedule), of " + strings.TrimPrefix(cp.Setup[i], deployFixtures)
			}
			cp.Fixtures = nil // the scenarios' copies are theirs (ScenarioPlan.Fixtures)
		}
	}()
	for i := range s.Clusters {
		cp, err := clusterPlan(s, &s.Clusters[i], runID, o.charts)
		if err != nil {
			return nil, err
		}
		p.Clusters = append(p.Clusters, cp)
	}
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		sp := ScenarioPlan{Scenario: sc}
		// An isolated scenario's steps act on its copy: its policies in the
		// copy's namespaces, its identities the copy's (as the run does).
		steps, stepsOf := s, sc
		if slices.ContainsFunc(p.Schedule.Together, func(pl schedule.Placement) bool { return pl.Scenario == sc }) {
			c := schedule.Isolate(s, sc, runID)
			steps, stepsOf = c.Suite, c.Scenario
			objs, err := manifests.Render(CopyFixtureOptions(c, s.Cluster(sc.Cluster), runID, PlaceholderImage))
			if err != nil {
				return nil, fmt.Errorf("scenario %s: rendering its copy of the fixtures: %w", sc.Name, err)
			}
			for _, o := range objs {
				if ns, ok := o.(*corev1.Namespace); ok { // as the run's ledger makes it
					ns.Labels[ownership.ScenarioLabel] = ownership.LabelValue(sc.Name)
				}
			}
			sp.Fixtures = objs
		}
		for j := range sc.Steps {
			st, err := stepPlan(steps, stepsOf, j, runID)
			if err != nil {
				return nil, err
			}
			sp.Steps = append(sp.Steps, st)
		}
		p.Scenarios = append(p.Scenarios, sp)
	}
	return p, nil
}

// FixtureOptions are the manifests options for a suite's workloads on a
// cluster: namespaces are labelled for injection by that cluster's Istio.
func FixtureOptions(s *scenario.Suite, c *scenario.Cluster, runID, image string) manifests.Options {
	opts := manifests.Options{RunID: runID, Image: image}
	seen := map[string]bool{}
	for _, w := range s.Fixtures.Workloads {
		if !seen[w.Namespace] {
			seen[w.Namespace] = true
			opts.Namespaces = append(opts.Namespaces, manifests.Namespace{Name: w.Namespace, Revision: c.Istio.Revision})
		}
		mw := manifests.Workload{Name: w.Name, ServiceAccount: w.ServiceAccount, Namespace: w.Namespace, InMesh: w.InMesh(), Proxyless: w.Proxyless, TLSModeLabel: w.TLSModeLabel, Ambient: w.Ambient()}
		for _, port := range w.Ports {
			mw.Ports = append(mw.Ports, manifests.Port{Name: port.Name, Number: int32(port.Number), TargetPort: int32(port.Target()), Protocol: string(port.Protocol)})
		}
		opts.Workloads = append(opts.Workloads, mw)
	}
	return opts
}

// CopyFixtureOptions are the manifests options for an isolated scenario's
// copy of the fixtures (schedule.Isolate): FixtureOptions of the copy's
// suite, and every namespace of the copy even where it holds no workload
// the scenario uses, since its policies are applied there.
func CopyFixtureOptions(cp *schedule.Copy, c *scenario.Cluster, runID, image string) manifests.Options {
	opts := FixtureOptions(cp.Suite, c, runID, image)
	for _, ns := range cp.CopyNamespaces() {
		if !slices.ContainsFunc(opts.Namespaces, func(n manifests.Namespace) bool { return n.Name == ns }) {
			opts.Namespaces = append(opts.Namespaces, manifests.Namespace{Name: ns, Revision: c.Istio.Revision})
		}
	}
	return opts
}

func clusterPlan(s *scenario.Suite, c *scenario.Cluster, runID string, charts func(*scenario.Cluster) (IstioCharts, error)) (ClusterPlan, error) {
	cp := ClusterPlan{Cluster: c}
	add := func(format string, args ...any) { cp.Setup = append(cp.Setup, fmt.Sprintf(format, args...)) }
	switch c.Provider {
	case scenario.ProviderKind:
		image := c.Kind.NodeImage
		if image == "" {
			image = "kind's default node image"
		}
		verb := "create kind cluster"
		if c.Kind.Reuse {
			verb = "create kind cluster (or reuse it if it exists)"
		}
		config := ""
		switch {
		case c.Kind.ConfigFile != "":
			config = ", config " + c.Kind.ConfigFile
		case c.Kind.Config != "":
			config = ", inline config"
		}
		add("%s %q with %s%s; wait for every node and kube-system pod to be Ready", verb, c.Name, image, config)
	case scenario.ProviderExisting:
		kc, ctx := "$KUBECONFIG or ~/.kube/config", "current context"
		if c.Existing != nil && c.Existing.Kubeconfig != "" {
			kc = c.Existing.Kubeconfig
		}
		if c.Existing != nil && c.Existing.Context != "" {
			ctx = "context " + c.Existing.Context
		}
		add("use existing cluster %q from %s (%s); never deleted", c.Name, kc, ctx)
	}
	add("take the cluster's Lease (one meshproof run per cluster at a time; wait while another run holds it)")
	add("undo the ledgers of earlier runs that are over (their Lease expired): delete what each recorded creating, if it is still that run's, and restore the namespace labels it set; then delete objects labelled %s=%s whose %s is another run's", ownership.ManagedByLabel, ownership.ManagedByValue, ownership.RunIDLabel)
	in := c.Istio
	if in.Mode == scenario.IstioUseExisting {
		add("use the Istio installed in %s: detect its istiod Deployments (revision, version, plugged CA) and wait until they are healthy; install, upgrade and remove nothing of Istio (the version found is logged; the file's %s is not enforced)", scenario.IstioRootNamespace, in.Version)
	} else {
		cp.Istio = istioInstall(c, runID, charts)
		if in.PluggedCA {
			add("generate a root and an intermediate CA; create secret istio-system/cacerts before istiod starts")
		}
		charts := cp.Istio.Charts
		var extra []string
		if in.Revision != "" {
			extra = append(extra, "revision "+in.Revision)
		}
		if !in.WorkloadCertTTL.IsZero() {
			extra = append(extra, "workload certificate TTL "+in.WorkloadCertTTL.String()+" (SECRET_TTL)")
		}
		if in.TrustDomain != scenario.DefaultTrustDomain {
			extra = append(extra, "trust domain "+in.TrustDomain)
		}
		if len(in.Values) > 0 {
			extra = append(extra, "with Helm values from the file")
		}
		wait := "wait until istiod is Available and the sidecar injector injects"
		if c.Ambient() {
			add("install Istio %s from %s with profile ambient: base (CRDs), then istiod, istio-cni and ztunnel; images %s/*:%s%s", in.Version, charts, in.Hub, in.Tag, prefixed("; ", strings.Join(extra, ", ")))
			wait += ", istio-cni is ready on every node and ztunnel is Ready on every node"
		} else {
			add("install Istio %s from %s: base (CRDs), then istiod; images %s/*:%s%s", in.Version, charts, in.Hub, in.Tag, prefixed("; ", strings.Join(extra, ", ")))
		}
		switch {
		case errors.Is(cp.Istio.Err, errNoCharts):
			// Built without the installer's view: no release to name.
		case cp.Istio.Err != nil:
			add("Istio's charts cannot be used as the file says: %v", cp.Istio.Err)
		default:
			add("%s; `meshproof plan -o yaml` prints their objects, or says why it cannot%s", cp.Istio.describeReleases(), cp.Istio.uncached())
		}
		add("%s", wait)
	}
	var source *scenario.ImageSource
	if c.Existing != nil {
		source = c.Existing.Image
	}
	switch {
	case c.Provider == scenario.ProviderKind:
		add("build the echo image from source (cached) and load it into every node")
	case source != nil && source.Ref != "":
		add("use the echo image %s you published (a tag is resolved to its digest, which must exist); nothing is built or pushed", source.Ref)
	case source != nil && source.Push != "":
		add("build the echo image from source (cached) and push it to %s with your docker credentials; pods use it by digest", source.Push)
	default:
		add("build the echo image from source (cached) and load it into the nodes: only a provider that loads image archives can; otherwise set existing.image (push or ref)")
	}
	opts := FixtureOptions(s, c, runID, PlaceholderImage)
	objs, err := manifests.Render(opts)
	if err != nil {
		return cp, fmt.Errorf("cluster %s: rendering fixtures: %w", c.Name, err)
	}
	cp.Fixtures = objs
	var ws []string
	for _, w := range opts.Workloads {
		where := "in the mesh"
		switch {
		case !w.InMesh:
			where = "out of the mesh"
		case w.Ambient:
			where = "ambient (ztunnel, no sidecar; label " + manifests.DataplaneModeLabel + "=" + manifests.DataplaneModeAmbient + ")"
		case w.Proxyless && w.TLSModeLabel:
			where = "proxyless gRPC (grpc-agent), labelled tlsMode=istio"
		case w.Proxyless:
			where = "proxyless gRPC (grpc-agent)"
		}
		var ports []string
		for _, p := range w.Ports {
			port := fmt.Sprintf("%s %d", p.Name, p.Number)
			if p.Target() != p.Number {
				port += fmt.Sprintf("->%d", p.Target())
			}
			if p.Protocol != manifests.ProtocolHTTP {
				port += "/" + p.Protocol
			}
			ports = append(ports, port)
		}
		ws = append(ws, fmt.Sprintf("%s/%s (%s; %s)", w.Namespace, w.Name, where, strings.Join(ports, ", ")))
	}
	add(deployFixtures+"%s; wait for their rollout", strings.Join(ws, ", "))
	switch w := s.DeployWireWitness(c, false); w {
	case scenario.WitnessOn, scenario.WitnessRequired:
		cp.Witness = manifests.WireWitness(runID, PlaceholderImage)
		refused := "if admission refuses it, say so and judge nothing on the wire"
		if w == scenario.WitnessRequired {
			refused = "if admission refuses it, fail the setup"
		}
		add("deploy the wire witness (wireWitness %s): namespace %s, DaemonSet %s, one pod per node in the host network with NET_RAW and NET_ADMIN, `echo witness serve` from the echo image; %s", w, manifests.WitnessNamespace, manifests.WitnessDaemonSet, refused)
	}
	return cp, nil
}

// deployFixtures begins the setup operation that deploys the fixtures,
// which Build rewrites when every scenario deploys its own copy.
const deployFixtures = "deploy fixtures: "

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func stepPlan(s *scenario.Suite, sc *scenario.Scenario, index int, runID string) (StepPlan, error) {
	st := &sc.Steps[index]
	sp := StepPlan{Step: st}
	planner, ok := stepPlanners[st.Kind()]
	if !ok {
		return sp, fmt.Errorf("scenario %s, step %q: no plan for a step of kind %q", sc.Name, st.Name, st.Kind())
	}
	b := &stepBuilder{suite: s, sc: sc, index: index, st: st, runID: runID, plan: &sp,
		cluster: s.Cluster(sc.Cluster), trustDomain: s.Cluster(sc.Cluster).Istio.TrustDomain}
	if err := planner(b); err != nil {
		return sp, err
	}
	return sp, nil
}

// stepBuilder is what planning one step needs.
type stepBuilder struct {
	suite       *scenario.Suite
	sc          *scenario.Scenario
	index       int
	st          *scenario.Step
	runID       string
	cluster     *scenario.Cluster
	trustDomain string
	plan        *StepPlan
}

func (b *stepBuilder) add(format string, args ...any) {
	b.plan.Operations = append(b.plan.Operations, fmt.Sprintf(format, args...))
}

// policies renders a policy set into the step's objects.
func (b *stepBuilder) policies(m *scenario.MTLSStep) error {
	objs, err := policy.ForMTLS(b.suite, m, policy.Step{RunID: b.runID, Scenario: b.sc.Name, Index: b.index})
	if err != nil {
		return fmt.Errorf("scenario %s, step %q: %w", b.sc.Name, b.st.Name, err)
	}
	b.plan.Policies = objs
	return nil
}

// stepPlanners describes each kind of step; a test holds it to scenario's
// table of step kinds.
var stepPlanners = map[string]func(b *stepBuilder) error{
	scenario.KindMTLS: func(b *stepBuilder) error {
		m := b.st.MTLS
		if err := b.policies(m); err != nil {
			return err
		}
		b.add("remove the policies of the previous step, if any")
		for _, pa := range m.PeerAuthentications {
			ports := ""
			for _, pm := range pa.Ports {
				ports += fmt.Sprintf(", port %d %s", pm.Port, pm.Mode)
			}
			target := pa.Namespace + " namespace"
			switch pa.Scope {
			case scenario.ScopeMesh:
				target = "the whole mesh"
			case scenario.ScopeWorkload:
				target = "workload " + pa.Workload
			}
			b.add("apply PeerAuthentication %s for %s%s", pa.Mode, target, ports)
		}
		for _, dr := range m.DestinationRules {
			port := ""
			if dr.Port != 0 {
				port = fmt.Sprintf(" port %d", dr.Port)
			}
			target := dr.Workload
			if dr.Scope == scenario.DRScopeMesh {
				target = "every service (host \"*\" in " + scenario.IstioRootNamespace + ") that has no DestinationRule of its own"
			}
			b.add("apply DestinationRule tls %s towards %s%s", dr.Mode, target, port)
		}
		if len(m.DestinationRules) == 0 {
			b.add("no DestinationRule: clients use auto mTLS")
		}
		return nil
	},
	scenario.KindExpect: func(b *stepBuilder) error {
		s := b.suite
		table, err := oracle.Table(s, b.sc, b.index)
		if err != nil {
			return err
		}
		if b.st.Expect.Auto {
			b.add("expectations predicted from the policies in force (meshproof predict):")
		}
		b.add("probe every %s (%d requests per pair per round, each at most %s) until %d rounds in a row match:",
			s.Defaults.Interval, s.Defaults.Requests, s.Defaults.RequestTimeout, s.Defaults.Consecutive)
		for _, e := range table {
			b.add("  %s -> %s:%d  %s", e.From, e.To, e.Port, describeResult(s, e, b.trustDomain))
		}
		return nil
	},
	scenario.KindRotate: func(b *stepBuilder) error {
		r := b.st.Rotate
		w := b.suite.AtStep(b.sc, b.index).Workload(r.Workload)
		if w.Ambient() {
			b.add("record the certificate %s's node's ztunnel holds for it (ztunnel's config dump, through a port-forward)", w.Name)
		} else {
			b.add("record the certificate %s serves (TLS handshake from an out-of-mesh client, and its sidecar's config dump)", w.Name)
		}
		b.add("wait up to %s for a new serial with the same identity %s, a later notBefore, a chain to the mesh root, and no failed mTLS request meanwhile", r.Within, w.SPIFFEID(b.trustDomain))
		return nil
	},
	scenario.KindTransition: func(b *stepBuilder) error {
		tr := b.st.Transition
		if err := b.policies(&tr.To); err != nil {
			return err
		}
		addTraffic(b.add, tr.Traffic)
		b.add("apply the new policies (%s), remove the previous ones, and keep probing for %s", tr.To.Summary(), tr.Observe)
		b.add("record each pair's timeline and the time until every pair settled; at most %d failed requests", tr.Traffic.MaxFailures)
		if !tr.NoPlaintextAfter.IsZero() {
			b.add("fail if a STRICT server still accepts plaintext %s after the change", tr.NoPlaintextAfter)
		}
		return nil
	},
	scenario.KindMove: func(b *stepBuilder) error {
		m := b.st.MoveDataPlane
		labels, annotations := manifests.AmbientPodMetadata()
		change := "set pod template labels " + keyValues(labels) + " and annotation " + keyValues(annotations)
		check := "enrolled by istio-cni (annotation " + manifests.AmbientRedirectionAnnotation + "=" + manifests.AmbientRedirectionEnabled + ") and without an istio-proxy container"
		if m.To == scenario.DataPlaneSidecar {
			change = "remove pod template labels " + keys(labels) + " and annotation " + keys(annotations) + " (the namespace's injection gives the pods a sidecar)"
			check = "with an injected istio-proxy container and not enrolled in ambient"
		}
		before := b.suite.AtStep(b.sc, b.index-1)
		addTraffic(b.add, m.Traffic)
		for _, name := range m.Workloads {
			w := before.Workload(name)
			b.add("move %s/%s from %s to %s: patch its Deployment's pod template (%s; nothing else changes), which rolls its pods", w.Namespace, w.Name, w.Plane(), m.To, change)
		}
		b.add("wait up to %s for the rollout, each new pod %s", m.Within, check)
		b.add("keep probing for %s; judge each request against the outcome predicted for the data planes before the move, then after it; at most %d failed requests",
			m.Observe, m.Traffic.MaxFailures)
		b.add("at the end of the scenario, move %s back to the data plane the file gives (not needed in namespaces of its own, which are removed)", strings.Join(m.Workloads, ", "))
		objs, err := manifests.Render(FixtureOptions(b.suite.AtStep(b.sc, b.index), b.cluster, b.runID, PlaceholderImage))
		if err != nil {
			return fmt.Errorf("scenario %s, step %q: rendering the moved workloads: %w", b.sc.Name, b.st.Name, err)
		}
		for _, o := range objs {
			if d, ok := o.(*appsv1.Deployment); ok && slices.ContainsFunc(m.Workloads, func(name string) bool {
				w := b.suite.Workload(name)
				return w.Name == d.Name && w.Namespace == d.Namespace
			}) {
				b.plan.Patched = append(b.plan.Patched, d)
			}
		}
		return nil
	},
	scenario.KindUpgrade: func(b *stepBuilder) error {
		u := b.st.Upgrade
		addTraffic(b.add, u.Traffic)
		switch u.Method {
		case scenario.UpgradeCanary:
			b.add("install istiod %s as revision %s beside the current one; relabel the fixture namespaces istio.io/rev=%s", u.To, u.Revision, u.Revision)
			b.add("restart every in-mesh workload onto the new proxies; remove the old istiod")
		default:
			releases := "base, then istiod,"
			if b.suite.Cluster(b.sc.Cluster).Ambient() {
				releases = "base, then istiod, istio-cni and ztunnel,"
			}
			b.add("helm upgrade %s to %s; restart every in-mesh workload onto the new proxies", releases, u.To)
		}
		b.add("check every sidecar runs proxy %s; at most %d failed requests and no plaintext accepted by a STRICT server", u.To, u.Traffic.MaxFailures)
		return nil
	},
	scenario.KindRotateRoot: func(b *stepBuilder) error {
		r := b.st.RotateRoot
		addTraffic(b.add, r.Traffic)
		b.add("Istio's multi-root rotation, each phase within %s: trust old and new roots, issue from a new intermediate, drop the old root", r.Within)
		b.add("check every workload chain verifies against the new root only; at most %d failed requests", r.Traffic.MaxFailures)
		return nil
	},
	scenario.KindRestart: func(b *stepBuilder) error {
		b.add("restart %s and wait for the rollout", strings.Join(b.st.Restart.Workloads, ", "))
		return nil
	},
	scenario.KindWait: func(b *stepBuilder) error {
		w := b.st.Wait
		if len(w.Workloads) > 0 {
			b.add("wait until %s are rolled out and ready", strings.Join(w.Workloads, ", "))
		} else {
			b.add("wait %s", w.Duration)
		}
		return nil
	},
}

// keyValues is "k=v, k2=v2" of a map, sorted by key.
func keyValues(m map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return strings.Join(out, ", ")
}

// keys is "k, k2" of a map, sorted.
func keys(m map[string]string) string { return strings.Join(slices.Sorted(maps.Keys(m)), ", ") }

// addTraffic describes the continuous probing of a step.
func addTraffic(add func(string, ...any), t scenario.Traffic) {
	var pairs []string
	for _, p := range t.Pairs {
		pairs = append(pairs, fmt.Sprintf("%s -> %s:%d", p.From, p.To, p.Port))
	}
	add("probe continuously every %s: %s", t.Every, strings.Join(pairs, ", "))
}

func describeResult(s *scenario.Suite, e scenario.Expectation, trustDomain string) string {
	switch e.Result {
	case scenario.ResultMTLS:
		from, to := s.Workload(e.From), s.Workload(e.To)
		return fmt.Sprintf("mtls (client %s, server %s)", from.SPIFFEID(trustDomain), to.SPIFFEID(trustDomain))
	case scenario.ResultFail:
		if e.Reason != "" {
			return "fail (" + e.Reason + ")"
		}
		return "fail (any reason)"
	}
	return string(e.Result)
}

// Objects lists every object of the plan: each cluster's Istio install
// (Istio's namespace and the objects of its releases rendered by
// RenderCharts), its fixtures and wire witness, then each scenario's copy
// of them (if it runs isolated), every step's patched fixtures (a move
// between data planes) and policies, in file order: what WriteYAML prints.
func (p *Plan) Objects() []client.Object {
	var out []client.Object
	for _, c := range p.Clusters {
		if c.Istio != nil {
			out = append(out, c.Istio.Namespace)
			for _, r := range c.Istio.Releases {
				for _, o := range r.Objects {
					out = append(out, o)
				}
			}
		}
		out = append(out, c.Fixtures...)
		out = append(out, c.Witness...)
	}
	for _, sc := range p.Scenarios {
		out = append(out, sc.Fixtures...)
		for _, st := range sc.Steps {
			out = append(out, st.Patched...)
			for _, o := range st.Policies {
				out = append(out, o.Object)
			}
		}
	}
	return out
}
