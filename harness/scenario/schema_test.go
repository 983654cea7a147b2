package scenario

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

var repoRoot = filepath.Join("..", "..")

// update rewrites the generated files instead of comparing them (`make generate`).
var update = flag.Bool("update", false, "rewrite scenarios.schema.json and README.md's reference from the API types")

// The checked-in schema is generated from the types; regenerate it with
// `make generate` when this fails.
func TestCheckedInSchemaIsCurrent(t *testing.T) {
	path := filepath.Join(repoRoot, "scenarios.schema.json")
	if *update {
		if err := os.WriteFile(path, JSONSchema(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, JSONSchema()) {
		t.Fatal("scenarios.schema.json is stale: run `make generate`")
	}
}

// The README's scenario reference is generated from the types too.
func TestREADMEReferenceIsCurrent(t *testing.T) {
	path := filepath.Join(repoRoot, "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- BEGIN SCENARIO REFERENCE (make generate) -->\n", "<!-- END SCENARIO REFERENCE -->"
	head, rest, ok := strings.Cut(string(readme), begin)
	if !ok {
		t.Fatalf("README.md lacks %q", begin)
	}
	body, tail, ok := strings.Cut(rest, end)
	if !ok {
		t.Fatalf("README.md lacks %q", end)
	}
	if *update {
		body = Reference()
		if err := os.WriteFile(path, []byte(head+begin+body+end+tail), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if body != Reference() {
		t.Fatal("README.md's scenario reference is stale: run `make generate`")
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(JSONSchema()))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(schemaID, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(schemaID)
	if err != nil {
		t.Fatalf("the schema does not compile: %v", err)
	}
	return s
}

// yamlToJSONValue reads YAML into the plain values a JSON schema validates.
func yamlToJSONValue(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// What an editor with yaml-language-server would say: the default file is
// valid against the schema, including its matrix ${variables}.
func TestSchemaAcceptsDefaultScenarios(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "scenarios.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "# yaml-language-server: $schema=./scenarios.schema.json\n") {
		t.Error("scenarios.yaml does not point yaml-language-server at the schema on its first line")
	}
	if err := compileSchema(t).Validate(yamlToJSONValue(t, data)); err != nil {
		t.Fatalf("scenarios.yaml does not validate against the schema: %v", err)
	}
	if err := compileSchema(t).Validate(yamlToJSONValue(t, generatedSuite(5))); err != nil {
		t.Fatalf("a generated suite does not validate against the schema: %v", err)
	}
}

func TestSchemaRejectsMistakes(t *testing.T) {
	s := compileSchema(t)
	for name, src := range map[string]string{
		"unknown field": header + "scenarios: [{name: s, colour: red, steps: []}]",
		"bad mode":      header + "scenarios: [{name: s, steps: [{mtls: {peerAuthentications: [{scope: namespace, mode: STRCT}]}}]}]",
		"bad duration":  header + "defaults: {timeout: soon}\nscenarios: []",
		"port string":   header + "scenarios: [{name: s, steps: [{expect: [{from: a, to: b, port: http, result: mtls}]}]}]",
		"missing istio": "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters: [{name: c}]\nscenarios: []",
	} {
		if err := s.Validate(yamlToJSONValue(t, []byte(src))); err == nil {
			t.Errorf("%s: the schema accepted it", name)
		}
	}
}

func TestSchemaDescribesFieldsFromDocComments(t *testing.T) {
	var root map[string]any
	if err := json.Unmarshal(JSONSchema(), &root); err != nil {
		t.Fatal(err)
	}
	defs := root["$defs"].(map[string]any)
	istio := defs["Istio"].(map[string]any)["properties"].(map[string]any)
	ttl := istio["workloadCertTTL"].(map[string]any)["description"].(string)
	if !strings.Contains(ttl, "SECRET_TTL") {
		t.Errorf("workloadCertTTL description = %q", ttl)
	}
	for name, def := range defs {
		if name == "matrixRef" {
			continue
		}
		if d, _ := def.(map[string]any)["description"].(string); d == "" {
			t.Errorf("type %s has no doc comment", name)
		}
	}
}

// The schema says what the loader says about the shape of a file: one kind
// per step, the one apiVersion and kind, ${variable} only in a matrix
// scenario, no sub-millisecond durations.
func TestSchemaAgreesWithLoaderOnShape(t *testing.T) {
	s := compileSchema(t)
	refused := map[string]string{
		"two kinds":          header + "scenarios: [{name: s, steps: [{wait: {duration: 1s}, restart: {workloads: [a]}}]}]",
		"no kind":            header + "scenarios: [{name: s, steps: [{name: x}]}]",
		"apiVersion":         "apiVersion: meshproof.dev/v1\nkind: Suite\nclusters: [{name: c1, istio: {version: 1.30.3}}]\nscenarios: []",
		"kind":               "apiVersion: meshproof.dev/v1alpha1\nkind: Suites\nclusters: [{name: c1, istio: {version: 1.30.3}}]\nscenarios: []",
		"variable no matrix": header + "scenarios: [{name: s, steps: [{expect: [{from: a, to: b, port: '${p}', result: mtls}]}]}]",
		"variable defaults":  header + "defaults: {requests: '${n}'}\nscenarios: []",
		"nanoseconds":        header + "defaults: {interval: 5ns}\nscenarios: []",
	}
	for name, src := range refused {
		if _, err := Load("test.yaml", []byte(src)); err == nil {
			t.Errorf("%s: the loader accepted it", name)
		}
		if err := s.Validate(yamlToJSONValue(t, []byte(src))); err == nil {
			t.Errorf("%s: the schema accepted it", name)
		}
	}
	accepted := header + "scenarios: [{name: s, matrix: {p: [8080, 9090]}, steps: [{expect: [{from: service-a, to: service-b, port: '${p}', result: mtls}]}]}]"
	mustLoad(t, accepted)
	if err := s.Validate(yamlToJSONValue(t, []byte(accepted))); err != nil {
		t.Errorf("a matrix variable in a matrix scenario: %v", err)
	}
}
