package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/meshproof/meshproof/harness/report"
)

// exitUnreadable is report's exit code when the results or events cannot
// be read (or the page cannot be written).
const exitUnreadable = 1

// defaultResults is the newest run's results, through the link the run
// folder maintains.
var defaultResults = filepath.Join("reports", report.LatestLink, report.ResultsFile)

// reportCmd renders a run's results.json, and the events.json beside it
// when there is one, into the same page a run writes when it closes. By
// default the page goes next to the results as report.html, replacing the
// one the run wrote (the way to get a page for a run that was killed
// before it could close); -o - writes it to standard output.
func reportCmd(args []string, stdout, stderr io.Writer) int {
	fl := newFlags("report", stderr)
	output := fl.String("o", "", "write the page to `FILE` (- for standard output; default report.html next to the results)")
	files, ok := parseInterleaved(fl, args)
	if !ok {
		return exitUsage
	}
	if len(files) > 1 {
		fmt.Fprintln(stderr, "meshproof report: takes one results file (a run's results.json)")
		return exitUsage
	}
	resultsPath := defaultResults
	if len(files) == 1 {
		resultsPath = files[0]
	}
	dir := filepath.Dir(resultsPath)
	out := *output
	if out == "" {
		out = filepath.Join(dir, report.HTMLFile)
	}

	var opts []report.Option
	obs, err := report.ReadResults(resultsPath)
	switch {
	case errors.Is(err, report.ErrIncomplete):
		// What the run saw before it was killed is still worth showing.
		fmt.Fprintf(stderr, "meshproof report: warning: %v\n", err)
		opts = append(opts, report.WithNote(err.Error()))
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(stderr, "meshproof report: %s does not exist; give the results.json of a run (runs write them under reports/<run-id>/)\n", resultsPath)
		return exitUnreadable
	case err != nil:
		fmt.Fprintf(stderr, "meshproof report: %v\n", err)
		return exitUnreadable
	}
	eventsPath := filepath.Join(dir, report.EventsFile)
	events, err := report.ReadEvents(eventsPath)
	switch {
	case errors.Is(err, report.ErrIncomplete):
		fmt.Fprintf(stderr, "meshproof report: warning: %v\n", err)
		opts = append(opts, report.WithNote(err.Error()))
	case errors.Is(err, fs.ErrNotExist):
		// Runs from before events were recorded, or results copied alone.
		events = nil
	case err != nil:
		fmt.Fprintf(stderr, "meshproof report: %v\n", err)
		return exitUnreadable
	}
	// The same title the run gives its own page, so regenerating a closed
	// run's page reproduces it; through reports/latest, the real run id.
	runDir := dir
	if resolved, err := filepath.EvalSymlinks(dir); err == nil {
		runDir = resolved
	}
	opts = append([]report.Option{report.WithTitle("meshproof run " + filepath.Base(runDir))}, opts...)

	if out == "-" {
		if err := report.HTML(stdout, obs, events, opts...); err != nil {
			fmt.Fprintf(stderr, "meshproof report: %v\n", err)
			return exitUnreadable
		}
		return exitOK
	}
	if err := report.WriteHTMLFile(out, obs, events, opts...); err != nil {
		fmt.Fprintf(stderr, "meshproof report: %v\n", err)
		return exitUnreadable
	}
	fmt.Fprintf(stdout, "wrote %s: %s and %s\n", out, plural(len(obs), "observation"), plural(len(events), "event"))
	return exitOK
}
