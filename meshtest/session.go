package meshtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Reasons of steps that did not run, besides those results.NotRun gives.
const (
	notSelected = "not run: not selected by go test -run"
	shortSkip   = "not run: go test -short skips scenarios labelled slow"
	// SlowLabel marks scenarios that go test -short skips.
	SlowLabel = "slow"
)

// teardownMargin is what teardown leaves before the test's deadline, for
// the test's own end.
const teardownMargin = 5 * time.Second

var (
	errInterrupted = errors.New("go test was interrupted (SIGINT or SIGTERM)")
	errDeadline    = errors.New("the test's deadline (go test -timeout) less the grace period was reached")
)

// session is one run of a scenario file inside a test: Run's or Feature's.
// Its scenarios run as subtests (scenario), one after another.
type session struct {
	file string
	set  settings
	r    *run.Run
	top  *testing.T // the test the run belongs to
	out  *testOutput

	ctx         context.Context // the steps': ends at the deadline less the grace period, or at an interrupt
	stop        context.CancelCauseFunc
	cleanup     context.Context // teardown's: ends shortly before the deadline, or at a second interrupt
	stopCleanup context.CancelFunc
	release     func()

	finished sync.Once

	mu       sync.Mutex
	setUp    bool
	setupErr error
	began    map[string]bool // scenarios whose subtest started
}

// target says which clusters a session's run uses: the run options that
// point it there, after any change to the suite.
type target func(suite *scenario.Suite, logger *slog.Logger, s *session) ([]run.Option, error)

// newSession opens the run of suite (loaded from file) for test t, without
// contacting any cluster: that is done by the first scenario. parent is the
// context the steps' context derives from. t.Cleanup tears the run down.
func newSession(parent context.Context, t *testing.T, file string, suite *scenario.Suite, set settings, where target) (*session, error) {
	if sig := interrupted(); sig != nil {
		t.Skipf("meshproof: not run: go test was interrupted (%v)", sig)
	}
	s := &session{file: file, set: set, top: t, out: &testOutput{}, began: map[string]bool{}}
	popTop := s.out.push(t)
	logger := slog.New(run.NewProgressHandler(s.out))

	opts := []run.Option{run.WithSuiteName(run.SuiteName(file)), run.WithLogger(logger), run.WithGracePeriod(set.gracePeriod),
		run.WithIstioVersion(set.istioVersion)}
	filter, err := run.WithLabelFilter(set.labelFilter)
	if err != nil {
		popTop()
		return nil, err
	}
	reports := set.reports
	if reports == "" {
		reports = t.TempDir()
	}
	opts = append(opts, filter, run.WithReports(reports))
	more, err := where(suite, logger, s)
	if err != nil {
		popTop()
		return nil, err
	}
	r, err := run.New(suite, append(opts, more...)...)
	if errors.Is(err, run.ErrNothingSelected) {
		err = fmt.Errorf("no scenario of %s matches the label filter %q", file, set.labelFilter)
	}
	if err != nil {
		popTop()
		return nil, err
	}
	s.r = r
	t.Logf("meshproof run folder: %s", r.Dir())

	s.ctx, s.stop = context.WithCancelCause(parent)
	s.cleanup, s.stopCleanup = context.WithCancel(context.Background())
	if deadline, ok := t.Deadline(); ok {
		end := deadline.Add(-set.gracePeriod)
		if time.Until(end) <= 0 {
			s.stop(errDeadline)
			s.stopCleanup()
			popTop()
			return nil, errors.Join(fmt.Errorf("go test's -timeout leaves %s, less than the grace period %s that teardown keeps: raise -timeout", time.Until(deadline).Round(time.Second), set.gracePeriod), r.Close())
		}
		// The deadline's own cause, not context.DeadlineExceeded: the run
		// treats it as an interrupt, and bounds diagnostics by the grace
		// period instead of its own longer bound.
		var endSteps, endCleanup context.CancelFunc
		s.ctx, endSteps = context.WithDeadlineCause(s.ctx, end, errDeadline)
		s.cleanup, endCleanup = context.WithDeadline(s.cleanup, deadline.Add(-teardownMargin))
		stop, stopCleanup := s.stop, s.stopCleanup
		s.stop = func(cause error) { stop(cause); endSteps() }
		s.stopCleanup = func() { stopCleanup(); endCleanup() }
	}

	first, second, release := watchSignals()
	s.release = release
	go func() {
		select {
		case <-first:
		case <-s.cleanup.Done():
			return
		}
		s.stop(errInterrupted)
		select {
		case <-second:
		case <-s.cleanup.Done():
			return
		}
		s.stopCleanup()
	}()
	t.Cleanup(func() {
		s.finishOnce()
		popTop()
		s.out.close()
		s.release()
	})
	return s, nil
}

// scenario runs sc as the subtest t: one subtest per step.
func (s *session) scenario(t *testing.T, sc *scenario.Scenario) {
	s.mu.Lock()
	s.began[sc.Name] = true
	s.mu.Unlock()
	if testing.Short() && slices.Contains(sc.Labels, SlowLabel) {
		s.skipScenario(t, sc, shortSkip)
		return
	}
	if err := s.setup(); err != nil || context.Cause(s.ctx) != nil {
		s.skipScenario(t, sc, "")
		return
	}
	pop := s.out.push(t)
	defer pop()

	// A scenario that cannot start fails its first step, as in the report.
	_ = s.r.BeginScenario(s.ctx, sc)
	reported := map[int]bool{} // failed steps a subtest has shown
	next := 0                  // the first step neither run nor skipped
	for i := range sc.Steps {
		t.Run(sc.Steps[i].Name, func(t *testing.T) {
			pop := s.out.push(t)
			defer pop()
			// Steps -run left out run first, in order: the steps after
			// them build on them.
			for ; next < i; next++ {
				s.runOrSkip(sc, next, "runs first: go test -run left it out, and the steps after it build on it")
			}
			next = i + 1
			if j, ok := s.failedBefore(sc, i); ok && !reported[j] {
				reported[j] = true
				s.r.SkipStep(sc, i, s.notRun(sc, i))
				t.Errorf("step %q, which this step follows, failed (go test -run left it out, so it ran first):\n%s", sc.Steps[j].Name, s.failureText(sc, j))
				return
			}
			s.runOrSkip(sc, i, "")
			v, _ := s.verdict(sc, i)
			switch v.Status {
			case results.Failed:
				reported[i] = true
				t.Error(s.failureText(sc, i))
			case results.Skipped:
				t.Skip(v.Reason)
			}
		})
	}
	for ; next < len(sc.Steps); next++ {
		if _, ok := s.verdict(sc, next); !ok {
			s.r.SkipStep(sc, next, notSelected)
		}
	}
	if err := s.r.EndScenario(s.cleanup, sc); err != nil {
		t.Error(err)
	}
}

// setup sets the run up once, for the first scenario that starts, and
// reports a failure on the test the run belongs to.
func (s *session) setup() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.setUp {
		return s.setupErr
	}
	s.setUp = true
	start := time.Now()
	s.setupErr = s.r.Setup(s.ctx)
	if s.setupErr != nil {
		s.top.Errorf("meshproof setup failed after %s:\n%v", time.Since(start).Round(time.Second), s.setupErr)
	}
	return s.setupErr
}

// runOrSkip gives step i of sc its verdict, unless it has one: it runs the
// step, or skips it when an earlier step failed or the run stopped. why,
// when set, is logged before the step runs.
func (s *session) runOrSkip(sc *scenario.Scenario, i int, why string) {
	if _, ok := s.verdict(sc, i); ok {
		return
	}
	if reason := s.notRun(sc, i); reason != "" {
		s.r.SkipStep(sc, i, reason)
		return
	}
	if why != "" {
		s.logf("step %q %s", sc.Steps[i].Name, why)
	}
	_ = s.r.RunStep(s.ctx, sc, i)
}

// skipScenario skips sc's subtest t and records every step of it as not
// run: for reason, or ("") for the reason results.NotRun gives (the setup
// failed, the run stopped).
func (s *session) skipScenario(t *testing.T, sc *scenario.Scenario, reason string) {
	for i := range sc.Steps {
		r := reason
		if r == "" {
			r = s.notRun(sc, i)
		}
		if r == "" {
			r = "not run"
		}
		s.r.SkipStep(sc, i, r)
		if i == 0 {
			reason = r
		}
	}
	t.Skip(reason)
}

// verdict is the verdict of step i of sc, if it has one.
func (s *session) verdict(sc *scenario.Scenario, i int) (results.Verdict, bool) {
	vs := s.r.Verdicts()
	for j := len(vs) - 1; j >= 0; j-- {
		if vs[j].Scenario == sc.Name && vs[j].Step == sc.Steps[i].Name {
			return vs[j], true
		}
	}
	return results.Verdict{}, false
}

// failedBefore is the first step of sc before step i that failed.
func (s *session) failedBefore(sc *scenario.Scenario, i int) (int, bool) {
	for j := range i {
		if v, ok := s.verdict(sc, j); ok && v.Status == results.Failed {
			return j, true
		}
	}
	return 0, false
}

// notRun is why step i of sc must not run ("" when it may), in the words
// of results.NotRun, which the report uses for steps without a verdict.
func (s *session) notRun(sc *scenario.Scenario, i int) string {
	stopped := context.Cause(s.ctx) != nil
	_, failed := s.failedBefore(sc, i)
	if !failed && !stopped && s.setupErr == nil {
		return ""
	}
	for _, v := range results.NotRun([]*scenario.Scenario{sc}, s.r.Verdicts(), stopped, time.Now()) {
		if v.Step == sc.Steps[i].Name {
			return v.Reason
		}
	}
	return "not run"
}

// failureText is how junit.xml words the failure of step i of sc: its
// reason and where the step is written.
func (s *session) failureText(sc *scenario.Scenario, i int) string {
	v, _ := s.verdict(sc, i)
	text := v.Reason
	if v.Source != "" {
		text += junit.SourceNote(v.Source)
	}
	return text
}

// logf writes a progress line into the running test's output.
func (s *session) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// finishOnce is finish, once.
func (s *session) finishOnce() { s.finished.Do(s.finish) }

// finish tears the run down and closes the run folder; scenarios whose
// subtest never started were not selected. It says on the run's test why
// the run stopped early, if it did.
func (s *session) finish() {
	t := s.top
	for _, sc := range s.r.Scenarios() {
		if !s.began[sc.Name] {
			for i := range sc.Steps {
				s.r.SkipStep(sc, i, notSelected)
			}
		}
	}
	switch cause := context.Cause(s.ctx); {
	case errors.Is(cause, errInterrupted):
		t.Errorf("meshproof: %v: the run stopped and tears down what it created", cause)
	case errors.Is(cause, errDeadline):
		deadline, _ := t.Deadline()
		t.Errorf("meshproof: %v: the steps stopped at %s, %s before go test's deadline, to leave time for teardown: give go test a longer -timeout",
			cause, deadline.Add(-s.set.gracePeriod).Format(time.TimeOnly), s.set.gracePeriod)
	}
	s.stop(nil)
	if err := s.r.Teardown(s.cleanup); err != nil {
		t.Errorf("meshproof teardown: %v", err)
		if s.cleanup.Err() != nil {
			for _, line := range s.r.Remains() {
				t.Logf("may be left: %s", line)
			}
		}
	}
	if err := s.r.Close(); err != nil {
		t.Errorf("meshproof: closing the run folder: %v", err)
	}
	s.stopCleanup()
	sum := s.r.Summary()
	where := ""
	if s.set.reports == "" {
		where = " (in the test's temporary directory, removed with it: keep it with meshtest.WithReports)"
	}
	t.Logf("meshproof: %d passed, %d failed, %d skipped; run folder %s%s", sum.Passed, sum.Failed, sum.Skipped, s.r.Dir(), where)
}

// rehearsalTarget rehearses the run on a new local cluster per run, or on
// on, when set.
func rehearsalTarget(on *rehearsal.Cluster) target {
	return func(suite *scenario.Suite, logger *slog.Logger, s *session) ([]run.Option, error) {
		if err := rehearsal.Refuse(suite); err != nil {
			return nil, err
		}
		opts := []rehearsal.Option{rehearsal.WithLogger(logger), rehearsal.WithBuildLog(s.out)}
		if on != nil {
			if n := len(usedClusters(suite)); n > 1 {
				return nil, fmt.Errorf("%s uses %d clusters; one cluster of the environment can stand for one only", s.file, n)
			}
			opts = append(opts, rehearsal.WithCluster(on))
		}
		logger.Info(rehearsal.Label())
		return rehearsal.New(opts...).RunOptions(), nil
	}
}

// usedClusters are the names of the clusters the file's scenarios use.
func usedClusters(suite *scenario.Suite) []string {
	var out []string
	for _, sc := range suite.Scenarios {
		if !slices.Contains(out, sc.Cluster) {
			out = append(out, sc.Cluster)
		}
	}
	return out
}

// useExisting makes the file's one cluster the existing cluster the
// kubeconfig at path reaches through its context kubeContext.
func useExisting(suite *scenario.Suite, file, path, kubeContext string) error {
	if n := len(usedClusters(suite)); n > 1 {
		return fmt.Errorf("%s uses %d clusters; an existing cluster can stand for one only", file, n)
	}
	for i := range suite.Clusters {
		c := &suite.Clusters[i]
		var image *scenario.ImageSource
		if c.Existing != nil {
			image = c.Existing.Image
		}
		c.Provider, c.Kind = scenario.ProviderExisting, nil
		c.Existing = &scenario.ExistingCluster{Kubeconfig: path, Context: kubeContext, Image: image}
	}
	return nil
}
