package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	meshrun "github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// headerCommand is a command an example's header comment shows:
// "#   meshproof run examples/x.yaml --label-filter canary   # comment".
var headerCommand = regexp.MustCompile(`(?m)^#[ \t]+(meshproof [^#\n]*?)[ \t]*(?:#.*)?$`)

// Every command the examples' headers show means what they say: validate,
// plan and predict run as shown; a run's label filter selects scenarios of
// the file, and the staging example's quick command leaves out its slow
// rotation while its nightly one runs only that (a 13-hour scenario in the
// quick command misled users).
func TestExampleHeaderCommands(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		header, _, _ := strings.Cut(string(data), "\napiVersion:")
		s, err := scenario.LoadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range headerCommand.FindAllStringSubmatch(header, -1) {
			args := strings.Fields(strings.ReplaceAll(m[1], "'", ""))[1:]
			for i, a := range args {
				if strings.HasPrefix(a, "examples/") {
					args[i] = filepath.Join("..", "..", a)
				}
			}
			t.Run(m[1], func(t *testing.T) {
				if args[0] != "run" {
					if code, _, errOut := runCLI(args...); code != exitOK {
						t.Errorf("exit %d: %s", code, errOut)
					}
					return
				}
				filter := ""
				for i, a := range args {
					if a == "--label-filter" && i+1 < len(args) {
						filter = args[i+1]
					}
				}
				opt, err := meshrun.WithLabelFilter(filter)
				if err != nil {
					t.Fatal(err)
				}
				r, err := meshrun.New(s, opt, meshrun.WithReports(t.TempDir()))
				if err != nil {
					t.Fatalf("%s selects nothing: %v", filter, err)
				}
				defer r.Close()
				for _, sc := range r.Scenarios() {
					slow := false
					for _, l := range sc.Labels {
						slow = slow || l == "slow"
					}
					if slow && !strings.Contains(filter, "rotation") {
						t.Errorf("selects the slow scenario %s", sc.Name)
					}
					if !slow && strings.Contains(filter, "rotation") {
						t.Errorf("the rotation command selects %s too", sc.Name)
					}
				}
				t.Logf("selects %d of %d scenarios", len(r.Scenarios()), len(s.Scenarios))
			})
		}
	}
}
