package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meshproof/meshproof/harness/rehearsal"
	meshrun "github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

const runAbout = `Runs the scenarios of FILE (default scenarios.yaml) on the clusters it
names: creates or reuses kind clusters or uses existing ones, installs
Istio, deploys the fixtures, runs every step and removes what it created.
Writes DIR/<run-id>/{junit.xml,results.json,events.json,report.html,
diagnostics/} and points DIR/latest at it.

With --rehearse every cluster of the file is a local cluster of real parts
(kube-apiserver, etcd, controller-manager, scheduler, kwok for nodes, a
real istiod), built from source on first use and cached: the whole job
runs without Docker, with only the data plane simulated, and every report
says so. Only a run on real sidecars proves that Envoy enforces mTLS.

Scenarios run up to --parallel at once (default %d, for a CI runner of two
cores: most of a scenario's time is spent waiting on probe rounds, observe
windows and certificate renewals). A scenario whose policies touch only its
own namespaces runs in its own copy of the fixtures it uses, in namespaces
named from the run and the scenario; one that changes what every namespace
shares (a mesh-scope PeerAuthentication, a mesh-wide DestinationRule,
rotateRoot, upgrade) runs alone, after the others. meshproof plan shows the
schedule. --parallel 1 runs every scenario on the fixtures' own
namespaces, one after the other, in file order.

--shard i/n runs the i-th of n parts of the selected scenarios (each CI job
of a matrix its own part, on its own cluster); the split depends only on
the scenarios' names and estimated durations, not on their order, and
puts matrix expansions wherever they balance the shards. meshproof report
merge combines the shards' run folders into one. A shard that gets no
scenario says so and passes.

Ctrl-C (or SIGTERM) stops the run and cleans up, still writing JUnit and
results; a second one stops the clean-up and prints what may be left.

Exit status: 0 every step passed, 1 a step or the setup failed (or the file
is invalid or unreadable), 2 the command line is wrong.`

// runCmd is `meshproof run`: the run library without Ginkgo.
func runCmd(args []string, stdout, stderr io.Writer) int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	return runWithSignals(args, stdout, stderr, sigs)
}

func runWithSignals(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	c := newCommandLine("run", "[FILE|-] [--reports DIR] [--label-filter EXPR] [--parallel N] [--shard I/N] [--keep] [--istio-version V] [--rehearse]", fmt.Sprintf(runAbout, meshrun.DefaultParallel), 1, stdout, stderr)
	reports := c.String("reports", "reports", "the folder run folders are written under")
	labelFilter := c.String("label-filter", "", "run only the scenarios whose labels match this Ginkgo label filter, e.g. 'smoke && !slow'")
	keep := c.Bool("keep", false, "leave clusters, Istio and fixtures in place after the run, for debugging")
	istioVersion := c.String("istio-version", "", "install this Istio version on every cluster instead of the file's")
	rehearse := c.Bool("rehearse", false, "rehearse on local clusters of real parts with the data plane simulated (no Docker needed)")
	parallel := c.Int("parallel", meshrun.DefaultParallel, "run up to N scenarios at once, isolated ones in namespaces of their own (1: one after the other, in the fixtures' own namespaces)")
	shardFlag := c.String("shard", "", "run only the I-th of N parts of the selected scenarios, e.g. 1/2 (one CI job each; merge their folders with meshproof report merge)")
	files, code, ok := c.parse(args)
	if !ok {
		return code
	}
	if *parallel < 1 {
		return c.usageError("--parallel %d: want 1 or more", *parallel)
	}
	var shard meshrun.Shard
	if *shardFlag != "" {
		var err error
		if shard, err = meshrun.ParseShard(*shardFlag); err != nil {
			return c.usageError("--shard: %v", err)
		}
	}
	file := fileArg(files)
	filter, err := meshrun.WithLabelFilter(*labelFilter)
	if err != nil {
		return c.usageError("%v", err)
	}
	s, code := load(file, stderr)
	if s == nil {
		return code
	}
	logger := slog.New(meshrun.NewProgressHandler(stdout))
	opts := []meshrun.Option{meshrun.WithReports(*reports), meshrun.WithSuiteName(meshrun.SuiteName(file)), meshrun.WithKeep(*keep), meshrun.WithIstioVersion(*istioVersion), filter,
		meshrun.WithLogger(logger), meshrun.WithParallel(*parallel), meshrun.WithShard(shard)}
	if *rehearse {
		if err := rehearsal.Refuse(s); err != nil {
			fmt.Fprintf(stderr, "meshproof run: %v\n", err)
			return exitInvalid
		}
		opts = append(opts, rehearsal.New(rehearsal.WithLogger(logger), rehearsal.WithBuildLog(stderr)).RunOptions()...)
	}
	r, err := meshrun.New(s, opts...)
	switch {
	case errors.Is(err, meshrun.ErrNothingSelected):
		return c.usageError("no scenario of %s matches --label-filter %q; its scenarios' labels are %s", inputName(file), *labelFilter, labelsOf(s))
	case err != nil:
		fmt.Fprintf(stderr, "meshproof run: %v\n", err)
		return exitInvalid
	}
	if *rehearse {
		logger.Info(rehearsal.Label())
	}
	if shard.Count > 0 {
		if n := len(r.Scenarios()); n == 0 {
			logger.Info(fmt.Sprintf("shard %s gets none of the %d selected scenarios of %s: nothing to run, it passes", shard, len(r.Planned()), file))
		} else {
			logger.Info(fmt.Sprintf("shard %s runs %d of the %d selected scenarios of %s", shard, n, len(r.Planned()), file))
		}
	}

	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	// The clean-ups' parent: only a second signal ends it. Each clean-up
	// has its own bound from when it begins (meshrun.WithCleanupTimeout);
	// a deadline set here would run out during a long run's steps.
	cleanup, stopCleanup := context.WithCancel(context.Background())
	defer stopCleanup()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(stderr, "meshproof run: %v: stopping the run and cleaning up (again to stop the clean-up)\n", sig)
			interrupt()
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			fmt.Fprintf(stderr, "meshproof run: %v: clean-up stopped; what may be left:\n", sig)
			for _, line := range r.Remains() {
				fmt.Fprintf(stderr, "  %s\n", line)
			}
			stopCleanup()
		case <-done:
		}
	}()

	start := time.Now()
	sum, err := r.Execute(ctx, cleanup)
	printSummary(stdout, r, sum, time.Since(start))
	if err != nil {
		fmt.Fprintf(stderr, "meshproof run: %v\n", err)
		return exitInvalid
	}
	if !sum.OK() || ctx.Err() != nil {
		return exitInvalid
	}
	return exitOK
}

func printSummary(w io.Writer, r *meshrun.Run, s meshrun.Summary, took time.Duration) {
	fmt.Fprintln(w)
	for _, v := range s.Failures {
		fmt.Fprintf(w, "FAILED %s\n", v)
		if v.Diagnostics != "" {
			fmt.Fprintf(w, "  diagnostics: %s\n", r.Dir()+string(os.PathSeparator)+v.Diagnostics)
		}
	}
	outcome := "PASSED"
	if !s.OK() {
		outcome = "FAILED"
	}
	setup := ""
	if s.SetupFailed {
		setup = ", setup failed"
	}
	fmt.Fprintf(w, "%s in %s: %s%s\n", outcome, took.Round(time.Second), s.Counts(), setup)
	fmt.Fprintf(w, "run %s: %s (%s)\n", r.ID(), r.Dir(), strings.Join(written(r.Dir()), ", "))
}

// labelsOf lists the labels the scenarios of s carry, for a filter that
// selects none of them.
func labelsOf(s *scenario.Suite) string {
	var labels []string
	for _, sc := range s.Scenarios {
		for _, l := range sc.Labels {
			if !slices.Contains(labels, l) {
				labels = append(labels, l)
			}
		}
	}
	if len(labels) == 0 {
		return "none: it has no labels"
	}
	slices.Sort(labels)
	return strings.Join(labels, ", ")
}

// written lists what the run folder holds, folders with a trailing slash:
// what the run wrote, whatever that was.
func written(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		out = append(out, name)
	}
	return out
}
