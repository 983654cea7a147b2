package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The repository's action.yml runs this command. actionlint (make lint)
// checks only the inputs the e2e workflow passes to it, so its structure
// and scripts are checked here.

type actionFile struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Author      string `json:"author"`
	Branding    struct {
		Icon  string `json:"icon"`
		Color string `json:"color"`
	} `json:"branding"`
	Inputs map[string]struct {
		Required    bool    `json:"required"`
		Description string  `json:"description"`
		Default     *string `json:"default"`
	} `json:"inputs"`
	Outputs map[string]struct {
		Description string `json:"description"`
		Value       string `json:"value"`
	} `json:"outputs"`
	Runs struct {
		Using string       `json:"using"`
		Steps []actionStep `json:"steps"`
	} `json:"runs"`
}

type actionStep struct {
	Name  string            `json:"name"`
	ID    string            `json:"id"`
	If    string            `json:"if"`
	Uses  string            `json:"uses"`
	Run   string            `json:"run"`
	Shell string            `json:"shell"`
	Env   map[string]string `json:"env"`
	With  map[string]any    `json:"with"`
}

func loadAction(t *testing.T) (actionFile, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "action.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var a actionFile
	if err := yaml.UnmarshalStrict(data, &a); err != nil {
		t.Fatalf("action.yml: %v", err)
	}
	return a, string(data)
}

func (a actionFile) step(t *testing.T, id string) actionStep {
	t.Helper()
	for _, s := range a.Runs.Steps {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("action.yml has no step with id %s", id)
	return actionStep{}
}

func TestActionIsAWellFormedCompositeAction(t *testing.T) {
	a, raw := loadAction(t)
	if a.Name == "" || a.Description == "" {
		t.Error("action.yml needs a name and a description")
	}
	if a.Runs.Using != "composite" {
		t.Errorf("runs.using = %q, want composite", a.Runs.Using)
	}
	for _, in := range []string{"scenarios", "reports", "label-filter", "istio-version", "version"} {
		if _, ok := a.Inputs[in]; !ok {
			t.Errorf("input %s is missing", in)
		}
	}
	if d := a.Inputs["scenarios"].Default; d == nil || *d != "scenarios.yaml" {
		t.Errorf("input scenarios defaults to %v, want scenarios.yaml", d)
	}
	for name, in := range a.Inputs {
		if in.Description == "" {
			t.Errorf("input %s has no description", name)
		}
	}

	// Every input is used, and only declared inputs are referenced.
	refs := map[string]bool{}
	for _, m := range regexp.MustCompile(`inputs\.([a-z-]+)`).FindAllStringSubmatch(raw, -1) {
		refs[m[1]] = true
	}
	for name := range a.Inputs {
		if !refs[name] {
			t.Errorf("input %s is declared but never used", name)
		}
	}
	for name := range refs {
		if _, ok := a.Inputs[name]; !ok {
			t.Errorf("inputs.%s is referenced but not declared", name)
		}
	}

	// Step ids are unique, and outputs and conditions name existing ones.
	ids := map[string]bool{}
	for i, s := range a.Runs.Steps {
		if s.Name == "" {
			t.Errorf("step %d has no name", i)
		}
		if s.ID != "" {
			if ids[s.ID] {
				t.Errorf("step id %s is used twice", s.ID)
			}
			ids[s.ID] = true
		}
		switch {
		case s.Run != "" && s.Uses != "":
			t.Errorf("step %q has both run and uses", s.Name)
		case s.Run != "" && s.Shell != "bash":
			// Composite actions require a shell on every run step.
			t.Errorf("step %q runs a script with shell %q, want bash", s.Name, s.Shell)
		case s.Run == "" && s.Uses == "":
			t.Errorf("step %q has neither run nor uses", s.Name)
		}
		// Inputs reach scripts through env, never by expansion into the
		// script, where a crafted value would run as code.
		if strings.Contains(s.Run, "${{") {
			t.Errorf("step %q expands an expression inside its script", s.Name)
		}
	}
	for _, m := range regexp.MustCompile(`steps\.([a-z-]+)\.outputs`).FindAllStringSubmatch(raw, -1) {
		if !ids[m[1]] {
			t.Errorf("steps.%s is referenced but no step has that id", m[1])
		}
	}
	for _, out := range []string{"run-folder", "exit-code"} {
		if o, ok := a.Outputs[out]; !ok || o.Value == "" {
			t.Errorf("output %s is missing or has no value", out)
		}
	}
}

// TestActionRunStep runs the action's own run script with a stand-in for
// meshproof that records its arguments and writes a run folder, as a
// runner would: it proves the flags passed, the outputs set, and that a
// failed run fails the action only after the upload step could run.
func TestActionRunStep(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to run the action's scripts")
	}
	a, _ := loadAction(t)
	runStep := a.step(t, "run")
	var fail actionStep
	for _, s := range a.Runs.Steps {
		if strings.HasPrefix(s.Name, "Fail when") {
			fail = s
		}
	}
	if fail.Run == "" {
		t.Fatal("action.yml has no step failing the action on a failed run")
	}
	if !strings.Contains(fail.If, "always()") {
		t.Errorf("the failing step runs only if %q; want always()", fail.If)
	}

	work := t.TempDir()
	fake := filepath.Join(work, "meshproof")
	// Writes <reports>/run-1/junit.xml and <reports>/latest, as meshproof
	// run does, and exits 1: a failed scenario.
	script := `#!/usr/bin/env bash
printf '%s\n' "$@" > "$ARGS_FILE"
mkdir -p "$4/run-1" && echo "<testsuites/>" > "$4/run-1/junit.xml" && ln -s run-1 "$4/latest"
exit 1
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	outputs := filepath.Join(work, "github_output")
	argsFile := filepath.Join(work, "args")
	cmd := exec.Command(bash, "-c", runStep.Run)
	cmd.Dir = work
	cmd.Env = append(os.Environ(),
		"GITHUB_OUTPUT="+outputs, "ARGS_FILE="+argsFile,
		"MESHPROOF="+fake, "SCENARIOS=my scenarios.yaml", "REPORTS=out",
		"LABEL_FILTER=mtls && !slow", "ISTIO_VERSION=1.29.6", "PARALLEL=2", "SHARD=1/2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run step: %v\n%s", err, out)
	}
	args, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"run", "my scenarios.yaml", "--reports", "out", "--label-filter", "mtls && !slow", "--istio-version", "1.29.6", "--parallel", "2", "--shard", "1/2"}
	if got := strings.Split(strings.TrimSuffix(string(args), "\n"), "\n"); !slices.Equal(got, want) {
		t.Errorf("meshproof called with %q, want %q", got, want)
	}
	got, err := os.ReadFile(outputs)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"exit-code=1", "run-folder=" + filepath.Join(work, "out", "run-1")} {
		if !slices.Contains(strings.Split(string(got), "\n"), line) {
			t.Errorf("outputs %q lack %q", got, line)
		}
	}

	// Empty optional inputs add no flags.
	cmd = exec.Command(bash, "-c", runStep.Run)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GITHUB_OUTPUT="+outputs, "ARGS_FILE="+argsFile,
		"MESHPROOF="+fake, "SCENARIOS=scenarios.yaml", "REPORTS=r", "LABEL_FILTER=", "ISTIO_VERSION=", "PARALLEL=", "SHARD=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run step: %v\n%s", err, out)
	}
	if args, _ := os.ReadFile(argsFile); string(args) != "run\nscenarios.yaml\n--reports\nr\n" {
		t.Errorf("without optional inputs meshproof got %q", args)
	}

	// The real command accepts the command line the action builds: with a
	// label filter matching nothing it gets past its flags and the file and
	// stops at the filter, before any cluster.
	scenarios, err := filepath.Abs(filepath.Join("..", "..", "scenarios.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bash, "-c", runStep.Run)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GITHUB_OUTPUT="+outputs, "ARGS_FILE="+argsFile,
		"MESHPROOF="+fake, "SCENARIOS="+scenarios, "REPORTS="+t.TempDir(), "LABEL_FILTER=no-such-label", "ISTIO_VERSION=1.29.6", "PARALLEL=2", "SHARD=2/2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run step: %v\n%s", err, out)
	}
	args, err = os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	code := run(strings.Split(strings.TrimSuffix(string(args), "\n"), "\n"), &stdout, &stderr)
	if !strings.Contains(stderr.String(), "matches --label-filter") {
		t.Errorf("meshproof %q: exit %d, stderr %q; want it to stop only at the filter matching nothing", args, code, stderr.String())
	}

	// The last step turns the recorded exit code into the action's result.
	for code, wantErr := range map[string]bool{"0": false, "1": true, "2": true, "": true} {
		cmd := exec.Command(bash, "-c", fail.Run)
		cmd.Env = append(os.Environ(), "CODE="+code)
		err := cmd.Run()
		if (err != nil) != wantErr {
			t.Errorf("exit code %q: failing step error = %v, want failure %v", code, err, wantErr)
		}
	}
}
