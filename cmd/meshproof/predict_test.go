package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The acceptance case: a matrix for every step of every default scenario,
// with every asserted cell agreeing.
func TestPredictTableEveryStep(t *testing.T) {
	code, out, errOut := runCLI("predict", defaultScenarios, "-o", "table")
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	s, err := scenario.LoadFile(defaultScenarios)
	if err != nil {
		t.Fatal(err)
	}
	steps := 0
	for _, sc := range s.Scenarios {
		if !strings.Contains(out, "\nScenario "+sc.Name+" (") {
			t.Errorf("no section for scenario %s", sc.Name)
		}
		for _, st := range sc.Steps {
			steps++
			if !strings.Contains(out, "  Step "+st.Name+"\n    client \\ server  service-a:8080  service-a:9090  service-b:8080") {
				t.Errorf("%s: no matrix under step %q", sc.Name, st.Name)
			}
		}
	}
	if got := strings.Count(out, "client \\ server"); got != steps {
		t.Errorf("%d matrices for %d steps", got, steps)
	}
	// Rows are clients; the strict scenario's first matrix reads:
	for _, row := range []string{
		"    service-a        -               -               mtls            mtls            plaintext    plaintext    fail(upstream-503)  mtls         mtls        mtls        mtls        mtls\n",
		"    legacy           fail(reset)     fail(reset)     fail(reset)     fail(reset)     -            -            fail                fail         fail        fail        fail        fail\n",
	} {
		if !strings.Contains(out, row) {
			t.Errorf("table lacks the row\n%s\nin:\n%s", row, out)
		}
	}
	// Matrix rows and notes are indented; only the legend may say "!".
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "    ") && strings.Contains(line, "!") {
			t.Errorf("a default expectation disagrees with the prediction: %q", line)
		}
	}
	if n := strings.Count(out, "*"); n < 19 {
		t.Errorf("%d cells marked as asserted, want one per expect row (19)", n)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimRight(line, " ") != line {
			t.Errorf("trailing spaces in %q", line)
			break
		}
	}
}

func decodeRows(t *testing.T, out string) []predictedRow {
	t.Helper()
	var rows []predictedRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("stdout is not a JSON list of predictions: %v\n%s", err, out)
	}
	return rows
}

func TestPredictJSON(t *testing.T) {
	code, out, errOut := runCLI("predict", "-o", "json", defaultScenarios)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := decodeRows(t, out)
	// 30 steps, each with every client towards every other workload's
	// ports: five workloads with two ports (two of them ambient), two
	// proxyless ones with one.
	if want := 30 * (5*(4*2+2) + 2*(5*2+1)); len(rows) != want {
		t.Errorf("%d rows, want %d", len(rows), want)
	}
	found := false
	asserted := 0
	for _, r := range rows {
		if r.Scenario == "strict" && r.Step == 2 && r.From == "legacy" && r.To == "service-b" && r.Port == 8080 {
			found = true
			if r.Result != scenario.ResultFail || r.Reason != "reset" || !r.Asserted || r.Agrees == nil || !*r.Agrees ||
				r.Expected == nil || r.Expected.Reason != "reset" || !strings.Contains(r.Rule, "namespace STRICT") ||
				!strings.HasPrefix(r.At, defaultScenarios+":78:") || r.StepName == "" {
				t.Errorf("strict step 2 legacy -> service-b:8080 = %+v", r)
			}
		}
		if r.Asserted {
			asserted++
			if r.Agrees == nil || !*r.Agrees {
				t.Errorf("scenarios.yaml asserts against the oracle: %+v", r)
			}
		} else if r.Agrees != nil || r.Expected != nil {
			t.Errorf("an unasserted cell says whether it agrees: %+v", r)
		}
		if r.Reason != "" && r.Result != scenario.ResultFail {
			t.Errorf("a reason on a %s row: %+v", r.Result, r)
		}
		if r.Rule == "" {
			t.Errorf("a cell without the rule that decided it: %+v", r)
		}
	}
	if !found {
		t.Error("no row for strict step 2 legacy -> service-b:8080")
	}
	if asserted < 19 {
		t.Errorf("%d asserted cells, want one per written expect row (at least 19)", asserted)
	}
	// The reason is left out, not empty, when there is none.
	if !strings.Contains(out, `"result": "mtls"`) || strings.Contains(out, `"reason": ""`) {
		t.Errorf("unexpected JSON shape:\n%.400s", out)
	}
}

func TestPredictOneStep(t *testing.T) {
	// Flags after the file work too.
	code, out, errOut := runCLI("predict", defaultScenarios, "--scenario", "port-level-override", "--step", "2", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := decodeRows(t, out)
	if len(rows) != 72 {
		t.Fatalf("%d rows, want 72", len(rows))
	}
	got := map[string]scenario.Result{}
	for _, r := range rows {
		if r.Scenario != "port-level-override" || r.Step != 2 {
			t.Errorf("row of another step: %+v", r)
		}
		got[fmt.Sprintf("%s>%s:%d", r.From, r.To, r.Port)] = r.Result
	}
	if got["legacy>service-b:8080"] != scenario.ResultFail || got["legacy>service-b:9090"] != scenario.ResultPlaintext {
		t.Errorf("port-level override not predicted: %v", got)
	}
}

func TestPredictMatrixScenarioBaseName(t *testing.T) {
	code, out, errOut := runCLI("predict", "--scenario", "client-tls-towards-strict", defaultScenarios)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, name := range []string{"client-tls-towards-strict[tls=DISABLE]", "client-tls-towards-strict[tls=ISTIO_MUTUAL]"} {
		if !strings.Contains(out, "Scenario "+name+" (") {
			t.Errorf("expansion %s not selected:\n%s", name, out)
		}
	}
	if strings.Contains(out, "Scenario strict (") {
		t.Error("selected a scenario of another name")
	}
}

func writeSuite(t *testing.T, scenarios string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "suite.yaml")
	head := "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters:\n- name: c\n  istio: {version: 1.30.3}\nscenarios:\n"
	if err := os.WriteFile(path, []byte(head+scenarios), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPredictMarksDisagreements(t *testing.T) {
	file := writeSuite(t, `- name: wrong
  steps:
  - mtls:
      peerAuthentications:
      - {scope: namespace, mode: STRICT}
  - expect:
    - {from: legacy, to: service-b, result: plaintext}
    - {from: service-a, to: service-b, result: mtls}
`)
	code, out, errOut := runCLI("predict", file)
	if code != exitInvalid {
		t.Fatalf("exit %d, want %d (a contradiction fails the gate): %s", code, exitInvalid, errOut)
	}
	gate := file + ":13:7: wrong step 2: legacy -> service-b:8080 expects plaintext, Istio's rules give fail (reset): client without sidecar sends plaintext"
	if !strings.Contains(errOut, gate) || !strings.Contains(errOut, "1 of 2 asserted cells contradict Istio's rules") {
		t.Errorf("stderr lacks\n%s\nin:\n%s", gate, errOut)
	}
	code, out2, _ := runCLI("predict", "-o", "json", file)
	if code != exitInvalid {
		t.Errorf("-o json: exit %d, want %d", code, exitInvalid)
	}
	contradictions := 0
	for _, r := range decodeRows(t, out2) {
		if r.Asserted && !*r.Agrees {
			contradictions++
		}
	}
	if contradictions != 1 {
		t.Errorf("-o json shows %d contradicting cells, want 1", contradictions)
	}
	if !strings.Contains(out, "fail(reset)!") || !strings.Contains(out, "mtls*") {
		t.Errorf("cells not marked:\n%s", out)
	}
	note := "    ! legacy -> service-b:8080 (" + file + ":13:7): expects plaintext, predicted fail (reset) because client without sidecar sends plaintext; server's namespace STRICT rejects plaintext"
	if !strings.Contains(out, note) {
		t.Errorf("no note\n%s\nin:\n%s", note, out)
	}
}

// A DestinationRule for a workload and a port-level one for the same
// workload are one object, whose outcome is fixed: predict answers.
func TestPredictDestinationRuleWithPortOverride(t *testing.T) {
	file := writeSuite(t, `- name: two-rules
  steps:
  - mtls:
      destinationRules:
      - {workload: service-b, mode: ISTIO_MUTUAL}
      - {workload: service-b, mode: DISABLE, port: 9090}
  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
    - {from: service-a, to: service-b, port: 9090, result: plaintext}
`)
	code, out, errOut := runCLI("predict", file)
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s\nstdout:\n%s", code, errOut, out)
	}
	if strings.Count(out, "*") < 2 || strings.Contains(out, "no prediction") {
		t.Errorf("stdout:\n%s", out)
	}
}

func TestPredictUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"predict", "-o", "yaml", defaultScenarios}, "-o must be table or json"},
		{[]string{"predict", "a.yaml", "b.yaml"}, `unexpected argument "b.yaml"`},
		{[]string{"predict", "--step", "1", defaultScenarios}, "--step needs --scenario"},
		{[]string{"predict", "--scenario", "strickt", defaultScenarios}, `no scenario named "strickt"`},
		{[]string{"predict", "--scenario", "strict", "--step", "3", defaultScenarios}, "has steps 1 to 2; there is no step 3"},
		{[]string{"predict", "--no-such-flag"}, "flag provided but not defined"},
	} {
		code, out, errOut := runCLI(c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("meshproof %v: exit %d (want 2), stdout %q, stderr %q (want it to say %q)", c.args, code, out, errOut, c.want)
		}
	}
}

// proxylessSuite writes a suite with a sidecar workload, two proxyless gRPC
// workloads (grpc-l labelled tlsMode=istio) and one outside the mesh, whose
// scenario is given.
func proxylessSuite(t *testing.T, scenarios string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxyless.yaml")
	src := `apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: 1.30.3}}]
fixtures:
  workloads:
  - {name: service-a, ports: [{name: grpc, number: 7070}]}
  - {name: grpc-a, proxyless: true}
  - {name: grpc-l, proxyless: true, tlsModeLabel: true}
  - {name: legacy, mesh: false, ports: [{name: grpc, number: 7070}]}
scenarios:
` + scenarios
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// predict prints the pairs of proxyless workloads, decided by the proxyless
// rules, holds written rows against them, and expect: auto asserts them.
func TestPredictProxylessPairs(t *testing.T) {
	file := proxylessSuite(t, `- name: proxyless
  steps:
  - mtls:
      peerAuthentications: [{scope: namespace, mode: PERMISSIVE}]
      destinationRules: [{workload: grpc-l, mode: ISTIO_MUTUAL}]
  - expect:
    - {from: grpc-a, to: grpc-l, port: 7070, result: mtls}
    - {from: service-a, to: grpc-a, port: 7070, result: plaintext}
    - {from: legacy, to: grpc-l, port: 7070, result: fail}
    - {from: grpc-l, to: grpc-a, port: 7070, result: plaintext}
  - expect: auto
`)
	code, out, errOut := runCLI("predict", file)
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr:\n%s\nstdout:\n%s", code, errOut, out)
	}
	if !strings.Contains(out, "client \\ server  service-a:7070  grpc-a:7070  grpc-l:7070  legacy:7070") {
		t.Errorf("no matrix over the proxyless servers:\n%s", out)
	}
	_, jsonOut, _ := runCLI("predict", "-o", "json", file)
	rules := map[string]string{}
	asserted := 0
	for _, r := range decodeRows(t, jsonOut) {
		if r.Step == 2 {
			rules[r.From+">"+r.To] = r.Rule
			if r.Asserted {
				asserted++
			}
		}
	}
	if asserted != 4 {
		t.Errorf("%d asserted cells, want the 4 rows", asserted)
	}
	for pair, want := range map[string]string{
		"grpc-a>grpc-l":    "proxyless client sends mTLS",
		"service-a>grpc-a": "auto mTLS: proxyless server without the tlsMode=istio label",
		"legacy>grpc-l":    "with the tlsMode=istio label, served as STRICT",
		"grpc-l>grpc-a":    "proxyless client without DestinationRule sends plaintext (no auto mTLS)",
	} {
		if !strings.Contains(rules[pair], want) {
			t.Errorf("%s rule %q, want it to say %q", pair, rules[pair], want)
		}
	}

	// expect: auto is the proxyless prediction, row for row.
	s, err := scenario.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	table, err := oracle.Table(s, &s.Scenarios[0], 2)
	if err != nil {
		t.Fatal(err)
	}
	written := s.Scenarios[0].Steps[1].Expect.Table
	for _, w := range written {
		found := false
		for _, a := range table {
			if a.From == w.From && a.To == w.To && a.Port == w.Port {
				found = a.Result == w.Result && a.Reason == w.Reason
			}
		}
		if !found {
			t.Errorf("expect: auto has no row %s -> %s:%d %s %s", w.From, w.To, w.Port, w.Result, w.Reason)
		}
	}
	if len(table) != 12 {
		t.Errorf("expect: auto has %d rows, want every pair of 4 workloads on one port (12)", len(table))
	}
}

// A row that expects a sidecar's auto mTLS from a proxyless client
// contradicts the proxyless rules, and the gate says why.
func TestPredictProxylessContradiction(t *testing.T) {
	file := proxylessSuite(t, `- name: no-dr
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect:
    - {from: grpc-a, to: grpc-l, port: 7070, result: mtls}
`)
	code, _, errOut := runCLI("predict", file)
	if code != exitInvalid {
		t.Fatalf("exit %d, want %d: %s", code, exitInvalid, errOut)
	}
	want := file + ":15:7: no-dr step 2: grpc-a -> grpc-l:7070 expects mtls, Istio's rules give fail: proxyless client without DestinationRule sends plaintext (no auto mTLS)"
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr lacks\n%s\nin:\n%s", want, errOut)
	}
}

// The header says which data plane the prediction modelled for which
// workload: sidecars only, proxyless only, or both with the workloads out
// of the mesh.
func TestPredictHeaderNamesTheDataPlanes(t *testing.T) {
	for name, tc := range map[string]struct{ workloads, want, not string }{
		"sidecars": {"[{name: a}, {name: b}]", "for Envoy sidecars with auto mTLS (a, b).\n", "proxyless"},
		"proxyless": {"[{name: a, proxyless: true}, {name: b, proxyless: true}]",
			"for proxyless gRPC, grpc-go with pilot-agent, no auto mTLS: its client sends mTLS only under a DestinationRule ISTIO_MUTUAL (a, b).\n", "sidecar"},
		"both": {"[{name: a}, {name: b, proxyless: true}, {name: c, mesh: false}]",
			"for Envoy sidecars with auto mTLS (a); proxyless gRPC, grpc-go with pilot-agent, no auto mTLS: its client sends mTLS only under a DestinationRule ISTIO_MUTUAL (b); no mesh (c).\n", "(sidecar mode"},
		"ambient": {"[{name: a, dataPlane: ambient}, {name: b}]",
			"for Envoy sidecars with auto mTLS (b); ambient, ztunnel on each node speaking HBONE mutual TLS (a).\n", "proxyless"},
	} {
		t.Run(name, func(t *testing.T) {
			istio := "{version: 1.30.3}"
			if name == "ambient" {
				istio = "{version: 1.30.3, profile: ambient}"
			}
			stdin = strings.NewReader("apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters: [{name: c, istio: " + istio + "}]\nfixtures: {workloads: " + tc.workloads + "}\nscenarios: [{name: s, steps: [{mtls: {}}]}]\n")
			t.Cleanup(func() { stdin = os.Stdin })
			code, out, errOut := runCLI("predict", "-")
			if code != exitOK {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			header, _, _ := strings.Cut(out, "* = asserted")
			if !strings.HasSuffix(header, tc.want) || strings.Contains(header, tc.not) {
				t.Errorf("header %q, want it to end in %q and not say %q", header, tc.want, tc.not)
			}
		})
	}
}
