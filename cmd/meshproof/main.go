// Command meshproof proves that a service mesh enforces mutual TLS.
//
//	meshproof validate [FILE...]          check scenario files
//	meshproof plan [FILE] [-o text|yaml]  show what a run would do, touching no cluster
//	meshproof schema [-o json|markdown]   print the scenario file's JSON schema or reference
//	meshproof version                     print the version
//
// It is a thin layer over the harness packages; `make e2e` runs the
// scenarios themselves through the Ginkgo suite in suites/mtls.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"time"

	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Exit codes.
const (
	exitOK      = 0
	exitInvalid = 1 // the scenario file has problems
	exitUsage   = 2 // the command line is wrong or a file cannot be read
)

const defaultFile = "scenarios.yaml"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `meshproof proves that a service mesh enforces mutual TLS.

Usage:
  meshproof validate [FILE...]              check scenario files (default scenarios.yaml)
  meshproof plan [FILE] [-o text|yaml]      print what a run would do, without a cluster
  meshproof predict [FILE] [-o table|json]  predict each pair's outcome from Istio's rules, without a cluster
  meshproof report [RESULTS.json] [-o OUT]  render a run's results and events as one HTML page
  meshproof schema [-o json|markdown]       print the scenario file's JSON schema or reference
  meshproof version                         print the version

Run the scenarios with 'make e2e' (needs Go and Docker).
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
	case "report":
		return reportCmd(rest, stdout, stderr)
	case "schema":
		return schema(rest, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version())
		return exitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "meshproof: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// newFlags returns a flag set that reports usage errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fl := flag.NewFlagSet("meshproof "+name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	return fl
}

// load reads one scenario file, printing its problems; the exit code says
// whether it could be used.
func load(path string, stderr io.Writer) (*scenario.Suite, int) {
	s, err := scenario.LoadFile(path)
	var list scenario.ErrorList
	switch {
	case err == nil:
		return s, exitOK
	case errors.As(err, &list):
		for _, e := range list {
			fmt.Fprintln(stderr, e)
		}
		return nil, exitInvalid
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(stderr, "meshproof: %s: no such file\n", path)
	default:
		fmt.Fprintf(stderr, "meshproof: %v\n", err)
	}
	return nil, exitUsage
}

func validate(args []string, stdout, stderr io.Writer) int {
	fl := newFlags("validate", stderr)
	quiet := fl.Bool("q", false, "print nothing when the files are valid")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	files := fl.Args()
	if len(files) == 0 {
		files = []string{defaultFile}
	}
	code := exitOK
	for _, f := range files {
		s, c := load(f, stderr)
		code = max(code, c)
		if s != nil && !*quiet {
			steps := 0
			for _, sc := range s.Scenarios {
				steps += len(sc.Steps)
			}
			fmt.Fprintf(stdout, "%s: valid: %s, %s, %s\n", f, plural(len(s.Scenarios), "scenario"), plural(steps, "step"), plural(len(s.Clusters), "cluster"))
		}
	}
	return code
}

func planCmd(args []string, stdout, stderr io.Writer) int {
	fl := newFlags("plan", stderr)
	output := fl.String("o", "text", "output format: text (the ordered operations) or yaml (every object meshproof would apply)")
	runID := fl.String("run-id", "", "run id to label objects with (default: a new one)")
	files, ok := parseInterleaved(fl, args)
	if !ok {
		return exitUsage
	}
	if len(files) > 1 {
		fmt.Fprintln(stderr, "meshproof plan: takes one scenario file")
		return exitUsage
	}
	file := defaultFile
	if len(files) == 1 {
		file = files[0]
	}
	if *output != "text" && *output != "yaml" {
		fmt.Fprintf(stderr, "meshproof plan: -o must be text or yaml, not %q\n", *output)
		return exitUsage
	}
	s, code := load(file, stderr)
	if s == nil {
		return code
	}
	if *runID == "" {
		*runID = ownership.NewRunID(time.Now())
	}
	p, err := plan.Build(s, *runID)
	if err != nil {
		fmt.Fprintf(stderr, "meshproof plan: %v\n", err)
		return exitInvalid
	}
	if *output == "yaml" {
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
	fl := newFlags("schema", stderr)
	output := fl.String("o", "json", "json (the JSON schema) or markdown (the reference)")
	if err := fl.Parse(args); err != nil {
		return exitUsage
	}
	switch *output {
	case "json":
		_, _ = stdout.Write(scenario.JSONSchema())
	case "markdown":
		fmt.Fprint(stdout, scenario.Reference())
	default:
		fmt.Fprintf(stderr, "meshproof schema: -o must be json or markdown, not %q\n", *output)
		return exitUsage
	}
	return exitOK
}

// parseInterleaved parses flags that may come before or after the
// positional arguments (`plan -o yaml FILE` and `plan FILE -o yaml`): parse,
// take one positional argument, go on parsing what follows it.
func parseInterleaved(fl *flag.FlagSet, args []string) (positional []string, ok bool) {
	rest := args
	for {
		if err := fl.Parse(rest); err != nil {
			return nil, false
		}
		rest = fl.Args()
		if len(rest) == 0 {
			return positional, true
		}
		positional, rest = append(positional, rest[0]), rest[1:]
	}
}

func version() string {
	v := "(devel)"
	goVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		if bi.Main.Version != "" {
			v = bi.Main.Version
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
