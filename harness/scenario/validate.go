package scenario

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/meshproof/meshproof/fixtures/manifests"
)

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	istioVer   = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`)
	httpReason = regexp.MustCompile(`^http-[1-5]\d\d$`)
	portNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// validator checks what the decoder cannot: references between parts of the
// file, uniqueness, and combinations that Istio or Kubernetes would refuse.
type validator struct {
	s    *Suite
	errs ErrorList
}

func (v *validator) errorf(p Position, path, format string, args ...any) {
	v.errs = append(v.errs, &Error{Pos: p, Path: path, Message: fmt.Sprintf(format, args...)})
}

func (s *Suite) validate() ErrorList {
	v := &validator{s: s}
	if s.APIVersion != APIVersion {
		v.errorf(s.Source.At("apiVersion"), "apiVersion", "unsupported apiVersion %q; want %s", s.APIVersion, APIVersion)
	}
	if s.Kind != SuiteKind {
		v.errorf(s.Source.At("kind"), "kind", "unsupported kind %q; want %s", s.Kind, SuiteKind)
	}
	v.defaults()
	v.clusters()
	v.workloads()
	v.scenarios()
	return v.errs
}

func (v *validator) defaults() {
	d := v.s.Defaults
	for _, f := range []struct {
		name string
		val  int
	}{{"requests", d.Requests}, {"consecutive", d.Consecutive}} {
		if f.val < 1 {
			v.errorf(d.Source.At(f.name), "defaults."+f.name, "must be at least 1, got %d", f.val)
		}
	}
}

func (v *validator) clusters() {
	if len(v.s.Clusters) == 0 {
		v.errorf(v.s.Source.At("clusters"), "clusters", "at least one cluster is needed")
	}
	seen := map[string]Position{}
	for i, c := range v.s.Clusters {
		path := fmt.Sprintf("clusters[%d]", i)
		v.name(c.Name, c.Source, path, "cluster")
		if first, dup := seen[c.Name]; dup {
			v.errorf(c.Source.At("name"), path+".name", "duplicate cluster name %q (first at %s)", c.Name, first)
		}
		seen[c.Name] = c.Source.At("name")
		switch c.Provider {
		case ProviderKind:
			if c.Existing != nil {
				v.errorf(c.Source.At("existing"), path+".existing", "only for provider existing; this cluster's provider is kind")
			}
			if c.Kind != nil && c.Kind.Config != "" && c.Kind.ConfigFile != "" {
				v.errorf(c.Kind.Source.At("configFile"), path+".kind.configFile", "set either config or configFile, not both")
			}
		case ProviderExisting:
			if c.Kind != nil {
				v.errorf(c.Source.At("kind"), path+".kind", "only for provider kind; this cluster's provider is existing")
			}
			if c.Existing != nil && c.Existing.Image != nil {
				img := c.Existing.Image
				if (img.Push == "") == (img.Ref == "") {
					v.errorf(c.Existing.Source.At("image"), path+".existing.image", "set exactly one of push (a repository meshproof pushes the echo image to) and ref (an image you published)")
				}
			}
		}
		in := c.Istio
		ipath := path + ".istio"
		if !istioVer.MatchString(in.Version) {
			v.errorf(in.Source.At("version"), ipath+".version", "Istio version %q is not a full release version such as 1.30.3", in.Version)
		}
		v.existingPath(in.Charts, in.Source.At("charts"), ipath+".charts", "istio.charts", true)
		if c.Kind != nil {
			v.existingPath(c.Kind.ConfigFile, c.Kind.Source.At("configFile"), path+".kind.configFile", "kind.configFile", false)
		}
		if in.Revision != "" && !dnsLabel.MatchString(in.Revision) {
			v.errorf(in.Source.At("revision"), ipath+".revision", "revision %q must be a DNS label (lower case letters, digits and -), e.g. 1-30-3", in.Revision)
		}
		v.ambientProfile(&v.s.Clusters[i], path)
		if in.Mode == IstioUseExisting {
			if in.PluggedCA {
				v.errorf(in.Source.At("pluggedCA"), ipath+".pluggedCA", "a plugged CA needs Istio installed by meshproof; with mode use-existing the cluster's own CA is used")
			}
			if in.AdoptReleases {
				v.errorf(in.Source.At("adoptReleases"), ipath+".adoptReleases", "only for mode install; use-existing installs nothing")
			}
		}
	}
}

// name checks a Kubernetes object name of something the file declares.
func (v *validator) name(name string, src Source, path, what string) {
	if len(name) > 63 || !dnsLabel.MatchString(name) {
		v.errorf(src.At("name"), path+".name", "%s name %q must be a DNS label: at most 63 lower case letters, digits and -, starting and ending with a letter or digit", what, name)
	}
}

func (v *validator) workloads() {
	f := v.s.Fixtures
	if _, set := f.Source.fields["namespace"]; set && !dnsLabel.MatchString(f.Namespace) {
		v.errorf(f.Source.At("namespace"), "fixtures.namespace", "namespace %q must be a DNS label", f.Namespace)
	}
	v.systemNamespace(f.Namespace, f.Source.At("namespace"), "fixtures.namespace")
	seen := map[string]Position{}
	for i, w := range f.Workloads {
		path := fmt.Sprintf("fixtures.workloads[%d]", i)
		v.name(w.Name, w.Source, path, "workload")
		if first, dup := seen[w.Name]; dup {
			v.errorf(w.Source.At("name"), path+".name", "duplicate workload name %q (first at %s)", w.Name, first)
		}
		seen[w.Name] = w.Source.At("name")
		if strings.HasSuffix(w.Name, manifests.ProxylessClientSuffix) {
			v.errorf(w.Source.At("name"), path+".name", "workload name %q ends in %s, which names the client Deployments meshproof adds for proxyless workloads", w.Name, manifests.ProxylessClientSuffix)
		}
		if w.Namespace != "" && !dnsLabel.MatchString(w.Namespace) {
			v.errorf(w.Source.At("namespace"), path+".namespace", "namespace %q must be a DNS label", w.Namespace)
		}
		if w.Source.has("namespace") {
			v.systemNamespace(w.Namespace, w.Source.At("namespace"), path+".namespace")
		}
		if !dnsLabel.MatchString(w.ServiceAccount) {
			v.errorf(w.Source.At("serviceAccount"), path+".serviceAccount", "service account %q must be a DNS label", w.ServiceAccount)
		}
		v.dataPlane(w, path)
		v.proxyless(w, path)
		ports, targets := map[int]bool{}, map[int]bool{}
		names := map[string]bool{}
		for j, p := range w.Ports {
			ppath := fmt.Sprintf("%s.ports[%d]", path, j)
			v.portNumber(p.Number, p.Source.At("number"), ppath+".number")
			if ports[p.Number] {
				v.errorf(p.Source.At("number"), ppath+".number", "duplicate port %d", p.Number)
			}
			ports[p.Number] = true
			if p.Source.has("targetPort") {
				v.portNumber(p.TargetPort, p.Source.At("targetPort"), ppath+".targetPort")
			}
			// Two Service ports may forward to one container port in
			// Kubernetes, but a PeerAuthentication port key would then name
			// both, and the echo server listens once per port.
			if targets[p.Target()] {
				v.errorf(p.Source.At("targetPort"), ppath+".targetPort", "container port %d is the target of another port too; give each port a container port of its own", p.Target())
			}
			targets[p.Target()] = true
			if len(p.Name) > 15 || !portNameRE.MatchString(p.Name) {
				v.errorf(p.Source.At("name"), ppath+".name", "port name %q must be at most 15 lower case letters, digits and -", p.Name)
			}
			if names[p.Name] {
				v.errorf(p.Source.At("name"), ppath+".name", "duplicate port name %q", p.Name)
			}
			names[p.Name] = true
			// A name selecting a protocol the echo server does not serve
			// would leave Istio speaking it to the echo server; protocol
			// (written as appProtocol, which Istio prefers) overrides it.
			if named := NameProtocol(p.Name); !p.Source.has("protocol") && named != "" && !contains(PortProtocol("").Values(), named) {
				v.errorf(p.Source.At("name"), ppath+".name", "Istio reads protocol %s from the port name %q, which the echo server does not serve; set protocol (http, tcp or grpc; written as appProtocol, which Istio prefers over the name) or rename the port", named, p.Name)
			}
		}
	}
}

// proxyless checks a proxyless workload's fields and ports: pilot-agent
// without Envoy carries no traffic, so the workload serves nothing but
// grpc-go's xDS server, and it is in the mesh by definition.
func (v *validator) proxyless(w Workload, path string) {
	if w.TLSModeLabel && !w.Proxyless {
		v.errorf(w.Source.At("tlsModeLabel"), path+".tlsModeLabel", "tlsModeLabel is for proxyless workloads (Istio's sidecar injection sets security.istio.io/tlsMode=istio itself); add proxyless: true or remove it")
	}
	if !w.Proxyless {
		return
	}
	if w.Mesh != nil && !*w.Mesh {
		v.errorf(w.Source.At("mesh"), path+".mesh", "a proxyless workload is in the mesh (pilot-agent gives grpc-go istiod's configuration and Istio's certificates); remove mesh: false, or proxyless: true for a workload outside the mesh")
	}
	for j, p := range w.Ports {
		if p.Protocol == ProtocolGRPC {
			continue
		}
		ppath := fmt.Sprintf("%s.ports[%d]", path, j)
		field := "protocol"
		if !p.Source.has(field) {
			field = "name"
		}
		v.errorf(p.Source.At(field), ppath+"."+field, "port %s (%d) has protocol %s, but a proxyless workload serves gRPC only: no sidecar carries its other traffic, so nothing of Istio's would apply to it; set protocol: grpc (or name it grpc or grpc-*)", p.Name, p.Number, p.Protocol)
	}
}

// portNumber checks a port a workload serves.
func (v *validator) portNumber(n int, at Position, path string) {
	if n < 1 || n > 65535 {
		v.errorf(at, path, "port %d is out of range 1-65535", n)
	}
	if n >= 15000 && n <= 15090 {
		v.errorf(at, path, "port %d is in the range 15000-15090 that Istio's sidecar uses", n)
	}
}

// servicePort checks that n is a Service port of w, for what names it (a
// probe, a DestinationRule's port), and says so when n is a container port.
func (v *validator) servicePort(w *Workload, n int, at Position, path, what string) {
	if w.HasPort(n) {
		return
	}
	hint := ""
	if p := w.TargetPort(n); p != nil {
		hint = fmt.Sprintf("; %d is the container port behind Service port %d (%s), and %s names the Service port: use %d", n, p.Number, p.Name, what, p.Number)
	}
	v.errorf(at, path, "workload %q has no Service port %d; its ports are %s%s", w.Name, n, portList(w, false), hint)
}

// containerPort checks that n is a container port of w, which is what a
// PeerAuthentication's port-level mode names.
func (v *validator) containerPort(w *Workload, n int, at Position, path string) {
	if w.TargetPort(n) != nil {
		return
	}
	hint := ""
	if p := w.Port(n); p != nil {
		hint = fmt.Sprintf("; %d is the Service port of %s, whose container port is %d, and Istio matches PeerAuthentication port-level modes against the container port: use %d", n, p.Name, p.Target(), p.Target())
	}
	v.errorf(at, path, "workload %q has no container port %d; its container ports are %s%s", w.Name, n, portList(w, true), hint)
}

// portList lists a workload's Service ports, or its container ports.
func portList(w *Workload, target bool) string {
	var out []string
	for _, p := range w.Ports {
		n := p.Number
		if target {
			n = p.Target()
		}
		out = append(out, strconv.Itoa(n))
	}
	return strings.Join(out, ", ")
}

func (v *validator) workloadNames() []string {
	names := make([]string, len(v.s.Fixtures.Workloads))
	for i, w := range v.s.Fixtures.Workloads {
		names[i] = w.Name
	}
	return names
}

// workload checks a reference to a workload and returns it, or nil.
func (v *validator) workload(name string, src Source, field, path string) *Workload {
	w := v.s.Workload(name)
	if w == nil {
		v.errorf(src.At(field), join(path, field), "no workload named %q%s; the workloads are %s",
			name, suggest(name, v.workloadNames()), strings.Join(v.workloadNames(), ", "))
	}
	return w
}

func (v *validator) scenarios() {
	if len(v.s.Scenarios) == 0 {
		v.errorf(v.s.Source.At("scenarios"), "scenarios", "at least one scenario is needed")
	}
	seen := map[string]Position{}
	var clusterNames []string
	for _, c := range v.s.Clusters {
		clusterNames = append(clusterNames, c.Name)
	}
	for i := range v.s.Scenarios {
		sc := &v.s.Scenarios[i]
		path := sc.path
		if strings.TrimSpace(sc.Name) == "" {
			v.errorf(sc.Source.At("name"), path+".name", "a scenario needs a name")
		}
		if first, dup := seen[sc.Name]; dup {
			v.errorf(sc.Source.At("name"), path+".name", "duplicate scenario name %q (first at %s)", sc.Name, first)
		}
		seen[sc.Name] = sc.Source.At("name")
		switch {
		case sc.Cluster == "" && len(v.s.Clusters) == 0:
			// The file names no cluster at all: that has its own error.
		case sc.Cluster == "":
			v.errorf(sc.Source.Position, path, "with several clusters, each scenario must name its cluster (one of %s)", strings.Join(clusterNames, ", "))
		case v.s.Cluster(sc.Cluster) == nil:
			v.errorf(sc.Source.At("cluster"), path+".cluster", "no cluster named %q%s", sc.Cluster, suggest(sc.Cluster, clusterNames))
		}
		for _, l := range sc.Labels {
			if strings.ContainsAny(l, "&|!,()/") || strings.TrimSpace(l) != l || l == "" {
				v.errorf(sc.Source.At("labels"), path+".labels", "label %q may not be empty or contain &|!,()/ or surrounding spaces (Ginkgo label rules)", l)
			}
		}
		if len(sc.Steps) == 0 {
			v.errorf(sc.Source.At("steps"), path+".steps", "a scenario needs at least one step")
		}
		v.stepNames(sc)
		file := v.s
		for j := range sc.Steps {
			// Each step is checked against the data planes it finds its
			// workloads on (moveDataPlane steps before it).
			v.s = file.AtStep(sc, j-1)
			v.step(&sc.Steps[j], sc, j, fmt.Sprintf("%s.steps[%d]", path, j))
		}
		v.s = file
	}
}

func (v *validator) step(st *Step, sc *Scenario, index int, path string) {
	kinds := st.kindsOf()
	switch len(kinds) {
	case 0:
		v.errorf(st.Source.Position, path, "a step needs one of %s", kindList())
		return
	case 1:
	default:
		names := make([]string, len(kinds))
		for i, k := range kinds {
			names[i] = k.name
		}
		v.errorf(st.Source.Position, path, "a step has exactly one kind; this one has %s: split it into steps", strings.Join(names, ", "))
		return
	}
	kinds[0].validate(v, st, sc, index, path)
	v.capabilities(st, path)
}

func (v *validator) rotate(st *Step, sc *Scenario, _ int, path string) {
	r := st.Rotate
	v.withinTimeout(st, r.Within, r.Source.At("within"), path+".rotate.within", "rotate.within")
	v.rotateWithin(st, sc, path)
	v.workload(r.Workload, r.Source, "workload", path+".rotate") // its data plane: capabilities
}

func (v *validator) restart(st *Step, _ *Scenario, _ int, path string) {
	if len(st.Restart.Workloads) == 0 {
		v.errorf(st.Restart.Source.At("workloads"), path+".restart.workloads", "name at least one workload")
	}
	for _, name := range st.Restart.Workloads {
		v.workload(name, st.Restart.Source, "workloads", path+".restart")
	}
}

func (v *validator) wait(st *Step, _ *Scenario, _ int, path string) {
	w := st.Wait
	// A duration written but unreadable has its own error.
	if (len(w.Workloads) == 0) == w.Duration.IsZero() && !(w.Duration.IsZero() && w.Source.has("duration")) {
		v.errorf(w.Source.Position, path+".wait", "set either workloads or duration")
	}
	if !w.Duration.IsZero() && w.Duration.Duration >= st.Timeout.Duration {
		v.errorf(w.Source.At("duration"), path+".wait.duration", "waiting %s does not end before the step's timeout %s: the step would time out; raise the step's timeout", w.Duration, st.Timeout)
	}
	for _, name := range w.Workloads {
		v.workload(name, w.Source, "workloads", path+".wait")
	}
}

func (v *validator) transition(st *Step, sc *Scenario, index int, path string) {
	t := st.Transition
	v.mtls(&t.To, path+".transition.to")
	v.traffic(t.Traffic, path+".transition.traffic")
	v.transitionTimes(st, sc, index, path)
}

func (v *validator) upgrade(st *Step, sc *Scenario, index int, path string) {
	u := st.Upgrade
	if c := v.s.Cluster(sc.Cluster); c != nil && c.Istio.Mode == IstioUseExisting {
		v.errorf(st.Source.At("upgrade"), path+".upgrade", "upgrading Istio needs Istio installed by meshproof; cluster %s has istio.mode use-existing", c.Name)
	}
	if !istioVer.MatchString(u.To) {
		v.errorf(u.Source.At("to"), path+".upgrade.to", "Istio version %q is not a full release version such as 1.30.3", u.To)
	}
	if u.Revision != "" && !dnsLabel.MatchString(u.Revision) {
		v.errorf(u.Source.At("revision"), path+".upgrade.revision", "revision %q must be a DNS label, e.g. 1-30-3", u.Revision)
	}
	if u.Method == UpgradeInPlace && u.Source.has("revision") {
		v.errorf(u.Source.At("revision"), path+".upgrade.revision", "a revision goes with method: canary")
	}
	v.traffic(u.Traffic, path+".upgrade.traffic")
	v.continuousTimes(u.Traffic, st.Timeout, "the step's timeout", path+".upgrade.traffic")
	v.upgradeVersion(st, sc, index, path)
	v.ambientUpgrade(st, sc, path)
	v.existingPath(u.Charts, u.Source.At("charts"), path+".upgrade.charts", "upgrade.charts", true)
}

func (v *validator) rotateRoot(st *Step, sc *Scenario, _ int, path string) {
	r := st.RotateRoot
	v.withinTimeout(st, r.Within, r.Source.At("within"), path+".rotateRoot.within", "rotateRoot.within")
	v.continuousTimes(r.Traffic, st.Timeout, "the step's timeout", path+".rotateRoot.traffic")
	switch c := v.s.Cluster(sc.Cluster); {
	case c == nil:
	case c.Istio.Mode == IstioUseExisting:
		v.errorf(st.Source.At("rotateRoot"), path+".rotateRoot", "rotating the root CA needs Istio and its CA installed by meshproof; cluster %s has istio.mode use-existing", c.Name)
	case !c.Istio.PluggedCA:
		v.errorf(st.Source.At("rotateRoot"), path+".rotateRoot", "rotating the root CA needs a CA meshproof controls: set istio.pluggedCA: true on cluster %s", c.Name)
	}
	v.traffic(st.RotateRoot.Traffic, path+".rotateRoot.traffic")
	// Which workloads' certificates it can read: capabilities.
}

// traffic checks the pairs of a continuous probe.
func (v *validator) traffic(t Traffic, path string) {
	if t.MaxFailures < 0 {
		v.errorf(t.Source.At("maxFailures"), path+".maxFailures", "must not be negative")
	}
	for i, p := range t.Pairs {
		ppath := fmt.Sprintf("%s.pairs[%d]", path, i)
		v.workload(p.From, p.Source, "from", ppath)
		if to := v.workload(p.To, p.Source, "to", ppath); to != nil {
			v.servicePort(to, p.Port, p.Source.At("port"), ppath+".port", "a probe")
		}
	}
}

func (v *validator) mtls(m *MTLSStep, path string) {
	// No policy at all is a policy set too: the step removes every policy
	// of the previous one and leaves Istio's defaults.
	// Istio applies only the oldest of several policies for the same scope,
	// so two of them in one step would make the outcome depend on timing.
	scopes := map[string]Position{}
	for i, pa := range m.PeerAuthentications {
		ppath := fmt.Sprintf("%s.peerAuthentications[%d]", path, i)
		key := string(pa.Scope) + "/" + pa.Namespace
		if pa.Scope == ScopeNamespace && pa.Namespace == IstioRootNamespace {
			key = string(ScopeMesh) + "/" + pa.Namespace // a namespace policy in the root namespace is mesh-wide
		}
		switch pa.Scope {
		case ScopeMesh:
			if pa.Workload != "" {
				v.errorf(pa.Source.At("workload"), ppath+".workload", "a mesh-wide policy selects no workload; use scope: workload")
			}
			if pa.Namespace != IstioRootNamespace {
				v.errorf(pa.Source.At("namespace"), ppath+".namespace", "a mesh-wide policy lives in Istio's root namespace %s", IstioRootNamespace)
			}
		case ScopeNamespace:
			if pa.Workload != "" {
				v.errorf(pa.Source.At("workload"), ppath+".workload", "a namespace-wide policy selects no workload; use scope: workload")
			}
			if namespaces := v.fixtureNamespaces(); pa.Namespace != IstioRootNamespace && !contains(namespaces, pa.Namespace) {
				v.errorf(pa.Source.At("namespace"), ppath+".namespace", "no fixture lives in namespace %q, so the policy would apply to nothing; the fixtures' namespaces are %s%s",
					pa.Namespace, strings.Join(namespaces, ", "), suggest(pa.Namespace, namespaces))
			}
		case ScopeWorkload:
			key += "/" + pa.Workload
			if pa.Workload == "" {
				v.errorf(pa.Source.Position, ppath, "a workload policy needs workload")
				break
			}
			w := v.workload(pa.Workload, pa.Source, "workload", ppath)
			if w == nil {
				break
			}
			if w.Namespace != pa.Namespace {
				v.errorf(pa.Source.At("namespace"), ppath+".namespace", "workload %q lives in namespace %q", w.Name, w.Namespace)
			}
			for j, pm := range pa.Ports {
				v.containerPort(w, pm.Port, pm.Source.At("port"), fmt.Sprintf("%s.ports[%d].port", ppath, j))
			}
		}
		if len(pa.Ports) > 0 && pa.Scope != ScopeWorkload {
			v.errorf(pa.Source.At("ports"), ppath+".ports", "port-level modes need scope: workload (Istio ignores them without a selector)")
		}
		if first, dup := scopes[key]; dup {
			v.errorf(pa.Source.Position, ppath, "a second policy for the same %s scope (first at %s): Istio would apply only the oldest", pa.Scope, first)
		}
		scopes[key] = pa.Source.Position
	}
	hosts := map[string]Position{}
	for i, dr := range m.DestinationRules {
		dpath := fmt.Sprintf("%s.destinationRules[%d]", path, i)
		if dr.Mode == TLSMutual {
			// Istio's webhook (validateTLSOptions in pkg/config/validation)
			// refuses MUTUAL without credentials.
			v.errorf(dr.Source.At("mode"), dpath+".mode", "mode MUTUAL needs a client certificate and private key of your own (or a credentialName), which a scenario cannot give: Istio refuses it with \"client certificate required for mutual tls\" and \"private key required for mutual tls\"; use ISTIO_MUTUAL for the mesh's own certificates")
		}
		if dr.Scope == DRScopeMesh {
			v.meshDestinationRule(dr, dpath)
		} else if dr.Workload == "" {
			v.errorf(dr.Source.Position, dpath, "a workload DestinationRule needs workload (or scope: mesh for every service)")
		} else if w := v.workload(dr.Workload, dr.Source, "workload", dpath); w != nil && dr.Port != 0 {
			v.servicePort(w, dr.Port, dr.Source.At("port"), dpath+".port", "a DestinationRule's port")
		}
		key := string(dr.Scope) + "/" + dr.Target() + ":" + strconv.Itoa(dr.Port)
		if first, dup := hosts[key]; dup {
			v.errorf(dr.Source.Position, dpath, "a second destination rule for the same %s and port (first at %s): one object cannot hold both", dr.Scope, first)
		}
		hosts[key] = dr.Source.Position
	}
}

// meshDestinationRule checks a mesh-wide DestinationRule: it names no
// workload, and a port of it must be some workload's Service port, or it
// would set nothing.
func (v *validator) meshDestinationRule(dr DestinationRule, dpath string) {
	if dr.Workload != "" {
		v.errorf(dr.Source.At("workload"), dpath+".workload", "a mesh-wide DestinationRule (host \"*\" in %s) names every service, not a workload; use scope: workload for one", IstioRootNamespace)
	}
	if dr.Port == 0 {
		return
	}
	var ports []string
	seen := map[int]bool{}
	for _, w := range v.s.Fixtures.Workloads {
		if w.HasPort(dr.Port) {
			return
		}
		for _, p := range w.Ports {
			if !seen[p.Number] {
				seen[p.Number] = true
				ports = append(ports, strconv.Itoa(p.Number))
			}
		}
	}
	hint := ""
	for _, w := range v.s.Fixtures.Workloads {
		if p := w.TargetPort(dr.Port); p != nil {
			hint = fmt.Sprintf("; %d is the container port behind %s's Service port %d, and a DestinationRule's port names the Service port", dr.Port, w.Name, p.Number)
			break
		}
	}
	v.errorf(dr.Source.At("port"), dpath+".port", "no workload has Service port %d, so the rule's port-level setting would apply to nothing; the Service ports are %s%s", dr.Port, strings.Join(ports, ", "), hint)
}

func (v *validator) expectStep(st *Step, sc *Scenario, index int, path string) {
	v.expect(st.Expect, st.Source, path+".expect")
	v.ambientRows(st.Expect, sc, index, path+".expect")
	v.probeTimes(st, path)
}

func (v *validator) expect(e *ExpectStep, stepSrc Source, path string) {
	if e.Auto {
		return // the rows come from the oracle when the step runs
	}
	if len(e.Table) == 0 {
		v.errorf(stepSrc.At("expect"), path, "an expect step needs at least one row")
	}
	seen := map[string]Position{}
	for i, x := range e.Table {
		xpath := fmt.Sprintf("%s[%d]", path, i)
		from := v.workload(x.From, x.Source, "from", xpath)
		to := v.workload(x.To, x.Source, "to", xpath)
		if x.Result == ResultMTLS {
			for _, w := range []*Workload{from, to} {
				if w != nil && !w.InMesh() {
					v.errorf(x.Source.At("result"), xpath+".result", "workload %q has no sidecar (mesh: false), so no request between %s and %s can be mutual TLS; expect plaintext or fail",
						w.Name, x.From, x.To)
					break
				}
			}
		}
		if to != nil {
			v.servicePort(to, x.Port, x.Source.At("port"), xpath+".port", "a probe")
			if p := to.Port(x.Port); p != nil && p.Protocol == ProtocolTCP && x.Reason != "" && (x.Reason == "upstream-503" || httpReason.MatchString(x.Reason)) {
				v.errorf(x.Source.At("reason"), xpath+".reason", "port %d of workload %q is tcp: no HTTP status answers a TCP connection, so reason %s cannot be observed; leave the reason out or use reset, refused, timeout or eof", x.Port, to.Name, x.Reason)
			}
		}
		if x.Reason != "" {
			var port *Port
			if to != nil {
				port = to.Port(x.Port)
			}
			grpc := port != nil && port.Protocol == ProtocolGRPC
			switch {
			case x.Result != ResultFail:
				v.errorf(x.Source.At("reason"), xpath+".reason", "a reason goes only with result: fail")
			case contains(GRPCFailReasons, x.Reason) && port != nil && !grpc:
				v.errorf(x.Source.At("reason"), xpath+".reason", "reason %s is what a gRPC call reports, but port %d of workload %q is %s; use %s or http-<code>",
					x.Reason, port.Number, to.Name, port.Protocol, strings.Join(FailReasons, ", "))
			case !contains(FailReasons, x.Reason) && !contains(GRPCFailReasons, x.Reason) && !httpReason.MatchString(x.Reason):
				known := FailReasons
				want := strings.Join(FailReasons, ", ") + " or http-<code>"
				if grpc || port == nil {
					known = append(slices.Clone(FailReasons), GRPCFailReasons...)
					want += "; for gRPC also unavailable or grpc-<code> (grpc-permission-denied, grpc-unimplemented, ...)"
				}
				v.errorf(x.Source.At("reason"), xpath+".reason", "unknown reason %q; want one of %s%s", x.Reason, want, suggest(x.Reason, known))
			}
		}
		key := fmt.Sprintf("%s>%s:%d", x.From, x.To, x.Port)
		if first, dup := seen[key]; dup {
			v.errorf(x.Source.Position, xpath, "a second row for %s -> %s port %d (first at %s)", x.From, x.To, x.Port, first)
		}
		seen[key] = x.Source.Position
	}
}
