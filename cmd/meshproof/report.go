package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/meshproof/meshproof/harness/report"
)

// defaultResults is the newest run's results, through the link the run
// folder maintains.
var defaultResults = filepath.Join("reports", report.LatestLink, report.ResultsFile)

// reportCmd renders a run's results.json, and the events.json beside it
// when there is one, into the same page a run writes when it closes. The
// argument is a run folder or its results.json (default: the newest run),
// or - for results on standard input. The page goes next to the results
// as report.html, but never over an existing one unless --force says so
// (the run's own page is evidence); -o FILE writes elsewhere, -o - to
// standard output. The page shows the verdicts results.json holds and
// links the run folder's junit.xml and diagnostics, relative to where it
// goes.
func reportCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "merge" {
		return reportMergeCmd(args[1:], stdout, stderr)
	}
	c := newCommandLine("report", "[RUN|RESULTS|-] [-o FILE|-] [--force]",
		"Renders a run's results.json (and the events.json beside it) into one HTML page.\nRUN is a run folder (default reports/latest), RESULTS its results.json, - reads\nresults from standard input (and writes the page to standard output unless -o says\notherwise). The page goes next to the results as report.html; an existing one is\nkept unless --force or -o names the destination.",
		1, stdout, stderr)
	output := c.String("o", "", "write the page to `FILE` (- for standard output; default report.html next to the results)")
	force := c.Bool("force", false, "replace an existing report.html next to the results")
	files, code, ok := c.parse(args)
	if !ok {
		return code
	}
	resultsPath := defaultResults
	if len(files) == 1 {
		resultsPath = files[0]
	}
	fromStdin := resultsPath == stdinName
	shown := inputName(resultsPath) // the results as the user named them
	if fromStdin {
		spooled, cleanup, err := spoolStdin()
		if err != nil {
			return unreadable(stderr, stdinName, err)
		}
		defer cleanup()
		resultsPath = spooled
		if *output == "" {
			*output = "-"
		}
	} else if info, err := os.Stat(resultsPath); err == nil && info.IsDir() {
		resultsPath = filepath.Join(resultsPath, report.ResultsFile) // a run folder
		shown = resultsPath
	}
	dir := filepath.Dir(resultsPath)
	out := *output
	if out == "" {
		out = filepath.Join(dir, report.HTMLFile)
		if _, err := os.Stat(out); err == nil && !*force {
			fmt.Fprintf(stderr, "meshproof report: %s exists (the page the run wrote); replace it with --force, or write elsewhere with -o FILE (- for standard output)\n", out)
			return exitInvalid
		}
	}

	var opts []report.Option
	obs, verdicts, err := report.ReadResults(resultsPath)
	switch {
	case errors.Is(err, report.ErrIncomplete):
		// What the run saw before it was killed is still worth showing.
		fmt.Fprintf(stderr, "meshproof report: warning: %v\n", err)
		opts = append(opts, report.WithNote(err.Error()))
	case errors.Is(err, fs.ErrNotExist):
		unreadable(stderr, shown, err)
		fmt.Fprintln(stderr, "meshproof report: give a run folder or its results.json (runs write them under reports/<run-id>/)")
		return exitUnreadable
	case err != nil:
		fmt.Fprintf(stderr, "meshproof report: %v\n", err)
		return exitUnreadable
	case len(obs) == 0 && len(verdicts) == 0:
		// A page of nothing looks like a run that proved nothing wrong. (A
		// run whose setup failed has its verdict, which the page shows.)
		warning := fmt.Sprintf("%s holds no observations: the run probed no traffic (did its setup fail?)", shown)
		fmt.Fprintf(stderr, "meshproof report: warning: %s\n", warning)
		opts = append(opts, report.WithNote(warning))
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
	title := "meshproof run " + filepath.Base(runDir)
	if fromStdin {
		title = "meshproof run (results from standard input)"
	}
	opts = append([]report.Option{report.WithTitle(title)}, opts...)
	if !fromStdin {
		// Standard output has no folder: its links are written as
		// report.html has them, relative to the run folder.
		pageDir := dir
		if out != "-" {
			pageDir = filepath.Dir(out)
		}
		if abs, err := filepath.Abs(pageDir); err == nil {
			pageDir = abs
		}
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
		opts = append(opts, report.WithLinks(dir, pageDir))
	}
	contents := report.Contents{Observations: obs, Events: events, Verdicts: verdicts}

	if out == "-" {
		if err := report.HTML(stdout, contents, opts...); err != nil {
			fmt.Fprintf(stderr, "meshproof report: %v\n", err)
			return exitUnreadable
		}
		return exitOK
	}
	if err := report.WriteHTMLFile(out, contents, opts...); err != nil {
		fmt.Fprintf(stderr, "meshproof report: %v\n", err)
		return exitUnreadable
	}
	fmt.Fprintf(stdout, "wrote %s: %s, %s and %s\n", out, plural(len(verdicts), "verdict"), plural(len(obs), "observation"), plural(len(events), "event"))
	return exitOK
}

// spoolStdin copies standard input into results.json in a folder of its
// own (the results are read by path, and no events.json lies beside it);
// cleanup removes the folder.
func spoolStdin() (path string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "meshproof-report-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	path = filepath.Join(dir, report.ResultsFile)
	f, err := os.Create(path)
	if err == nil {
		_, err = io.Copy(f, stdin)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// reportMergeCmd is `meshproof report merge`: the run folders of the
// shards of one run combined into one folder.
func reportMergeCmd(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("report merge", "DIR... [-o OUT]",
		"Combines the run folders of the shards of one run (meshproof run --shard i/n,\none CI job each) into one folder, as if one run had run them all: junit.xml\nwith every planned testcase exactly once, results.json, events.json,\nreport.html, and each shard's diagnostics under shards/<i>/. It refuses folders\nthat are not every shard of one run of one file.",
		-1, stdout, stderr)
	output := c.String("o", filepath.Join("reports", "merged"), "the merged run folder to write (it must not hold a run yet)")
	dirs, code, ok := c.parse(args)
	if !ok {
		return code
	}
	if len(dirs) == 0 {
		return c.usageError("give the shards' run folders")
	}
	info, err := report.Merge(*output, dirs...)
	if err != nil {
		fmt.Fprintf(stderr, "meshproof report merge: %v\n", err)
		return exitInvalid
	}
	fmt.Fprintf(stdout, "merged %s (%s) into %s (junit.xml, results.json, report.html)\n", plural(len(dirs), "run folder"), plural(len(info.Planned), "scenario"), *output)
	return exitOK
}
