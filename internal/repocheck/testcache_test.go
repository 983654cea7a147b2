package repocheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// uncachedTestPackages reads the Makefile's UNCACHED_TEST_PACKAGES: the
// packages whose tests run every time, because they read what Go's test
// cache cannot see.
func uncachedTestPackages(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^UNCACHED_TEST_PACKAGES = ((?:.*\\\n)*.*)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("the Makefile sets no UNCACHED_TEST_PACKAGES")
	}
	var out []string
	for _, f := range strings.Fields(strings.ReplaceAll(string(m[1]), "\\\n", " ")) {
		out = append(out, strings.TrimPrefix(f, "./"))
	}
	return out
}

// hiddenInput names what a test file reads that the test cache cannot see,
// at its position, or "".
func hiddenInput(fset *token.FileSet, file *ast.File) string {
	var found string
	ast.Inspect(file, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || found != "" {
			return found == ""
		}
		switch fun := call.Fun.(type) {
		case *ast.SelectorExpr:
			if x, ok := fun.X.(*ast.Ident); ok && x.Name == "exec" && (fun.Sel.Name == "Command" || fun.Sel.Name == "CommandContext") {
				arg := 0
				if fun.Sel.Name == "CommandContext" {
					arg = 1
				}
				if len(call.Args) > arg {
					if lit, ok := call.Args[arg].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if prog, _ := strconv.Unquote(lit.Value); prog == "go" {
							found = fset.Position(call.Pos()).String() + ": runs go (what it builds or lists is not in the test binary)"
						}
					}
				}
			}
			if fun.Sel.Name == "EchoBinary" {
				found = fset.Position(call.Pos()).String() + ": builds fixtures/echo with go (testsupport.EchoBinary)"
			}
			if fun.Sel.Name == "CheckCapability" {
				found = fset.Position(call.Pos()).String() + ": asks whether the process has CAP_NET_RAW"
			}
		case *ast.Ident:
			if fun.Name == "CheckCapability" {
				found = fset.Position(call.Pos()).String() + ": asks whether the process has CAP_NET_RAW"
			}
		}
		return found == ""
	})
	return found
}

// make test lets Go's test cache skip a package whose test binary,
// environment and files read are unchanged. A package whose tests run the
// go command or depend on CAP_NET_RAW reads what the cache cannot see, so
// it must be in the Makefile's UNCACHED_TEST_PACKAGES (run every time, with
// the reason in the comment above it); every package listed there exists.
func TestPackagesTheTestCacheCannotJudgeRunEveryTime(t *testing.T) {
	uncached := uncachedTestPackages(t)
	pkgs := listPackages(t)
	for _, path := range uncached {
		if _, ok := pkgs[path]; !ok {
			t.Errorf("the Makefile's UNCACHED_TEST_PACKAGES names %s, which is not a package of the module", or(path))
		}
	}
	root := filepath.Join("..", "..")
	for path, p := range pkgs {
		if slices.Contains(uncached, path) {
			continue
		}
		for _, name := range append(slices.Clone(p.TestGoFiles), p.XTestGoFiles...) {
			fset := token.NewFileSet()
			file, err := parser.ParseFile(fset, filepath.Join(root, filepath.FromSlash(path), name), nil, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			if why := hiddenInput(fset, file); why != "" {
				t.Errorf("%s: add %s to the Makefile's UNCACHED_TEST_PACKAGES, with the reason, so that make test runs it every time", why, or(path))
			}
		}
	}
}
