package scenario

import (
	"fmt"
	"slices"
	"strings"
)

// The kinds of step, each the name of the Step field that sets it.
const (
	KindMTLS       = "mtls"
	KindExpect     = "expect"
	KindRotate     = "rotate"
	KindRestart    = "restart"
	KindWait       = "wait"
	KindUpgrade    = "upgrade"
	KindRotateRoot = "rotateRoot"
	KindTransition = "transition"
	KindMove       = "moveDataPlane"
)

// stepKind is everything the loader knows of one kind of step. Every
// package that treats kinds differently (plan, oracle, engine) keys its
// handling by the kind's name and is checked against this table with
// MissingKinds, so that a new kind cannot be forgotten anywhere.
type stepKind struct {
	name string
	// of returns the step's field of this kind, or nil when the step is of
	// another kind. The schema's one-kind-per-step rule is built from the
	// names; a test holds them to Step's fields.
	of func(st *Step) any
	// defaults fills in the kind's defaults once the step's timeout is
	// known; dir resolves relative paths.
	defaults func(s *Suite, st *Step, dir string)
	// validate checks the kind's own fields.
	validate func(v *validator, st *Step, sc *Scenario, index int, path string)
	// describe is what a default step name says after the kind, or "".
	describe func(st *Step) string
	// policies is the policy set the step leaves in force, or nil when
	// the step changes no policy.
	policies func(st *Step) *MTLSStep
}

func noDefaults(*Suite, *Step, string) {}

func noPolicies(*Step) *MTLSStep { return nil }

func noDescription(*Step) string { return "" }

// stepKinds is the table of step kinds, in the order of Step's fields.
// It is filled in init: some validators look at other steps' kinds.
var stepKinds []stepKind

func init() {
	stepKinds = []stepKind{
		{
			name:     KindMTLS,
			of:       func(st *Step) any { return nilIfNil(st.MTLS) },
			defaults: func(s *Suite, st *Step, _ string) { s.defaultMTLSNamespaces(st.MTLS) },
			validate: func(v *validator, st *Step, _ *Scenario, _ int, path string) { v.mtls(st.MTLS, path+".mtls") },
			describe: func(st *Step) string { return st.MTLS.Summary() },
			policies: func(st *Step) *MTLSStep { return st.MTLS },
		},
		{
			name: KindExpect,
			of:   func(st *Step) any { return nilIfNil(st.Expect) },
			defaults: func(s *Suite, st *Step, _ string) {
				for k := range st.Expect.Table {
					e := &st.Expect.Table[k]
					if w := s.Workload(e.To); e.Port == 0 && w != nil && len(w.Ports) > 0 {
						e.Port = w.Ports[0].Number
					}
				}
			},
			validate: (*validator).expectStep,
			describe: func(st *Step) string {
				switch {
				case st.Expect.Auto:
					return "auto"
				case len(st.Expect.Table) == 1:
					return "(1 pair)"
				}
				return fmt.Sprintf("(%d pairs)", len(st.Expect.Table))
			},
			policies: noPolicies,
		},
		{
			name: KindRotate,
			of:   func(st *Step) any { return nilIfNil(st.Rotate) },
			defaults: func(_ *Suite, st *Step, _ string) {
				if st.Rotate.Within.IsZero() {
					st.Rotate.Within = st.Timeout
				}
			},
			validate: (*validator).rotate,
			describe: func(st *Step) string { return st.Rotate.Workload },
			policies: noPolicies,
		},
		{
			name:     KindRestart,
			of:       func(st *Step) any { return nilIfNil(st.Restart) },
			defaults: noDefaults,
			validate: (*validator).restart,
			describe: func(st *Step) string { return strings.Join(st.Restart.Workloads, ", ") },
			policies: noPolicies,
		},
		{
			name:     KindWait,
			of:       func(st *Step) any { return nilIfNil(st.Wait) },
			defaults: noDefaults,
			validate: (*validator).wait,
			describe: noDescription,
			policies: noPolicies,
		},
		{
			name: KindUpgrade,
			of:   func(st *Step) any { return nilIfNil(st.Upgrade) },
			defaults: func(s *Suite, st *Step, dir string) {
				u := st.Upgrade
				if u.Method == "" {
					u.Method = UpgradeInPlace
				}
				if u.Method == UpgradeCanary && u.Revision == "" {
					u.Revision = strings.ReplaceAll(u.To, ".", "-")
				}
				if u.Charts != "" {
					u.Charts = resolve(dir, u.Charts)
				}
				s.defaultTraffic(&u.Traffic)
			},
			validate: (*validator).upgrade,
			describe: func(st *Step) string { return fmt.Sprintf("to %s (%s)", st.Upgrade.To, st.Upgrade.Method) },
			policies: noPolicies,
		},
		{
			name: KindRotateRoot,
			of:   func(st *Step) any { return nilIfNil(st.RotateRoot) },
			defaults: func(s *Suite, st *Step, _ string) {
				if st.RotateRoot.Within.IsZero() {
					st.RotateRoot.Within = st.Timeout
				}
				s.defaultTraffic(&st.RotateRoot.Traffic)
			},
			validate: (*validator).rotateRoot,
			describe: noDescription,
			policies: noPolicies,
		},
		{
			name: KindTransition,
			of:   func(st *Step) any { return nilIfNil(st.Transition) },
			defaults: func(s *Suite, st *Step, _ string) {
				orDuration(&st.Transition.Observe, "30s")
				s.defaultTraffic(&st.Transition.Traffic)
				s.defaultMTLSNamespaces(&st.Transition.To)
			},
			validate: (*validator).transition,
			describe: func(st *Step) string { return "to " + st.Transition.To.Summary() },
			// Its policies stay in force after it.
			policies: func(st *Step) *MTLSStep { return &st.Transition.To },
		},
		{
			name: KindMove,
			of:   func(st *Step) any { return nilIfNil(st.MoveDataPlane) },
			defaults: func(s *Suite, st *Step, _ string) {
				m := st.MoveDataPlane
				orDuration(&m.Observe, "10s")
				if m.Within.IsZero() && st.Timeout.Duration > m.Observe.Duration {
					m.Within.Duration = st.Timeout.Duration - m.Observe.Duration
				}
				defaulted := len(m.Traffic.Pairs) == 0
				s.defaultTraffic(&m.Traffic)
				if defaulted {
					// No TCP pair of a moved workload (validation
					// says why when one is written).
					m.Traffic.Pairs = slices.DeleteFunc(m.Traffic.Pairs, func(p Pair) bool {
						return (slices.Contains(m.Workloads, p.From) || slices.Contains(m.Workloads, p.To)) && s.Workload(p.To).Port(p.Port).Protocol == ProtocolTCP
					})
				}
			},
			validate: (*validator).moveDataPlane,
			describe: func(st *Step) string {
				return strings.Join(st.MoveDataPlane.Workloads, ", ") + " to " + string(st.MoveDataPlane.To)
			},
			policies: noPolicies,
		},
	}
}

// nilIfNil turns a nil pointer into a nil interface, so that "is the step
// of this kind" is a plain comparison with nil.
func nilIfNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return p
}

// StepKinds lists the names of every kind of step, in the order of the
// Step type's fields.
func StepKinds() []string {
	names := make([]string, len(stepKinds))
	for i, k := range stepKinds {
		names[i] = k.name
	}
	return names
}

// MissingKinds returns the step kinds that a handler table keyed by kind
// name lacks; each package that dispatches on kinds tests its table with
// it.
func MissingKinds[V any](handlers map[string]V) []string {
	var missing []string
	for _, k := range stepKinds {
		if _, ok := handlers[k.name]; !ok {
			missing = append(missing, k.name)
		}
	}
	return missing
}

// kindsOf returns the table entries of the kinds a step sets, in table
// order; a valid step sets exactly one.
func (st *Step) kindsOf() []*stepKind {
	var out []*stepKind
	for i := range stepKinds {
		if stepKinds[i].of(st) != nil {
			out = append(out, &stepKinds[i])
		}
	}
	return out
}

// Kind names the kind of a step ("mtls", "expect", ...), or "" if none is
// set.
func (st *Step) Kind() string {
	if k := st.kind(); k != nil {
		return k.name
	}
	return ""
}

// kind returns the table entry of the step's first kind, or nil.
func (st *Step) kind() *stepKind {
	if ks := st.kindsOf(); len(ks) > 0 {
		return ks[0]
	}
	return nil
}

// Policies returns the complete policy set the step puts in force (an
// mtls step's, or a transition's target), or nil when the step changes no
// policy.
func (st *Step) Policies() *MTLSStep {
	if k := st.kind(); k != nil {
		return k.policies(st)
	}
	return nil
}

// kindList is "a, b or c" of the step kinds, for messages.
func kindList() string {
	names := StepKinds()
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
