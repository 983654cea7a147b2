package scenario

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// LoadFile reads, decodes, defaults and validates a scenario file. On any
// problem it returns an ErrorList with every problem found, each with its
// file:line:col; other errors (an unreadable file) are returned as they are.
func LoadFile(path string) (*Suite, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Load(path, data)
}

// Load is LoadFile for data already read; name is used in positions and to
// resolve relative paths in the file.
func Load(name string, data []byte) (s *Suite, err error) {
	defer func() {
		// The decoder is written not to panic (the fuzz target holds it to
		// that); if it ever does, the user still gets an error naming the
		// file instead of a crash.
		if r := recover(); r != nil {
			s, err = nil, ErrorList{{Pos: Position{File: name}, Message: fmt.Sprintf("internal error while loading: %v", r)}}
		}
	}()
	return load(name, data)
}

func load(name string, data []byte) (*Suite, error) {
	root, err := parse(name, data)
	if err != nil {
		return nil, err
	}
	d := &decoder{file: name, substituted: map[*yaml.Node]bool{}, failed: map[string]bool{}, active: map[*yaml.Node]bool{}}
	s := &Suite{}
	d.decode(root, reflect.ValueOf(s).Elem(), "")
	// Checks run even after decode errors, so that one run reports every
	// mistake; a check of a value that failed to decode is not repeated.
	s.setDefaults(filepath.Dir(name))
	decodeErrors := len(d.errs)
	for _, e := range s.validate() {
		if d.failed[e.Path] {
			continue
		}
		if !e.Pos.IsValid() {
			// The value lies in a part of the file that failed to decode
			// (e.g. the document is not a mapping): that error says it all.
			if decodeErrors > 0 {
				continue
			}
			e.Pos = d.pos(root)
		}
		d.errs = append(d.errs, e)
	}
	if len(d.errs) > 0 {
		return nil, d.errs.sortAndDedupe()
	}
	return s, nil
}

// parse reads exactly one YAML document.
func parse(name string, data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrorList{{Pos: Position{File: name, Line: 1, Column: 1}, Message: "the file is empty; want a Suite document (apiVersion: " + APIVersion + ")"}}
		}
		return nil, ErrorList{syntaxError(name, data, err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, ErrorList{{Pos: Position{File: name, Line: extra.Line, Column: extra.Column}, Message: "a scenario file holds one document; found a second"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, ErrorList{syntaxError(name, data, err)}
	}
	if len(doc.Content) == 0 {
		return nil, ErrorList{{Pos: Position{File: name, Line: 1, Column: 1}, Message: "the file is empty"}}
	}
	return doc.Content[0], nil
}

var yamlLine = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// syntaxError turns a YAML parser error into an Error with the line it
// names; a tab where YAML wants indentation gets its column and the fix.
func syntaxError(name string, data []byte, err error) *Error {
	msg := err.Error()
	line := 1
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		if m[1] != "" {
			fmt.Sscan(m[1], &line)
		}
		msg = m[2]
	}
	column := 1
	if lines := strings.Split(string(data), "\n"); line >= 1 && line <= len(lines) && strings.Contains(msg, "cannot start any token") {
		if i := strings.IndexByte(lines[line-1], '\t'); i >= 0 {
			return &Error{Pos: Position{File: name, Line: line, Column: i + 1}, Message: "YAML syntax error: a tab character; YAML indents with spaces only: replace the tab with spaces"}
		}
	}
	return &Error{Pos: Position{File: name, Line: line, Column: column}, Message: "YAML syntax error: " + msg}
}

// DefaultWorkloads are deployed when a file lists none: two workloads in the
// mesh and one outside it, which is what an mTLS proof needs.
func DefaultWorkloads() []Workload {
	inMesh, outOfMesh := true, false
	return []Workload{
		{Name: "service-a", Mesh: &inMesh},
		{Name: "service-b", Mesh: &inMesh},
		{Name: "legacy", Mesh: &outOfMesh},
	}
}

// DefaultPorts are the ports of a workload that lists none: a second port
// lets scenarios test port-level policies.
func DefaultPorts() []Port {
	return []Port{{Name: "http", Number: 8080, Protocol: ProtocolHTTP}, {Name: "http-alt", Number: 9090, Protocol: ProtocolHTTP}}
}

// DefaultProxylessPorts are the ports of a proxyless workload that lists
// none: one gRPC port, the one Istio's own proxyless echo examples use.
func DefaultProxylessPorts() []Port {
	return []Port{{Name: "grpc", Number: 7070, Protocol: ProtocolGRPC}}
}

// defaultProtocol is the protocol of a port that names none: tcp or grpc
// when Istio reads it from the name, http otherwise (a name selecting a
// protocol the echo server does not serve is refused by validation).
func defaultProtocol(name string) PortProtocol {
	switch NameProtocol(name) {
	case string(ProtocolTCP):
		return ProtocolTCP
	case string(ProtocolGRPC):
		return ProtocolGRPC
	}
	return ProtocolHTTP
}

// Suite-wide defaults.
const (
	DefaultNamespace   = "meshproof"
	DefaultTrustDomain = "cluster.local"
	DefaultHub         = "docker.io/istio"
	// IstioRootNamespace is where a mesh-wide PeerAuthentication lives.
	IstioRootNamespace = "istio-system"
)

func (s *Suite) setDefaults(dir string) {
	df := &s.Defaults
	orDuration(&df.Timeout, "2m")
	orDuration(&df.SetupTimeout, "15m")
	orDuration(&df.Interval, "2s")
	orDuration(&df.RequestTimeout, "3s")
	if df.Requests == 0 {
		df.Requests = 3
	}
	if df.Consecutive == 0 {
		df.Consecutive = 3
	}
	if df.WireWitness == "" {
		df.WireWitness = WitnessAuto
	}
	for i := range s.Clusters {
		c := &s.Clusters[i]
		if c.Provider == "" {
			c.Provider = ProviderKind
		}
		if c.Provider == ProviderKind && c.Kind == nil {
			c.Kind = &KindCluster{}
		}
		if c.Kind != nil && c.Kind.ConfigFile != "" {
			c.Kind.ConfigFile = resolve(dir, c.Kind.ConfigFile)
		}
		if c.Existing != nil && c.Existing.Kubeconfig != "" {
			c.Existing.Kubeconfig = resolve(dir, c.Existing.Kubeconfig)
		}
		in := &c.Istio
		if in.Mode == "" {
			in.Mode = IstioInstall
			if c.Provider == ProviderExisting {
				in.Mode = IstioUseExisting
			}
		}
		if in.Charts != "" {
			in.Charts = resolve(dir, in.Charts)
		}
		if in.Hub == "" {
			in.Hub = DefaultHub
		}
		if in.Tag == "" {
			in.Tag = in.Version
		}
		if in.TrustDomain == "" {
			in.TrustDomain = DefaultTrustDomain
		}
		if in.Profile == "" {
			in.Profile = ProfileDefault
		}
	}
	if s.Fixtures.Namespace == "" {
		s.Fixtures.Namespace = DefaultNamespace
	}
	if len(s.Fixtures.Workloads) == 0 {
		s.Fixtures.Workloads = DefaultWorkloads()
	}
	for i := range s.Fixtures.Workloads {
		w := &s.Fixtures.Workloads[i]
		if w.Namespace == "" {
			w.Namespace = s.Fixtures.Namespace
		}
		if w.ServiceAccount == "" {
			w.ServiceAccount = w.Name
		}
		w.defaultDataPlane()
		if len(w.Ports) == 0 && w.Proxyless {
			w.Ports = DefaultProxylessPorts()
		}
		if len(w.Ports) == 0 {
			w.Ports = DefaultPorts()
		}
		for j := range w.Ports {
			if p := &w.Ports[j]; p.Protocol == "" {
				p.Protocol = defaultProtocol(p.Name)
			}
		}
	}
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		if sc.Cluster == "" && len(s.Clusters) == 1 {
			sc.Cluster = s.Clusters[0].Name
		}
		for j := range sc.Steps {
			st := &sc.Steps[j]
			if st.Timeout.IsZero() {
				st.Timeout = df.Timeout
			}
			if k := st.kind(); k != nil {
				k.defaults(s, st, dir)
			}
			if st.Name == "" {
				st.Name = st.defaultName(j)
			}
		}
	}
}

// defaultTraffic fills in the defaults of the continuous probing of a
// transition, upgrade, rotateRoot or moveDataPlane step.
func (s *Suite) defaultTraffic(t *Traffic) {
	orDuration(&t.Every, "500ms")
	if len(t.Pairs) == 0 {
		t.Pairs = s.defaultPairs()
	}
	for i := range t.Pairs {
		if w := s.Workload(t.Pairs[i].To); t.Pairs[i].Port == 0 && w != nil && len(w.Ports) > 0 {
			t.Pairs[i].Port = w.Ports[0].Number
		}
	}
}

// defaultPairs is every in-mesh client to every other in-mesh workload.
func (s *Suite) defaultPairs() []Pair {
	var pairs []Pair
	for _, from := range s.Fixtures.Workloads {
		for _, to := range s.Fixtures.Workloads {
			if from.Name != to.Name && from.InMesh() && to.InMesh() {
				pairs = append(pairs, Pair{From: from.Name, To: to.Name})
			}
		}
	}
	return pairs
}

func (s *Suite) defaultMTLSNamespaces(m *MTLSStep) {
	for k := range m.DestinationRules {
		if dr := &m.DestinationRules[k]; dr.Scope == "" {
			dr.Scope = DRScopeWorkload
		}
	}
	for k := range m.PeerAuthentications {
		pa := &m.PeerAuthentications[k]
		if pa.Namespace != "" {
			continue
		}
		switch pa.Scope {
		case ScopeMesh:
			pa.Namespace = IstioRootNamespace
		case ScopeWorkload:
			if w := s.Workload(pa.Workload); w != nil {
				pa.Namespace = w.Namespace
			}
		default:
			pa.Namespace = s.Fixtures.Namespace
		}
	}
}

// defaultName names a step after its kind and position.
func (st *Step) defaultName(index int) string {
	k := st.kind()
	if k == nil {
		return fmt.Sprintf("%d", index+1)
	}
	if detail := k.describe(st); detail != "" {
		return fmt.Sprintf("%d %s %s", index+1, k.name, detail)
	}
	return fmt.Sprintf("%d %s", index+1, k.name)
}

// Summary describes a policy set in a few words, e.g.
// "namespace STRICT, DR service-b DISABLE".
func (m *MTLSStep) Summary() string {
	var modes []string
	for _, pa := range m.PeerAuthentications {
		mode := string(pa.Scope) + " " + string(pa.Mode)
		if pa.Workload != "" {
			mode = pa.Workload + " " + string(pa.Mode)
		}
		modes = append(modes, mode)
	}
	for _, dr := range m.DestinationRules {
		modes = append(modes, "DR "+dr.Target()+" "+string(dr.Mode))
	}
	if len(modes) == 0 {
		return "no policies"
	}
	return strings.Join(modes, ", ")
}

// Target is what the rule is for: its workload, or "mesh" for a mesh-wide
// rule.
func (dr DestinationRule) Target() string {
	if dr.Scope == DRScopeMesh {
		return "mesh"
	}
	return dr.Workload
}

func orDuration(d *Duration, def string) {
	if d.IsZero() {
		_ = d.UnmarshalJSON([]byte(`"` + def + `"`))
	}
}

func resolve(dir, p string) string {
	if filepath.IsAbs(p) || strings.HasPrefix(p, "~") {
		return p
	}
	return filepath.Join(dir, p)
}

// Workload returns the workload of that name, or nil.
func (s *Suite) Workload(name string) *Workload {
	for i := range s.Fixtures.Workloads {
		if s.Fixtures.Workloads[i].Name == name {
			return &s.Fixtures.Workloads[i]
		}
	}
	return nil
}

// Cluster returns the cluster of that name, or nil.
func (s *Suite) Cluster(name string) *Cluster {
	for i := range s.Clusters {
		if s.Clusters[i].Name == name {
			return &s.Clusters[i]
		}
	}
	return nil
}

// defaultDataPlane resolves the workload's data plane from dataPlane or,
// when the file leaves it out, from the older fields (proxyless: true,
// mesh: false), and keeps those fields in step with it so that either
// reads the same. A dataPlane that contradicts them is left for
// validation to refuse at its line.
func (w *Workload) defaultDataPlane() {
	if w.DataPlane == "" {
		switch {
		case w.Proxyless:
			w.DataPlane = DataPlaneProxyless
		case w.Mesh != nil && !*w.Mesh:
			w.DataPlane = DataPlaneNone
		default:
			w.DataPlane = DataPlaneSidecar
		}
	}
	if w.Mesh == nil {
		inMesh := w.DataPlane != DataPlaneNone
		w.Mesh = &inMesh
	}
	if w.DataPlane == DataPlaneProxyless {
		w.Proxyless = true
	}
}

// InMesh reports whether the workload is in the mesh: it has an Istio
// identity and Istio carries its traffic, through a sidecar, ztunnel
// (ambient) or grpc-go (proxyless).
func (w *Workload) InMesh() bool { return w.Plane() != DataPlaneNone }

// Plane is the workload's data plane, also for a Workload built or
// changed in code: the older fields, when they say proxyless or out of the
// mesh, win (loading keeps them in step with DataPlane), then DataPlane,
// else a sidecar.
func (w *Workload) Plane() DataPlane {
	switch {
	case w.Proxyless:
		return DataPlaneProxyless
	case w.Mesh != nil && !*w.Mesh:
		return DataPlaneNone
	case w.DataPlane != "":
		return w.DataPlane
	}
	return DataPlaneSidecar
}

// HasSidecar reports whether the workload's pods get Istio's Envoy
// sidecar.
func (w *Workload) HasSidecar() bool { return w.Plane() == DataPlaneSidecar }

// Ambient reports whether the workload is enrolled in ambient mode.
func (w *Workload) Ambient() bool { return w.Plane() == DataPlaneAmbient }

// Ambient reports whether the cluster's Istio is installed with the
// ambient profile.
func (c *Cluster) Ambient() bool { return c.Istio.Profile == ProfileAmbient }

// AmbientWorkloads reports whether any fixture is an ambient workload.
func (s *Suite) AmbientWorkloads() bool {
	for i := range s.Fixtures.Workloads {
		if s.Fixtures.Workloads[i].Ambient() {
			return true
		}
	}
	return false
}

// HasPort reports whether the workload's Service has that port.
func (w *Workload) HasPort(n int) bool { return w.Port(n) != nil }

// Port returns the workload's Service port of that number, or nil.
func (w *Workload) Port(n int) *Port {
	for i := range w.Ports {
		if w.Ports[i].Number == n {
			return &w.Ports[i]
		}
	}
	return nil
}

// TargetPort returns the workload's port whose container port is n, or nil.
func (w *Workload) TargetPort(n int) *Port {
	for i := range w.Ports {
		if w.Ports[i].Target() == n {
			return &w.Ports[i]
		}
	}
	return nil
}

// SPIFFEID is the workload's identity in a trust domain.
func (w *Workload) SPIFFEID(trustDomain string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, w.Namespace, w.ServiceAccount)
}
