package repocheck

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const modulePath = "github.com/meshproof/meshproof"

var update = flag.Bool("update", false, "rewrite README.md's Layout section from the package docs")

// pkg is what `go list -json` says of one package.
type pkg struct {
	ImportPath   string
	Name         string
	Doc          string
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Imports      []string
	Deps         []string
}

// rel is the module-relative path of an import path of the module, or ""
// and false for other modules' packages.
func rel(importPath string) (string, bool) {
	if importPath == modulePath {
		return "", true
	}
	r, ok := strings.CutPrefix(importPath, modulePath+"/")
	return r, ok
}

// listPackages lists the module's packages, e2e-tagged files included.
func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-tags", "e2e", "-json", "./...")
	cmd.Dir = filepath.Join("..", "..")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		r, _ := rel(p.ImportPath)
		pkgs[r] = p
	}
	return pkgs
}

// rank is a package's layer, -1 when the layout does not name it.
func rank(path string) int {
	for i, l := range layers {
		if slices.Contains(l.packages, path) {
			return i
		}
	}
	return -1
}

// Every package of the module is in the layout, and imports (outside its
// tests) only packages of its own layer or earlier ones; the engine has its
// one importer; no program links a test-only package.
func TestImportsGoOnlyDownward(t *testing.T) {
	pkgs := listPackages(t)
	for path, p := range pkgs {
		from := rank(path)
		if from < 0 {
			t.Errorf("%s is in no layer of layers_test.go: add it where it belongs", or(path))
			continue
		}
		for _, imp := range p.Imports {
			to, ok := rel(imp)
			if !ok {
				continue
			}
			if r := rank(to); r > from {
				t.Errorf("%s (%s) imports %s (%s): an upward import", or(path), layers[from].title, or(to), layers[r].title)
			}
			if only, ok := onlyImporter[to]; ok && path != only {
				t.Errorf("%s imports %s, whose one importer outside tests is %s", or(path), to, only)
			}
		}
		if slices.Contains(testOnly, path) {
			continue
		}
		for _, dep := range p.Deps {
			if d, ok := rel(dep); ok && slices.Contains(testOnly, d) {
				t.Errorf("%s links %s, which exists for tests only", or(path), d)
			}
		}
	}
	for _, l := range layers {
		for _, path := range l.packages {
			if _, ok := pkgs[path]; !ok && !planned[path] {
				t.Errorf("layers_test.go names %s, which is not a package of the module", or(path))
			}
		}
	}
}

// planned are packages the layout places before they exist.
var planned = map[string]bool{
	"harness/internal/local/xds": true, "harness/internal/local/envoy": true,
	"harness/internal/local/ztunnel": true,
}

func or(path string) string {
	if path == "" {
		return "the module root"
	}
	return path
}

// The meshproof CLI links none of the test machinery: no testing helpers of
// ours, no envtest, no Ginkgo internals. (The standard library's testing
// package itself is linked through two dependencies chosen on purpose:
// Helm, whose version and chart packages call testing.Testing(), and
// e2e-framework's provider interface, whose package declares test
// features; neither runs a test.)
func TestCLILinksNoTestMachinery(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./cmd/meshproof")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var importsTesting []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, imports, _ := strings.Cut(line, " ")
		if strings.Contains(path, "envtest") || strings.Contains(path, "ginkgo/v2/internal") || strings.Contains(path, "ginkgo/v2/reporters") || strings.Contains(path, "gomega") {
			t.Errorf("the CLI links %s", path)
		}
		if slices.Contains(strings.Fields(imports), "testing") {
			importsTesting = append(importsTesting, path)
		}
	}
	allowed := []string{"helm.sh/helm/v4/internal/version", "helm.sh/helm/v4/pkg/chart/common", "sigs.k8s.io/e2e-framework/pkg/types"}
	for _, p := range importsTesting {
		if !slices.Contains(allowed, p) {
			t.Errorf("%s imports testing and the CLI links it", p)
		}
	}
}

// Every package says what it is.
func TestEveryPackageHasADoc(t *testing.T) {
	for path, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", or(path))
		}
	}
}

const layoutBegin, layoutEnd = "<!-- BEGIN LAYOUT (make generate) -->\n", "<!-- END LAYOUT -->"

// The README's Layout section is the layers, each package with the first
// sentence of its doc.
func TestREADMELayoutIsCurrent(t *testing.T) {
	pkgs := listPackages(t)
	want := layoutSection(pkgs)
	path := filepath.Join("..", "..", "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok := strings.Cut(string(readme), layoutBegin)
	if !ok {
		t.Fatalf("README.md lacks %q", layoutBegin)
	}
	body, tail, ok := strings.Cut(rest, layoutEnd)
	if !ok {
		t.Fatalf("README.md lacks %q", layoutEnd)
	}
	if *update {
		body = want
		if err := os.WriteFile(path, []byte(head+layoutBegin+body+layoutEnd+tail), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if body != want {
		t.Fatal("README.md's Layout section is stale: run `make generate`")
	}
}

func layoutSection(pkgs map[string]pkg) string {
	var b strings.Builder
	for _, l := range layers {
		var rows []string
		for _, path := range l.packages {
			p, ok := pkgs[path]
			if !ok {
				continue
			}
			name := "`" + path + "`"
			if path == "" {
				name = "The module root"
			}
			rows = append(rows, fmt.Sprintf("- %s %s\n", name, synopsis(p.Doc)))
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n**%s**\n\n", l.title)
		for _, r := range rows {
			b.WriteString(r)
		}
	}
	return b.String() + "\n"
}

// synopsis is a doc's first sentence, without its "Package x" or
// "Command x" opening: the rest of a sentence whose subject is the
// package's path.
func synopsis(doc string) string {
	s := firstSentence(doc)
	for _, prefix := range []string{"Package ", "Command "} {
		if rest, ok := strings.CutPrefix(s, prefix); ok {
			if _, after, ok := strings.Cut(rest, " "); ok {
				s = after
			}
		}
	}
	return s
}

// firstSentence is doc up to the first period followed by a space or the
// end, as go/doc's Synopsis cuts it.
func firstSentence(doc string) string {
	doc = strings.Join(strings.Fields(doc), " ")
	for i := 0; i < len(doc); i++ {
		if doc[i] == '.' && (i+1 == len(doc) || doc[i+1] == ' ') {
			return doc[:i+1]
		}
	}
	return doc
}
