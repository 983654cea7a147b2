// Package policy turns a scenario's mtls step into the typed Istio objects
// that express it: security.istio.io/v1 PeerAuthentication and
// networking.istio.io/v1 DestinationRule. Each object keeps the position of
// the scenario line it came from, so that an object the API server refuses
// is reported at that line.
package policy

import (
	"fmt"
	"sort"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Object is a Kubernetes object together with the scenario line it was
// written at.
type Object struct {
	client.Object
	Source scenario.Position
}

// Step identifies the scenario step a set of policies belongs to.
type Step struct {
	RunID    string
	Scenario string
	Index    int // index of the step in the scenario
}

// Labels are the labels of every policy of the step. The scenario and step
// labels let the engine remove exactly the previous step's policies.
func (s Step) Labels() map[string]string {
	l := ownership.Labels(s.RunID)
	l[ownership.ScenarioLabel] = ownership.LabelValue(s.Scenario)
	l[ownership.StepLabel] = fmt.Sprint(s.Index)
	return l
}

// namePrefix starts every policy name, so that meshproof's policies are
// recognisable next to a user's own.
const namePrefix = "meshproof-"

// ForMTLS returns the objects of an mtls step, in a stable order:
// PeerAuthentications first, then DestinationRules.
func ForMTLS(suite *scenario.Suite, m *scenario.MTLSStep, step Step) ([]Object, error) {
	var out []Object
	for _, pa := range m.PeerAuthentications {
		obj, err := peerAuthentication(suite, pa, step)
		if err != nil {
			return nil, err
		}
		out = append(out, Object{Object: obj, Source: pa.Source.Position})
	}
	// One DestinationRule per workload (and one for the mesh): Istio keeps
	// only the oldest rule's traffic policy when several rules name the
	// same host (mergeDestinationRule in pilot/pkg/model/destination_rule.go),
	// so a whole-workload mode and port modes must share one object.
	var order []string
	byTarget := map[string][]scenario.DestinationRule{}
	for _, dr := range m.DestinationRules {
		key := dr.Workload // a DNS label, never MeshHost
		if dr.Scope == scenario.DRScopeMesh {
			key = MeshHost
		}
		if _, seen := byTarget[key]; !seen {
			order = append(order, key)
		}
		byTarget[key] = append(byTarget[key], dr)
	}
	for _, key := range order {
		rules := byTarget[key]
		obj, err := destinationRule(suite, rules, step)
		if err != nil {
			return nil, err
		}
		out = append(out, Object{Object: obj, Source: rules[0].Source.Position})
	}
	return out, nil
}

func peerAuthentication(suite *scenario.Suite, pa scenario.PeerAuthentication, step Step) (*securityv1.PeerAuthentication, error) {
	mode, err := mtlsMode(pa.Mode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pa.Source.At("mode"), err)
	}
	obj := &securityv1.PeerAuthentication{
		TypeMeta:   metav1.TypeMeta{APIVersion: securityv1.SchemeGroupVersion.String(), Kind: "PeerAuthentication"},
		ObjectMeta: metav1.ObjectMeta{Name: namePrefix + string(pa.Scope), Namespace: pa.Namespace, Labels: step.Labels()},
	}
	// The spec is a protobuf message: it is filled in place, never copied.
	spec := &obj.Spec
	spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	if pa.Scope == scenario.ScopeWorkload {
		w := suite.Workload(pa.Workload)
		if w == nil {
			return nil, fmt.Errorf("%s: no workload named %q", pa.Source.At("workload"), pa.Workload)
		}
		obj.Name = namePrefix + w.Name
		spec.Selector = &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": w.Name}}
		for _, pm := range pa.Ports {
			portMode, err := mtlsMode(pm.Mode)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", pm.Source.At("mode"), err)
			}
			if spec.PortLevelMtls == nil {
				spec.PortLevelMtls = map[uint32]*securityapi.PeerAuthentication_MutualTLS{}
			}
			// Istio matches port-level modes against the container (target)
			// port, which is what the scenario's port names.
			spec.PortLevelMtls[uint32(pm.Port)] = &securityapi.PeerAuthentication_MutualTLS{Mode: portMode}
		}
	}
	return obj, nil
}

// MeshHost is the host of a mesh-wide DestinationRule, which lives in
// Istio's root namespace: every service, as Istio's global-dr test
// template (tests/integration/security/testdata/reachability).
const MeshHost = "*"

// destinationRule builds the rule of one workload (or the mesh-wide rule)
// from the scenario's rules for it: the one without a port sets the mode,
// the others override single Service ports.
func destinationRule(suite *scenario.Suite, rules []scenario.DestinationRule, step Step) (*networkingv1.DestinationRule, error) {
	obj := &networkingv1.DestinationRule{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "DestinationRule"},
		ObjectMeta: metav1.ObjectMeta{Labels: step.Labels()},
	}
	// The spec is a protobuf message: it is filled in place, never copied.
	spec := &obj.Spec
	if rules[0].Scope == scenario.DRScopeMesh {
		obj.Name, obj.Namespace = namePrefix+string(scenario.DRScopeMesh), scenario.IstioRootNamespace
		spec.Host = MeshHost
	} else {
		w := suite.Workload(rules[0].Workload)
		if w == nil {
			return nil, fmt.Errorf("%s: no workload named %q", rules[0].Source.At("workload"), rules[0].Workload)
		}
		obj.Name, obj.Namespace = namePrefix+w.Name, w.Namespace
		spec.Host = fmt.Sprintf("%s.%s.svc.cluster.local", w.Name, w.Namespace)
	}
	spec.TrafficPolicy = &networkingapi.TrafficPolicy{}
	for _, dr := range rules {
		mode, err := tlsMode(dr.Mode)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dr.Source.At("mode"), err)
		}
		tls := &networkingapi.ClientTLSSettings{Mode: mode}
		if dr.Port == 0 {
			spec.TrafficPolicy.Tls = tls
			continue
		}
		spec.TrafficPolicy.PortLevelSettings = append(spec.TrafficPolicy.PortLevelSettings, &networkingapi.TrafficPolicy_PortTrafficPolicy{
			Port: &networkingapi.PortSelector{Number: uint32(dr.Port)},
			Tls:  tls,
		})
	}
	return obj, nil
}

func mtlsMode(m scenario.MTLSMode) (securityapi.PeerAuthentication_MutualTLS_Mode, error) {
	v, ok := securityapi.PeerAuthentication_MutualTLS_Mode_value[string(m)]
	if !ok {
		return 0, fmt.Errorf("unknown PeerAuthentication mode %q; want one of %s", m, known(securityapi.PeerAuthentication_MutualTLS_Mode_value))
	}
	return securityapi.PeerAuthentication_MutualTLS_Mode(v), nil
}

func tlsMode(m scenario.TLSMode) (networkingapi.ClientTLSSettings_TLSmode, error) {
	v, ok := networkingapi.ClientTLSSettings_TLSmode_value[string(m)]
	if !ok {
		return 0, fmt.Errorf("unknown DestinationRule TLS mode %q; want one of %s", m, known(networkingapi.ClientTLSSettings_TLSmode_value))
	}
	return networkingapi.ClientTLSSettings_TLSmode(v), nil
}

func known(values map[string]int32) string {
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}
