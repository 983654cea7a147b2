package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	meshrun "github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

var (
	fence      = regexp.MustCompile("(?ms)^```(sh|console|yaml)\n(.*?)^```")
	inlineCode = regexp.MustCompile("`(meshproof [a-z]+ [^`]*\\.yaml[^`]*)`")
	mdLink     = regexp.MustCompile(`\]\(((?:\.\./)?(?:docs/|examples/)?[A-Za-z][^):#]*\.(?:md|yaml))(?:#[^)]*)?\)`)
)

// Every command the README and the pages under docs/ show runs as shown:
// validate, plan, predict, report, schema and version with the built binary
// from the repository's root, exit 0; the validate example's output is
// exactly what validate prints; a run's file loads and its label filter
// selects scenarios (a run needs clusters: it is not started here); a make
// target exists; the clone and install commands name the module. A command
// the test does not know fails it, so a new one cannot go untested. A
// scenario file shown whole (kind: Suite) is valid. Links to docs/ and
// examples/ lead to files.
func TestREADMECommandsRunAsShown(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("no pages under docs/: %v", err)
	}
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	// `meshproof report reports/latest` renders a run folder: one written
	// by the run folder's own writer, in a copy of the root's layout.
	work := t.TempDir()
	for _, dir := range []string{"examples", "cmd"} {
		if err := os.Symlink(filepath.Join(root, dir), filepath.Join(work, dir)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(root, "scenarios.yaml"), filepath.Join(work, "scenarios.yaml")); err != nil {
		t.Fatal(err)
	}
	folder, err := report.Open(filepath.Join(work, "reports"), "20260101-000000-aaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	folder.RecordVerdict(results.Verdict{Step: results.SetupStep, Kind: results.SetupStep, Status: results.Passed, Started: time.Now()})
	if err := folder.Close(); err != nil {
		t.Fatal(err)
	}

	commands, suites := 0, 0
	for _, page := range append([]string{filepath.Join(root, "README.md")}, pages...) {
		text, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := filepath.Rel(root, page)
		for _, at := range fence.FindAllStringSubmatchIndex(string(text), -1) {
			block := []string{"", string(text[at[2]:at[3]]), string(text[at[4]:at[5]])}
			switch block[1] {
			case "console":
				commands++
				checkConsole(t, work, block[2])
				continue
			case "yaml":
				if strings.Contains(block[2], "\nkind: Suite\n") {
					suites++
					// Blank lines before it, so that positions are the page's.
					preceding := strings.Repeat("\n", strings.Count(string(text[:at[4]]), "\n"))
					if _, err := scenario.Load(name, []byte(preceding+block[2])); err != nil {
						t.Errorf("a scenario file %s shows is not valid:\n%v", name, err)
					}
				}
				continue
			}
			for _, line := range strings.Split(block[2], "\n") {
				line = strings.TrimSpace(stripComment(line))
				if line == "" {
					continue
				}
				commands++
				checkCommand(t, work, string(makefile), line)
			}
		}
		for _, m := range inlineCode.FindAllStringSubmatch(string(text), -1) {
			commands++
			checkCommand(t, work, string(makefile), m[1])
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(text), -1) {
			if _, err := os.Stat(filepath.Join(filepath.Dir(page), m[1])); err != nil {
				t.Errorf("%s links %s: %v", name, m[1], err)
			}
		}
	}
	t.Logf("%d commands and %d scenario files checked", commands, suites)
	if commands < 15 || suites == 0 {
		t.Errorf("%d commands and %d scenario files found in the README and docs/: the test no longer reads their code blocks", commands, suites)
	}
}

// checkConsole runs the "$ command" of a console block and compares what
// it prints with the lines the block shows.
func checkConsole(t *testing.T, dir, block string) {
	t.Helper()
	first, want, _ := strings.Cut(block, "\n")
	cmd, ok := strings.CutPrefix(first, "$ meshproof ")
	if !ok {
		t.Errorf("console block does not begin with $ meshproof: %q", first)
		return
	}
	_, stdout, stderr := runBinary(t, dir, splitArgs(t, cmd)...)
	if got := stdout + stderr; got != want {
		t.Errorf("meshproof %s prints:\n%s\nthe README shows:\n%s", cmd, got, want)
	}
}

func checkCommand(t *testing.T, dir, makefile, line string) {
	t.Helper()
	args := splitArgs(t, line)
	switch {
	case len(args) > 1 && (args[0] == "meshproof" || args[0] == "./meshproof"):
		args = args[1:]
		if args[0] == "run" {
			checkRun(t, dir, line, args[1:])
			return
		}
		code, _, stderr := runBinary(t, dir, args...)
		if code != exitOK {
			t.Errorf("%s: exit %d\n%s", line, code, stderr)
		}
	case args[0] == "make":
		if len(args) < 2 || !regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(args[1])+`:`).MatchString(makefile) {
			t.Errorf("%s: no such make target", line)
		}
		for _, a := range args[2:] {
			if name, _, ok := strings.Cut(a, "="); !ok || !strings.Contains(makefile, name+" ?=") {
				t.Errorf("%s: the Makefile has no variable %s", line, a)
			}
		}
	case line == "git clone https://github.com/meshproof/meshproof && cd meshproof",
		line == "go install github.com/meshproof/meshproof/cmd/meshproof@latest":
		// The module's path: what the binary test builds is this checkout.
	case line == "go build -o meshproof ./cmd/meshproof":
		binary(t) // the same build
	case strings.HasPrefix(line, "go test ") || strings.HasPrefix(line, "MESHPROOF_REHEARSE=1 go test "):
		// A user's repository's go test of meshtest: examples/gotest is
		// that repository, which make test runs (meshtest's README test
		// keeps the section's code equal to it).
		if !strings.HasSuffix(line, " ./mesh/") {
			t.Errorf("%s: the section's go test commands run ./mesh/, the package its example lives in", line)
		}
	default:
		t.Errorf("the README shows a command this test does not know: %q", line)
	}
}

// checkRun checks a `meshproof run` line without running it: the file
// loads and the label filter selects scenarios of it.
func checkRun(t *testing.T, dir, line string, args []string) {
	t.Helper()
	file, filter := "scenarios.yaml", ""
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--label-filter" || a == "--reports" || a == "--istio-version" || a == "--parallel" || a == "--shard":
			switch a {
			case "--label-filter":
				filter = args[i+1]
			case "--parallel":
				if n, err := strconv.Atoi(args[i+1]); err != nil || n < 1 {
					t.Errorf("%s: --parallel %s is not a number of scenarios", line, args[i+1])
				}
			case "--shard":
				if _, err := meshrun.ParseShard(args[i+1]); err != nil {
					t.Errorf("%s: %v", line, err)
				}
			}
			i++
		case strings.HasPrefix(a, "--"):
		default:
			file = a
		}
	}
	s, err := scenario.LoadFile(filepath.Join(dir, file))
	if err != nil {
		t.Errorf("%s: %v", line, err)
		return
	}
	opt, err := meshrun.WithLabelFilter(filter)
	if err != nil {
		t.Errorf("%s: %v", line, err)
		return
	}
	r, err := meshrun.New(s, opt, meshrun.WithReports(t.TempDir()))
	if err != nil {
		t.Errorf("%s: %v", line, err)
		return
	}
	r.Close()
}

// stripComment drops a shell comment: a # after a space, outside quotes.
func stripComment(line string) string {
	quote := byte(0)
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' '):
			return line[:i]
		}
	}
	return line
}

// splitArgs splits a command line as the shell does for the README's
// commands: spaces, single and double quotes.
func splitArgs(t *testing.T, line string) []string {
	var args []string
	var cur strings.Builder
	quote, inArg := byte(0), false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			quote, inArg = c, true
		case c == ' ':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}
