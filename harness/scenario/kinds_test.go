package scenario

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The table of step kinds has one entry per kind field of Step, in field
// order, and each entry's accessor returns exactly its own field.
func TestStepKindsTableMatchesStepFields(t *testing.T) {
	st := reflect.TypeOf(Step{})
	var fields []string
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		if f.Type.Kind() != reflect.Pointer {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields = append(fields, name)

		var step Step
		reflect.ValueOf(&step).Elem().Field(i).Set(reflect.New(f.Type.Elem()))
		kinds := step.kindsOf()
		if len(kinds) != 1 || kinds[0].name != name {
			var got []string
			for _, k := range kinds {
				got = append(got, k.name)
			}
			t.Errorf("a step with only %s set is of kinds %v", name, got)
		}
	}
	if !slices.Equal(fields, StepKinds()) {
		t.Errorf("Step's kind fields are %v; the table of step kinds has %v", fields, StepKinds())
	}
	for _, k := range stepKinds {
		if k.of == nil || k.defaults == nil || k.validate == nil || k.describe == nil || k.policies == nil {
			t.Errorf("step kind %s lacks an entry of the table", k.name)
		}
	}
}

func TestMissingKinds(t *testing.T) {
	handlers := map[string]bool{}
	for _, k := range StepKinds()[1:] {
		handlers[k] = true
	}
	if got := MissingKinds(handlers); !slices.Equal(got, StepKinds()[:1]) {
		t.Errorf("MissingKinds = %v, want %v", got, StepKinds()[:1])
	}
}

func TestStepWithoutKindListsEveryKind(t *testing.T) {
	errs := loadErrors(t, header+"scenarios:\n- name: s\n  steps:\n  - name: nothing\n")
	if len(errs) != 1 {
		t.Fatalf("want one error, got:\n%v", errs)
	}
	for _, k := range StepKinds() {
		if !strings.Contains(errs[0].Message, k) {
			t.Errorf("%q does not name kind %s", errs[0].Message, k)
		}
	}
}

func TestStepPoliciesFromTable(t *testing.T) {
	s := mustLoad(t, header+`scenarios:
- name: s
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - transition: {to: {peerAuthentications: [{scope: namespace, mode: PERMISSIVE}]}}
  - wait: {duration: 1s}
`)
	steps := s.Scenarios[0].Steps
	if p := steps[0].Policies(); p != steps[0].MTLS {
		t.Errorf("mtls step policies = %v", p)
	}
	if p := steps[1].Policies(); p != &steps[1].Transition.To {
		t.Errorf("transition step policies = %v", p)
	}
	if p := steps[2].Policies(); p != nil {
		t.Errorf("wait step policies = %v, want none", p)
	}
}
