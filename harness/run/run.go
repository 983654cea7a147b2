// Package run is meshproof's main job as a library: the composition root
// that `meshproof run`, the Ginkgo suite behind `make e2e` and any other Go
// program share. A Run sets up every cluster a scenario file uses (cluster,
// leftovers of earlier runs, Istio, the echo image, the fixtures), runs
// scenario steps through the engine, records every observation, event and
// verdict in the run folder, collects diagnostics of what failed, and tears
// down what it created.
//
// The run reaches the outside world through four small seams, so tests can
// drive every path: the cluster provider (e2e-framework's
// support.E2EClusterProvider: kind, an existing cluster, or any provider a
// user already has), the mesh installer, image delivery and the pod
// transport (exec into pods).
//
// Nothing is leaked: a cluster's provider is registered before the cluster
// is created, so Teardown destroys a cluster the run created whether or not
// it was ever reached; Teardown runs whatever failed before it.
package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
	"github.com/onsi/ginkgo/v2/types"
)

// Defaults of the bounds a run keeps.
const (
	// DefaultReachTimeout bounds how long a new or existing cluster's API
	// server may take to answer before setup fails.
	DefaultReachTimeout = 30 * time.Second
	// DefaultLeaseWait bounds how long a run waits for another run on the
	// same cluster to finish before it fails naming that run.
	DefaultLeaseWait = 10 * time.Minute
	// DefaultLeaseDuration is how long a run's Lease outlives the run's
	// last renewal, e.g. after a crash.
	DefaultLeaseDuration = 60 * time.Second
	// DefaultGracePeriod is what an interrupted run allows itself for
	// diagnostics and clean-up before it gives up on them (Ginkgo's own
	// default grace period is the same).
	DefaultGracePeriod = 30 * time.Second
	// DefaultCleanupTimeout bounds each clean-up Execute does (a
	// scenario's policies and namespaces, the teardown), counted from when
	// that clean-up begins: deleting a kind cluster takes seconds,
	// uninstalling Istio from an existing cluster minutes.
	DefaultCleanupTimeout = 10 * time.Minute
	// diagnosticsTimeout bounds diagnostics of one failure in a run that
	// was not interrupted.
	diagnosticsTimeout = 2 * time.Minute
)

// Run is one run of a scenario file. Setup, the scenario and step methods
// and Teardown are called in that order, by Execute or by a test framework
// adapter; Close ends the run folder. A Run is not safe for concurrent use
// by several callers, except its recorder.
type Run struct {
	suite    *scenario.Suite
	o        settings
	folder   *report.Run
	rec      *recorder
	start    time.Time
	clusters map[string]*clusterState
	order    []string // cluster names, in the order they were registered

	// life is the run's own lifetime, from New to Close: what must go on
	// between steps (renewing the cluster's Lease) hangs on it.
	life    context.Context
	endLife context.CancelFunc

	// mu guards what scenarios running at once share: the schedule, their
	// states, the moment of an interrupt.
	mu        sync.Mutex
	sched     *schedule.Schedule
	scenarios map[string]*scenarioState

	interruptedAt time.Time // when the context of a step or setup ended early
	setupErr      error
	tornDown      bool
	closeOnce     sync.Once
	closeErr      error
	logFile       *os.File // the run folder's debug log (report.LogFile)
	// kubeconfigs is where the clusters' kubeconfigs are written
	// (kubeconfigDir); "" until the first cluster is set up.
	kubeconfigs string
}

// New prepares a run of suite: it opens the run folder
// (<reports>/<run id>/) and points <reports>/latest at it. Nothing is
// contacted until Setup. With WithIstioVersion the suite is changed in
// place.
func New(suite *scenario.Suite, opts ...Option) (*Run, error) {
	s := defaultSettings()
	for _, o := range opts {
		o(&s)
	}
	if s.runID == "" {
		s.runID = ownership.NewRunID(time.Now())
	}
	if s.istioVersion != "" {
		OverrideIstioVersion(suite, s.istioVersion)
	}
	if err := engine.Unsupported(suite); err != nil {
		return nil, err
	}
	if len(selected(suite, s.labelFilter, s.scenarioFilter)) == 0 {
		// Before the run folder: a run of nothing leaves none behind and
		// does not move <reports>/latest off the last real run.
		return nil, ErrNothingSelected
	}
	folder, err := report.Open(s.reports, s.runID)
	if err != nil {
		return nil, err
	}
	RouteKubernetesLogs()
	logFile, err := os.OpenFile(folder.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("opening the run's log: %w", err), folder.Close())
	}
	debugLog := slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug})
	s.logger = slog.New(teeHandler{s.logger.Handler(), debugLog})
	r := &Run{suite: suite, o: s, folder: folder, rec: &recorder{to: folder, dataPlane: s.dataPlane}, start: time.Now(), clusters: map[string]*clusterState{},
		scenarios: map[string]*scenarioState{}, logFile: logFile}
	if err := r.writeRunInfo(); err != nil {
		return nil, errors.Join(err, folder.Close(), logFile.Close())
	}
	addKubeLogSink(r, debugLog)
	r.life, r.endLife = context.WithCancel(context.Background())
	r.log().Info("run started", "run", folder.ID, "reports", folder.Dir)
	return r, nil
}

// writeRunInfo writes run.json: the scenarios planned, this run's part of
// them, and its shard, which `meshproof report merge` checks.
func (r *Run) writeRunInfo() error {
	info := report.RunInfo{ID: r.ID(), Suite: r.o.suiteName, Planned: []string{}, Scenarios: []string{}}
	if r.o.shard.Count > 0 {
		info.Shard = r.o.shard.String()
	}
	for _, sc := range r.Planned() {
		info.Planned = append(info.Planned, sc.Name)
	}
	for _, sc := range r.Scenarios() {
		info.Scenarios = append(info.Scenarios, sc.Name)
	}
	return report.WriteRunInfo(r.Dir(), info)
}

// OverrideIstioVersion installs version on every cluster instead of the
// file's (CI's version matrix); an image tag that followed the file's
// version follows the new one.
func OverrideIstioVersion(s *scenario.Suite, version string) {
	for i := range s.Clusters {
		in := &s.Clusters[i].Istio
		if in.Tag == in.Version {
			in.Tag = version
		}
		in.Version = version
	}
}

// SuiteName names the JUnit suite of a run of file, as the Ginkgo suite
// (suites/mtls) names it, so that CI tools see one suite whichever ran it.
func SuiteName(file string) string { return "meshproof mtls (" + file + ")" }

// ID is the run id: the name of the run folder and the value of the run-id
// label on everything the run creates.
func (r *Run) ID() string { return r.folder.ID }

// Dir is the run folder.
func (r *Run) Dir() string { return r.folder.Dir }

// JUnitPath is where the run's JUnit report goes.
func (r *Run) JUnitPath() string { return r.folder.JUnitPath() }

// Scenarios are the scenarios the run runs, in file order: those the
// label filter (and WithScenarioFilter) selects, and of them the shard's
// (WithShard).
func (r *Run) Scenarios() []*scenario.Scenario {
	return r.o.shard.Select(r.suite, r.Planned())
}

// Planned are the scenarios the label filter (and WithScenarioFilter)
// selects, in file order, before a shard takes its part: what the shards
// of one run cover together.
func (r *Run) Planned() []*scenario.Scenario {
	return selected(r.suite, r.o.labelFilter, r.o.scenarioFilter)
}

// ErrNothingSelected is New's error when the label filter selects no
// scenario of the suite: a mistake on the command line, not a run.
var ErrNothingSelected = errors.New("the label filter selects no scenario")

// Select is what a run of suite WithLabelFilter(expr) runs: the scenarios
// the label filter expression selects (every one for ""), in file order,
// before any run exists (a test framework declares its tests from them).
func Select(suite *scenario.Suite, expr string) ([]*scenario.Scenario, error) {
	var s settings
	opt, err := WithLabelFilter(expr)
	if err != nil {
		return nil, err
	}
	opt(&s)
	return selected(suite, s.labelFilter, nil), nil
}

// selected are the scenarios of suite filter (and keep, when set) select,
// in file order.
func selected(suite *scenario.Suite, filter types.LabelFilter, keep func(*scenario.Scenario) bool) []*scenario.Scenario {
	var out []*scenario.Scenario
	for i := range suite.Scenarios {
		sc := &suite.Scenarios[i]
		if (filter == nil || filter(junit.Labels(sc))) && (keep == nil || keep(sc)) {
			out = append(out, sc)
		}
	}
	return out
}

// Shard is the part of the planned scenarios this run runs (WithShard);
// Count is 0 for a run of all of them.
func (r *Run) Shard() schedule.Shard { return r.o.shard }

// Verdicts are the verdicts recorded so far.
func (r *Run) Verdicts() []results.Verdict { return r.rec.verdictList() }

// log is the run's logger, with the cluster an operation is about as an
// attribute when it names one.
func (r *Run) log(cluster ...string) *slog.Logger {
	if len(cluster) == 1 {
		return r.o.logger.With("cluster", cluster[0])
	}
	return r.o.logger
}

// noteInterrupt remembers when the run was first interrupted: what is left
// of the grace period bounds diagnostics and clean-up.
func (r *Run) noteInterrupt(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) && r.interruptedAt.IsZero() {
		r.interruptedAt = time.Now()
	}
}

// interrupted is when the run was first interrupted, zero if never.
func (r *Run) interrupted() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.interruptedAt
}

// BeginScenario prepares a scenario. An isolated one (Schedule) gets its
// own copy of the fixtures it uses, in namespaces named from the run and
// the scenario and written in the ledger first; either way the scenario's
// policies of any earlier attempt are removed, so that it starts from
// Istio's defaults.
func (r *Run) BeginScenario(ctx context.Context, sc *scenario.Scenario) error {
	st, err := r.ready(sc)
	if err != nil {
		return err
	}
	started := time.Now()
	state := &scenarioState{sc: sc}
	isolated := r.isolated(sc)
	if isolated {
		cp, err := r.beginIsolated(ctx, st, sc)
		state.copy = cp // its namespaces go at the end, also after a failure
		if err == nil {
			state.sc = cp.Scenario
		}
		r.setState(sc, state)
		if err != nil {
			return r.beginFailed(ctx, sc, started, err)
		}
		state.engine = st.engine.For(cp.Suite, cp.Scenario)
		where := "in namespaces of its own: " + strings.Join(cp.CopyNamespaces(), ", ")
		r.log(sc.Cluster).Info("scenario", "scenario", sc.Name, "namespaces", strings.Join(cp.CopyNamespaces(), ","), "took", time.Since(started).Round(time.Millisecond))
		r.scenarioEvent(sc, results.EventScenarioStarted, where+", beside others")
	} else {
		state.engine = st.engine.For(r.suite, sc)
		r.setState(sc, state)
		why := r.aloneWhy(sc)
		r.log(sc.Cluster).Info("scenario", "scenario", sc.Name, "alone", why)
		r.scenarioEvent(sc, results.EventScenarioStarted, "alone, on the fixtures' own namespaces: "+why)
	}
	if err := state.engine.RemovePolicies(ctx); err != nil {
		return r.beginFailed(ctx, sc, started, err)
	}
	return nil
}

// beginFailed records why sc could not start as its first step's failure,
// as under Ginkgo (its BeforeAll failing fails the first spec): a scenario
// that could not start is a failure, not a skip.
func (r *Run) beginFailed(ctx context.Context, sc *scenario.Scenario, started time.Time, err error) error {
	r.noteInterrupt(ctx)
	err = fmt.Errorf("preparing scenario %s: %w", sc.Name, err)
	v := engine.Verdict(sc, 0, started, time.Since(started), err)
	v.Diagnostics = r.diagnose(ctx, sc, "begin")
	r.rec.RecordVerdict(v)
	return err
}

// aloneWhy is why sc runs alone, as the schedule says.
func (r *Run) aloneWhy(sc *scenario.Scenario) string {
	for _, p := range r.Schedule().Alone {
		if p.Scenario.Name == sc.Name {
			return p.Alone
		}
	}
	return "not scheduled"
}

func (r *Run) setState(sc *scenario.Scenario, s *scenarioState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.scenarios[sc.Name] = s
}

func (r *Run) state(sc *scenario.Scenario) *scenarioState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.scenarios[sc.Name]
}

// RunStep runs step index of sc, records its verdict and, when it failed,
// collects diagnostics into diagnostics/<scenario>/<step>/.
func (r *Run) RunStep(ctx context.Context, sc *scenario.Scenario, index int) error {
	if _, err := r.ready(sc); err != nil {
		return err
	}
	state := r.state(sc)
	if state == nil || state.engine == nil {
		return fmt.Errorf("scenario %s has not begun: call BeginScenario first", sc.Name)
	}
	step := &sc.Steps[index]
	started := time.Now()
	err := state.engine.RunStep(ctx, state.sc, index)
	took := time.Since(started)
	v := engine.Verdict(sc, index, started, took, err)
	v.EnforcedAfter = state.engine.EnforcedAfter(sc.Name, step.Name)
	if err != nil {
		r.noteInterrupt(ctx)
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
			v.Reason = "interrupted: " + v.Reason
		}
		r.log(sc.Cluster).Error("step failed", "scenario", sc.Name, "step", step.Name, "took", took.Round(time.Millisecond))
		v.Diagnostics = r.diagnose(ctx, sc, step.Name)
	} else {
		r.log(sc.Cluster).Info("step passed", "scenario", sc.Name, "step", step.Name, "took", took.Round(time.Millisecond))
	}
	r.rec.RecordVerdict(v)
	return err
}

// SkipStep records that step index of sc did not run, and why.
func (r *Run) SkipStep(sc *scenario.Scenario, index int, reason string) {
	st := &sc.Steps[index]
	r.rec.RecordVerdict(results.Verdict{Scenario: sc.Name, Step: st.Name, Kind: st.Kind(), Status: results.Skipped,
		Reason: reason, Started: time.Now(), Source: st.Source.Position.String()})
}

// EndScenario removes the scenario's policies and, for an isolated one,
// its namespaces (through the ledger), also after it failed; on the
// fixtures' own namespaces, workloads it moved between data planes go
// back to the file's.
func (r *Run) EndScenario(ctx context.Context, sc *scenario.Scenario) error {
	st := r.clusters[sc.Cluster]
	state := r.state(sc)
	if st == nil || state == nil {
		return nil
	}
	var errs []error
	detail := "its policies removed"
	if state.engine != nil {
		if err := state.engine.RemovePolicies(ctx); err != nil {
			errs = append(errs, err)
		}
		// The fixtures' own namespaces outlive the scenario: workloads it
		// moved between data planes go back to the file's.
		if moved := sc.Moved(); state.copy == nil && len(moved) > 0 {
			if err := state.engine.RestoreDataPlanes(ctx, state.sc); err != nil {
				errs = append(errs, err)
			} else {
				detail += "; " + strings.Join(moved, ", ") + " back on the data planes the file gives"
			}
		}
	}
	if state.copy != nil {
		names := state.copy.CopyNamespaces()
		if err := st.ledger.RemoveNamespaces(ctx, names...); err != nil {
			errs = append(errs, err)
		} else {
			detail += "; namespaces " + strings.Join(names, ", ") + " removed"
			r.log(sc.Cluster).Info("scenario's namespaces removed", "scenario", sc.Name, "namespaces", strings.Join(names, ","))
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.scenarioEvent(sc, results.EventScenarioEnded, "clean-up failed: "+err.Error())
		return fmt.Errorf("cleaning up after scenario %s: %w", sc.Name, err)
	}
	r.scenarioEvent(sc, results.EventScenarioEnded, detail)
	return nil
}

// ready returns the cluster state a scenario runs on, if setup made it.
func (r *Run) ready(sc *scenario.Scenario) (*clusterState, error) {
	st := r.clusters[sc.Cluster]
	switch {
	case r.setupErr != nil:
		return nil, fmt.Errorf("setup failed: %w", r.setupErr)
	case st == nil || st.engine == nil:
		return nil, fmt.Errorf("cluster %s is not set up: call Setup first", sc.Cluster)
	}
	return st, nil
}

// Summary counts a run's verdicts.
type Summary struct {
	Passed, Failed, Skipped int
	// SetupFailed is set when the setup's verdict failed.
	SetupFailed bool
	// Failures are the failed verdicts, the setup first.
	Failures []results.Verdict
}

// Counts are the step counts as the CLI's final line and report.html's
// banner write them: "25 passed, 0 failed, 0 skipped".
func (s Summary) Counts() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", s.Passed, s.Failed, s.Skipped)
}

// OK reports whether nothing failed.
func (s Summary) OK() bool { return s.Failed == 0 && !s.SetupFailed }

// Summary counts the verdicts recorded so far.
func (r *Run) Summary() Summary {
	var s Summary
	for _, v := range r.rec.verdictList() {
		if v.Step == results.SetupStep && v.Scenario == "" {
			if v.Status == results.Failed {
				s.SetupFailed = true
				s.Failures = append([]results.Verdict{v}, s.Failures...)
			}
			continue
		}
		switch v.Status {
		case results.Passed:
			s.Passed++
		case results.Failed:
			s.Failed++
			s.Failures = append(s.Failures, v)
		case results.Skipped:
			s.Skipped++
		}
	}
	return s
}

// Close records a skipped verdict for every selected step that has none
// (setup failed, an earlier step failed, or the run was interrupted), so
// results.json, junit.xml and report.html list every planned step, writes
// junit.xml from the verdicts, then closes the run folder, which renders
// report.html. It is idempotent.
//
// Under Ginkgo, the suite rewrites junit.xml from these verdicts and
// what Ginkgo saw (suites/spec): the same report.
func (r *Run) Close() error {
	r.closeOnce.Do(func() {
		for _, v := range results.NotRun(r.Scenarios(), r.rec.verdictList(), !r.interrupted().IsZero(), time.Now()) {
			r.rec.RecordVerdict(v)
		}
		report := junit.FromVerdicts(r.o.suiteName, r.Scenarios(), r.rec.verdictList(), r.start, time.Since(r.start))
		r.closeErr = errors.Join(junit.Write(report, r.JUnitPath()), r.folder.Close())
		r.endLife()
		removeKubeLogSink(r)
		r.closeErr = errors.Join(r.closeErr, r.logFile.Close())
	})
	return r.closeErr
}

// Execute runs the whole job: Setup, every selected scenario's steps in
// order under the schedule (Start: up to WithParallel scenarios at once;
// after a failed step the scenario's remaining steps are skipped),
// Teardown and Close (which writes junit.xml and report.html). ctx
// ends the run early (the first Ctrl-C); cleanup is the clean-ups' parent (a
// second Ctrl-C cancels it), each bounded by WithCleanupTimeout from when it
// begins, so a run that lasts longer than the bound still cleans up. The error is the first failure of the run's own
// machinery (teardown, the run folder), not of a step: steps' outcomes are
// in the Summary.
func (r *Run) Execute(ctx, cleanup context.Context) (Summary, error) {
	var errs []error
	if r.Setup(ctx) == nil {
		r.Start(ctx, cleanup).Wait()
	}
	teardown, cancel := context.WithTimeout(cleanup, r.o.cleanupTimeout)
	defer cancel()
	if err := r.Teardown(teardown); err != nil {
		errs = append(errs, fmt.Errorf("teardown: %w", err))
	}
	errs = append(errs, r.Close())
	return r.Summary(), errors.Join(errs...)
}

// runScenario runs sc from its beginning to its end, telling p as it goes.
func (r *Run) runScenario(ctx, cleanup context.Context, sc *scenario.Scenario, p *Progress) {
	// A step not run gets its skipped verdict, with the reason, in Close.
	err := r.BeginScenario(ctx, sc)
	p.mark(sc, func(p *scenarioProgress) { closeWith(p.began, &p.beginErr, err) })
	if err == nil {
		for i := range sc.Steps {
			if ctx.Err() != nil {
				break
			}
			err := r.RunStep(ctx, sc, i)
			p.mark(sc, func(p *scenarioProgress) { closeWith(p.steps[i], &p.stepErrs[i], err) })
			if err != nil {
				break
			}
		}
	}
	// Policies and namespaces go even when the run was interrupted: the
	// cleanup context still runs.
	end, cancel := context.WithTimeout(cleanup, r.o.cleanupTimeout)
	defer cancel()
	err = r.EndScenario(end, sc)
	if err != nil {
		r.log(sc.Cluster).Error("ending the scenario failed", "scenario", sc.Name, "error", err)
	}
	p.mark(sc, func(p *scenarioProgress) { closeWith(p.ended, &p.endErr, err) })
}

// recorder keeps the verdicts (for JUnit and the summary) and passes
// everything on to the run folder.
type recorder struct {
	to results.Recorder
	// dataPlane labels what the run's sidecars are (WithDataPlane); an
	// observation that already says otherwise keeps its own.
	dataPlane string
	mu        sync.Mutex
	verdicts  []results.Verdict
	// stepDataPlanes are the labels of each step's observations so far,
	// for its verdict (results.StepDataPlane).
	stepDataPlanes map[stepKey][]string
}

type stepKey struct{ scenario, step string }

func (c *recorder) Record(o results.Observation) {
	if o.DataPlane == "" {
		o.DataPlane = c.dataPlane
	}
	c.mu.Lock()
	k := stepKey{o.Scenario, o.Step}
	if !slices.Contains(c.stepDataPlanes[k], o.DataPlane) {
		if c.stepDataPlanes == nil {
			c.stepDataPlanes = map[stepKey][]string{}
		}
		c.stepDataPlanes[k] = append(c.stepDataPlanes[k], o.DataPlane)
	}
	c.mu.Unlock()
	c.to.Record(o)
}
func (c *recorder) RecordEvent(e results.Event) { c.to.RecordEvent(e) }

// RecordVerdict records v with the data planes that answered its step's
// requests: the one they share, or all of them when they differ (a
// rehearsal's simulated sidecars and real proxyless processes); a step
// without requests gets the run's label.
func (c *recorder) RecordVerdict(v results.Verdict) {
	c.mu.Lock()
	k := stepKey{v.Scenario, v.Step}
	if v.DataPlane == "" {
		v.DataPlane = results.StepDataPlane(c.stepDataPlanes[k])
	}
	if v.DataPlane == "" {
		v.DataPlane = c.dataPlane
	}
	delete(c.stepDataPlanes, k)
	c.verdicts = append(c.verdicts, v)
	c.mu.Unlock()
	c.to.RecordVerdict(v)
}

func (c *recorder) verdictList() []results.Verdict {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.verdicts)
}

// sweepTarget is what deploy.Sweep needs of a reached cluster.
func (st *clusterState) sweepTarget() deploy.Cluster {
	return deploy.Cluster{Discovery: st.discovery, Metadata: st.metadata}
}
