// Command meshproof proves that a service mesh enforces mutual TLS.
//
//	meshproof validate [FILE...]            check scenario files
//	meshproof plan [FILE] [-o text|yaml]    show what a run would do, touching no cluster
//	meshproof predict [FILE] [-o table|json] predict every pair's outcome; exit 1 on a contradiction
//	meshproof run [FILE] [--reports DIR]    run the scenarios on their clusters
//	meshproof report [RUN|RESULTS]          render a run's results as one HTML page
//	meshproof schema [-o json|markdown]     print the scenario file's JSON schema or reference
//	meshproof version                       print the version
//
// Every command follows one convention (cli.go): flags anywhere, "-" for
// standard input wherever a file is read, --help exits 0, a wrong command
// line exits 2, an invalid or unreadable input exits 1.
//
// It is a thin layer over the harness packages: `run` is the run library
// (harness/run) without Ginkgo; `make e2e` runs the same library through
// the Ginkgo suite in suites/mtls.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	meshrun "github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
	"golang.org/x/mod/module"
)

const defaultFile = "scenarios.yaml"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `meshproof proves that a service mesh enforces mutual TLS.

Usage:
  meshproof validate [FILE...]              check scenario files (default scenarios.yaml)
  meshproof plan [FILE] [-o text|yaml]      print what a run would do, without a cluster
  meshproof predict [FILE] [-o table|json]  predict each pair's outcome from Istio's rules, without a cluster;
                                            exit 1 when an expect row contradicts them
  meshproof run [FILE] [--reports DIR]      run the scenarios on their clusters; exit 1 when a step fails
  meshproof report [RUN] [-o OUT]           render a run's results and events as one HTML page
  meshproof schema [-o json|markdown]       print the scenario file's JSON schema or reference
  meshproof version                         print the version

FILE may be - for standard input. Flags may come before or after FILE;
'meshproof COMMAND --help' describes a command. Exit status: 0 success,
1 invalid or unreadable input (or a failed check), 2 wrong command line.

'meshproof run' and 'make e2e' run the scenarios (kind clusters need Docker).
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "validate":
		return validate(rest, stdout, stderr)
	case "plan":
		return planCmd(rest, stdout, stderr)
	case "predict":
		return predictCmd(rest, stdout, stderr)
	case "run":
		return runCmd(rest, stdout, stderr)
	case "report":
		return reportCmd(rest, stdout, stderr)
	case "schema":
		return schema(rest, stdout, stderr)
	case "version":
		return versionCmd(rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "meshproof: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// load reads one scenario file ("-" for standard input), printing its
// problems; the exit code says whether it could be used.
func load(path string, stderr io.Writer) (*scenario.Suite, int) {
	data, err := readInput(path)
	if err != nil {
		return nil, unreadable(stderr, path, err)
	}
	s, err := scenario.Load(inputName(path), data)
	var list scenario.ErrorList
	switch {
	case err == nil:
		return s, exitOK
	case errors.As(err, &list):
		for _, e := range list {
			fmt.Fprintln(stderr, e)
		}
	default:
		fmt.Fprintf(stderr, "meshproof: %s: %v\n", inputName(path), err)
	}
	return nil, exitInvalid
}

// fileArg is the one file argument of a command, or the default file.
func fileArg(files []string) string {
	if len(files) == 1 {
		return files[0]
	}
	return defaultFile
}

func validate(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("validate", "[FILE...] [-q]",
		"Checks scenario files (default scenarios.yaml; - reads standard input) and prints\nevery problem with its file:line:col. Exit 1 when a file is invalid or unreadable.",
		-1, stdout, stderr)
	quiet := c.Bool("q", false, "print nothing when the files are valid")
	files, code, ok := c.parse(args)
	if !ok {
		return code
	}
	if len(files) == 0 {
		files = []string{defaultFile}
	}
	code = exitOK
	for _, f := range files {
		s, fc := load(f, stderr)
		code = max(code, fc)
		if s != nil && !*quiet {
			steps := 0
			for _, sc := range s.Scenarios {
				steps += len(sc.Steps)
			}
			fmt.Fprintf(stdout, "%s: valid: %s, %s, %s\n", inputName(f), plural(len(s.Scenarios), "scenario"), plural(steps, "step"), plural(len(s.Clusters), "cluster"))
		}
	}
	return code
}

func planCmd(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("plan", "[FILE] [-o text|yaml] [--run-id ID] [--parallel N]",
		"Prints what a run of FILE (default scenarios.yaml; - reads standard input) would do,\nwithout touching a cluster: the ordered operations, or every object it would apply.\n"+
			"With -o yaml that includes, where meshproof installs Istio, the objects of Istio's Helm\n"+
			"charts rendered with the run's values, from where the run takes the charts (istio.charts,\n"+
			"$MESHPROOF_ISTIO_CHARTS, else Istio's chart repository through meshproof's cache, pulled\n"+
			"into it when missing); a release that cannot be rendered is named with the reason.",
		1, stdout, stderr)
	output := c.String("o", "text", "output format: text (the ordered operations) or yaml (every object meshproof would apply, Istio's charts included)")
	runID := c.String("run-id", "", "run id to label objects with (default: a new one)")
	parallel := c.Int("parallel", plan.DefaultParallel, "plan the schedule of a run with --parallel N")
	files, code, ok := c.parse(args)
	if !ok {
		return code
	}
	file := fileArg(files)
	if *output != "text" && *output != "yaml" {
		return c.usageError("-o must be text or yaml, not %q", *output)
	}
	s, code := load(file, stderr)
	if s == nil {
		return code
	}
	if *runID == "" {
		*runID = ownership.NewRunID(time.Now())
	}
	if *parallel < 1 {
		return c.usageError("--parallel %d: want 1 or more", *parallel)
	}
	// The Istio a run installs, as the run's installer makes it.
	p, err := plan.Build(s, *runID, plan.WithParallel(*parallel), plan.WithIstioCharts(meshrun.IstioCharts))
	if err != nil {
		fmt.Fprintf(stderr, "meshproof plan: %v\n", err)
		return exitInvalid
	}
	if *output == "yaml" {
		// The objects of Istio's charts, from where a run takes them; a
		// release that cannot be rendered (offline, no cache) is named in
		// the YAML with the reason, and said here too.
		if err := p.RenderCharts(context.Background()); err != nil {
			fmt.Fprintf(stderr, "meshproof plan: warning: some of Istio's releases are not rendered (the YAML names them): %v\n", err)
		}
		err = p.WriteYAML(stdout)
	} else {
		err = p.WriteText(stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshproof plan: %v\n", err)
		return exitInvalid
	}
	return exitOK
}

func schema(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("schema", "[-o json|markdown]",
		"Prints the scenario file's JSON schema (what scenarios.schema.json holds) or its\nreference in Markdown (what README.md holds).",
		0, stdout, stderr)
	output := c.String("o", "json", "json (the JSON schema) or markdown (the reference)")
	if _, code, ok := c.parse(args); !ok {
		return code
	}
	switch *output {
	case "json":
		_, _ = stdout.Write(scenario.JSONSchema())
	case "markdown":
		fmt.Fprint(stdout, scenario.Reference())
	default:
		return c.usageError("-o must be json or markdown, not %q", *output)
	}
	return exitOK
}

func versionCmd(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("version", "", "Prints meshproof's version, the Go version it was built with and the scenario apiVersion it reads.", 0, stdout, stderr)
	if _, code, ok := c.parse(args); !ok {
		return code
	}
	fmt.Fprintln(stdout, version())
	return exitOK
}

// version says which meshproof this is: the module version when it was
// installed from a release, else the commit it was built from (the VCS
// stamp go build records), with its date and whether the tree had
// uncommitted changes.
func version() string {
	bi, _ := debug.ReadBuildInfo()
	return versionOf(bi)
}

// versionOf is version from the build info bi (nil when there is none).
func versionOf(bi *debug.BuildInfo) string {
	v := "(devel)"
	goVersion := "unknown"
	if bi != nil {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		vcs := map[string]string{}
		for _, s := range bi.Settings {
			vcs[s.Key] = s.Value
		}
		if rev := vcs["vcs.revision"]; rev != "" && (v == "(devel)" || module.IsPseudoVersion(strings.TrimSuffix(v, "+dirty"))) {
			// A build in a clone: go build stamps a pseudo-version
			// (v0.0.0-<time>-<commit>, +dirty when modified) since Go 1.24
			// where an earlier Go said (devel). The commit says it either way.
			v = "(devel)"
			commit := rev[:min(12, len(rev))]
			if vcs["vcs.time"] != "" {
				commit += " " + vcs["vcs.time"]
			}
			if vcs["vcs.modified"] == "true" {
				commit += ", with uncommitted changes"
			}
			v += " commit " + commit
		}
	}
	return fmt.Sprintf("meshproof %s (%s, scenarios %s)", v, goVersion, scenario.APIVersion)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
