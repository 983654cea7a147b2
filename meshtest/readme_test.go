package meshtest_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The README's "Use it from go test" section quotes the examples as they
// are in examples/gotest (which make test runs), so neither drifts.
func TestREADMEQuotesTheExamples(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Use it from go test\n")
	if !ok {
		t.Fatal(`README.md has no "## Use it from go test" section`)
	}
	if next := strings.Index(section, "\n## "); next >= 0 {
		section = section[:next]
	}
	for file, decls := range map[string][]string{
		"../examples/gotest/mesh_test.go":              {"TestMesh"},
		"../examples/gotest/e2eframework/mesh_test.go": {"testenv", "TestMain", "TestMeshFeature"},
	} {
		for _, d := range declarations(t, file, decls) {
			if !strings.Contains(section, d) {
				t.Errorf("the README's section does not quote this of %s as it is:\n%s", file, d)
			}
		}
	}
}

// declarations are the source texts of the named top-level declarations
// of a Go file, with their doc comments.
func declarations(t *testing.T, file string, names []string) []string {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, file, src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	text := func(n ast.Node) string {
		return string(src[fset.Position(n.Pos()).Offset:fset.Position(n.End()).Offset])
	}
	var out []string
	for _, name := range names {
		found := false
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Name.Name == name {
					out, found = append(out, text(d)), true
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					if v, ok := s.(*ast.ValueSpec); ok && len(v.Names) == 1 && v.Names[0].Name == name {
						out, found = append(out, text(d)), true
					}
				}
			}
		}
		if !found {
			t.Errorf("%s declares no %s", file, name)
		}
	}
	return out
}

// The README's workflow passes actionlint, as this repository's own
// workflows do.
func TestREADMEWorkflowPassesActionlint(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n### In CI: `go test -json` and gotestsum\n")
	if !ok {
		t.Fatal("README.md has no section on gotestsum")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	workflow, _, closed := strings.Cut(rest, "```\n")
	if !ok || !closed || !strings.Contains(workflow, "gotestsum") {
		t.Fatal("the gotestsum section has no workflow using gotestsum")
	}
	cmd := exec.CommandContext(t.Context(), "go", "tool", "actionlint", "-stdin-filename", "mesh.yaml", "-")
	cmd.Stdin = strings.NewReader(workflow)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("actionlint: %v\n%s\n%s", err, out, workflow)
	}
}
