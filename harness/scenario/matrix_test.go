package scenario

import (
	"fmt"
	"strings"
	"testing"
)

func TestMatrixExpandsWithIncludeAndSubstitution(t *testing.T) {
	s := mustLoad(t, header+`scenarios:
- name: modes
  labels: [matrix]
  matrix:
    mode: [STRICT, PERMISSIVE]
    tls: [DISABLE, ISTIO_MUTUAL]
    port: [9090]
    include:
    - {mode: STRICT, legacy: fail}
    - {mode: PERMISSIVE, legacy: plaintext}
  steps:
  - mtls:
      peerAuthentications: [{scope: namespace, mode: "${mode}"}]
      destinationRules: [{workload: service-b, mode: "${tls}", port: "${port}"}]
  - expect:
    - {from: legacy, to: service-b, result: "${legacy}"}
`)
	var got []string
	for _, sc := range s.Scenarios {
		st := sc.Steps[0].MTLS
		got = append(got, fmt.Sprintf("%s %s/%s/%d/%s", sc.Name, st.PeerAuthentications[0].Mode, st.DestinationRules[0].Mode,
			st.DestinationRules[0].Port, sc.Steps[1].Expect.Table[0].Result))
	}
	want := []string{
		"modes[mode=STRICT,tls=DISABLE,port=9090] STRICT/DISABLE/9090/fail",
		"modes[mode=STRICT,tls=ISTIO_MUTUAL,port=9090] STRICT/ISTIO_MUTUAL/9090/fail",
		"modes[mode=PERMISSIVE,tls=DISABLE,port=9090] PERMISSIVE/DISABLE/9090/plaintext",
		"modes[mode=PERMISSIVE,tls=ISTIO_MUTUAL,port=9090] PERMISSIVE/ISTIO_MUTUAL/9090/plaintext",
	}
	if strings.Join(got, "\n") != strings.Join(want[:4], "\n") {
		t.Fatalf("expansion:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s.Scenarios[0].MatrixValues["legacy"] != "fail" || s.Scenarios[0].Labels[0] != "matrix" {
		t.Errorf("matrix values = %v", s.Scenarios[0].MatrixValues)
	}
}

func TestMatrixIncludeAddsUnmatchedCombination(t *testing.T) {
	m := &Matrix{Variables: map[string][]string{"mode": {"STRICT"}}, Include: []map[string]string{{"mode": "DISABLE", "x": "1"}}}
	var got []string
	for _, c := range m.Combinations() {
		got = append(got, c.String())
	}
	if strings.Join(got, "; ") != "mode=STRICT; mode=DISABLE, x=1" {
		t.Errorf("combinations = %q", got)
	}
}

func TestMatrixErrors(t *testing.T) {
	for _, tc := range []struct{ name, matrix, step, want string }{
		{"unknown variable", "{mode: [STRICT]}", `{mtls: {peerAuthentications: [{scope: namespace, mode: "${mod}"}]}}`,
			`unknown matrix variable "mod" (did you mean "mode"?)`},
		{"bad value in one combination", "{mode: [STRICT, STRCT]}", `{mtls: {peerAuthentications: [{scope: namespace, mode: "${mode}"}]}}`,
			`unknown value "STRCT"; want one of UNSET, DISABLE, PERMISSIVE, STRICT (did you mean "STRICT"?) (in matrix combination mode=STRCT)`},
		{"empty", "{}", `{wait: {duration: 1s}}`, "a matrix needs at least one variable with values"},
		{"empty values", "{mode: []}", `{wait: {duration: 1s}}`, "a matrix variable needs at least one value"},
		{"bad name", `{"1x": [a]}`, `{wait: {duration: 1s}}`, "variable names are letters"},
		{"too many", "{a: [1,2,3,4,5,6,7,8], b: [1,2,3,4,5,6,7,8], c: [1,2,3,4,5]}", `{wait: {duration: 1s}}`, "320 combinations; at most 256"},
		{"not an int", "{port: [http]}", `{expect: [{from: service-a, to: service-b, port: "${port}", result: mtls}]}`, `must be an integer, got "http"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, header+"scenarios:\n- name: s\n  matrix: "+tc.matrix+"\n  steps:\n  - "+tc.step+"\n")
			if !strings.Contains(errs.Error(), tc.want) {
				t.Errorf("errors:\n%s\nwant one containing:\n%s", errs, tc.want)
			}
		})
	}
}

// A mistake that every combination makes is reported once, without naming
// a combination.
func TestMatrixReportsSharedMistakeOnce(t *testing.T) {
	errs := loadErrors(t, header+"scenarios:\n- name: s\n  matrix: {mode: [STRICT, PERMISSIVE, DISABLE]}\n  steps:\n  - {expect: [{from: nobody, to: service-b, result: mtls}]}\n")
	if len(errs) != 1 || strings.Contains(errs.Error(), "combination") {
		t.Errorf("want one error without a combination, got:\n%s", errs)
	}
}

// GitHub Actions' semantics: excludes remove combinations before includes
// apply, so an include can bring an excluded combination back.
func TestMatrixExclude(t *testing.T) {
	s := mustLoad(t, header+`scenarios:
- name: m
  matrix:
    mode: [STRICT, PERMISSIVE]
    tls: [DISABLE, ISTIO_MUTUAL]
    exclude:
    - {mode: PERMISSIVE, tls: DISABLE}
    - {mode: STRICT, tls: ISTIO_MUTUAL}
    include:
    - {mode: STRICT, tls: ISTIO_MUTUAL, note: back}
  steps:
  - mtls:
      peerAuthentications: [{scope: namespace, mode: "${mode}"}]
      destinationRules: [{workload: service-b, mode: "${tls}"}]
`)
	var got []string
	for _, sc := range s.Scenarios {
		got = append(got, sc.Name)
	}
	want := "m[mode=STRICT,tls=DISABLE] m[mode=PERMISSIVE,tls=ISTIO_MUTUAL] m[mode=STRICT,tls=ISTIO_MUTUAL]"
	if strings.Join(got, " ") != want {
		t.Errorf("scenarios = %v, want %s", got, want)
	}
	if v := s.Scenarios[2].MatrixValues["note"]; v != "back" {
		t.Errorf("the included combination has note = %q", v)
	}
}

func TestMatrixExcludeMatchingNothingIsAnError(t *testing.T) {
	errs := loadErrors(t, header+`scenarios:
- name: m
  matrix:
    mode: [STRICT, PERMISSIVE]
    exclude:
    - {mode: DISABLE}
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: "${mode}"}]}
`)
	want := `test.yaml:11:7: scenarios[0].matrix.exclude[0]: exclude {mode: DISABLE} matches no combination of the matrix`
	if errs.Error() != want {
		t.Errorf("errors:\n%s\nwant:\n%s", errs, want)
	}
}
