package run

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/deploy"
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/plan"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// DefaultParallel is how many scenarios `meshproof run` and the Ginkgo
// suite run at once unless told otherwise: on a CI runner of two cores most
// of a scenario's time is waiting (probe rounds, observe windows,
// certificate renewals), so four keep the cores busy without making any
// step late.
const DefaultParallel = schedule.DefaultParallel

// scenarioState is what one scenario runs with once it began: its engine,
// and the copy of the fixtures it runs in when it is isolated.
type scenarioState struct {
	engine *engine.Engine
	// copy is the scenario's own fixtures; nil when it runs on the
	// fixtures' own namespaces.
	copy *schedule.Copy
	// sc is the scenario as the engine runs it: the copy's, whose
	// policies point at its own namespaces, or the file's.
	sc *scenario.Scenario
}

// Schedule is how the run starts the selected scenarios: which run
// together, in namespaces of their own, and which run alone, and why. It is
// settled by Setup (a cluster whose fixture namespaces were there before
// the run runs every scenario in them, one at a time); before, it is what
// the file and WithParallel say.
func (r *Run) Schedule() schedule.Schedule {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sched != nil {
		return *r.sched
	}
	return schedule.Build(r.suite, r.Scenarios(), r.o.parallel)
}

// settleSchedule fixes the schedule once every cluster is set up.
func (r *Run) settleSchedule() {
	var opts []schedule.Option
	for _, name := range r.order {
		if why := r.clusters[name].serial; why != "" {
			opts = append(opts, schedule.SerialOn(name, why))
		}
	}
	sch := schedule.Build(r.suite, r.Scenarios(), r.o.parallel, opts...)
	r.mu.Lock()
	r.sched = &sch
	r.mu.Unlock()
	for _, line := range sch.Lines() {
		r.log().Info("schedule: " + line)
	}
}

// isolated reports whether sc runs in namespaces of its own.
func (r *Run) isolated(sc *scenario.Scenario) bool {
	for _, p := range r.Schedule().Together {
		if p.Scenario.Name == sc.Name {
			return true
		}
	}
	return false
}

// sharedFixtures reports whether some selected scenario on cluster runs on
// the fixtures' own namespaces, which setup then deploys.
func (r *Run) sharedFixtures(cluster, serial string) bool {
	if serial != "" {
		return true
	}
	sch := schedule.Build(r.suite, r.Scenarios(), r.o.parallel)
	return slices.ContainsFunc(sch.Alone, func(p schedule.Placement) bool { return p.Scenario.Cluster == cluster })
}

// existingFixtureNamespaces are the fixture namespaces already on the
// cluster before the run deploys anything: the user's (an earlier run's
// were swept and waited for). Copies of them would not be them, so the
// cluster's scenarios then run in them, one at a time.
func (r *Run) existingFixtureNamespaces(ctx context.Context, st *clusterState) ([]string, error) {
	var out []string
	for _, ns := range r.fixtureNamespaces() {
		var got corev1.Namespace
		err := st.kube.Get(ctx, client.ObjectKey{Name: ns}, &got)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, fmt.Errorf("reading namespace %s: %w", ns, err)
		default:
			out = append(out, ns)
		}
	}
	return out, nil
}

// beginIsolated deploys sc's own copy of the fixtures it uses, each
// namespace and object written in the ledger before it is created.
func (r *Run) beginIsolated(ctx context.Context, st *clusterState, sc *scenario.Scenario) (*schedule.Copy, error) {
	cp := schedule.Isolate(r.suite, sc, r.ID())
	c := *st.spec
	if st.mesh != nil && st.mesh.Istio != nil {
		c.Istio.Revision = st.mesh.Istio.Revision() // after a canary upgrade, the new one injects
	}
	objs, err := manifests.Render(plan.CopyFixtureOptions(cp, &c, r.ID(), st.image))
	if err != nil {
		return cp, err
	}
	var rest []client.Object
	for _, o := range objs {
		ns, ok := o.(*corev1.Namespace)
		if !ok {
			rest = append(rest, o)
			continue
		}
		labels := map[string]string{ownership.ScenarioLabel: ownership.LabelValue(sc.Name)}
		for k, v := range ns.Labels {
			if k != ownership.ManagedByLabel && k != ownership.RunIDLabel {
				labels[k] = v
			}
		}
		if _, err := st.ledger.EnsureNamespace(ctx, ns.Name, labels); err != nil {
			return cp, err
		}
	}
	if err := st.ledger.RecordObjects(ctx, rest...); err != nil {
		return cp, err
	}
	if err := deploy.Fixtures(ctx, st.kube, rest, deploy.WithTerminatingTimeout(r.o.terminatingTimeout)); err != nil {
		return cp, fmt.Errorf("deploying the fixtures' copy in %s: %w", strings.Join(cp.CopyNamespaces(), ", "), err)
	}
	return cp, nil
}

// scenarioEvent records a scenario's start or end on the timeline.
func (r *Run) scenarioEvent(sc *scenario.Scenario, kind results.EventKind, detail string) {
	r.rec.RecordEvent(results.Event{Time: time.Now(), Scenario: sc.Name, Kind: kind, Detail: detail})
}

// Progress is a run of the selected scenarios under the schedule, started
// by Start: each may be awaited, scenario by scenario and step by step, as
// the Ginkgo suite reports them.
type Progress struct {
	done   chan struct{}
	cancel context.CancelCauseFunc
	mu     sync.Mutex
	by     map[string]*scenarioProgress
}

type scenarioProgress struct {
	began    chan struct{}
	beginErr error
	steps    []chan struct{}
	stepErrs []error
	ended    chan struct{}
	endErr   error
}

// errNotRun is the outcome of what the schedule never reached: the run was
// interrupted, or an earlier step failed.
var errNotRun = errors.New("not run")

// Start runs the selected scenarios under the schedule in the background:
// up to WithParallel at once, isolated ones each in namespaces of its own
// under the cluster's shared lock, the others alone under its exclusive
// lock. After a failed step a scenario's remaining steps do not run. ctx
// ends it early; cleanup is the parent of each scenario's clean-up, which
// WithCleanupTimeout bounds from when it begins. Call it after Setup
// succeeded.
func (r *Run) Start(ctx, cleanup context.Context) *Progress {
	sch := r.Schedule()
	ctx, cancel := context.WithCancelCause(ctx)
	p := &Progress{done: make(chan struct{}), cancel: cancel, by: map[string]*scenarioProgress{}}
	for _, sc := range r.Scenarios() {
		sp := &scenarioProgress{began: make(chan struct{}), ended: make(chan struct{}),
			steps: make([]chan struct{}, len(sc.Steps)), stepErrs: make([]error, len(sc.Steps))}
		for i := range sp.steps {
			sp.steps[i] = make(chan struct{})
		}
		p.by[sc.Name] = sp
	}
	go func() {
		defer close(p.done)
		defer p.closeRest()
		slots := make(chan struct{}, sch.Parallel)
		var wg sync.WaitGroup
		for _, pl := range sch.Order() {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				break
			}
			// The lock is requested here, in the schedule's order, and
			// waited for in the scenario's goroutine: the isolated
			// scenarios listed before one that runs alone hold it
			// together before that one, however their goroutines start.
			req := r.clusters[pl.Scenario.Cluster].lock.Request(!pl.Isolated)
			wg.Go(func() {
				defer func() { <-slots }()
				release, err := req.Wait(ctx)
				if err != nil {
					return
				}
				defer release()
				r.runScenario(ctx, cleanup, pl.Scenario, p)
			})
		}
		wg.Wait()
	}()
	return p
}

// closeRest closes what never happened, with errNotRun.
func (p *Progress) closeRest() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range p.by {
		closeWith(sp.began, &sp.beginErr, errNotRun)
		for i := range sp.steps {
			closeWith(sp.steps[i], &sp.stepErrs[i], errNotRun)
		}
		closeWith(sp.ended, &sp.endErr, nil)
	}
}

func closeWith(ch chan struct{}, slot *error, err error) {
	select {
	case <-ch:
	default:
		*slot = err
		close(ch)
	}
}

// mark settles what f closes of sc's progress.
func (p *Progress) mark(sc *scenario.Scenario, f func(*scenarioProgress)) {
	if p == nil || p.by[sc.Name] == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p.by[sc.Name])
}

// await waits for ch, or ends the whole run when ctx ends first (an
// interrupt, a test framework's timeout).
func (p *Progress) await(ctx context.Context, ch chan struct{}, slot *error) error {
	select {
	case <-ch:
		p.mu.Lock()
		defer p.mu.Unlock()
		return *slot
	case <-ctx.Done():
		p.cancel(context.Cause(ctx))
		return ctx.Err()
	}
}

func (p *Progress) scenario(sc *scenario.Scenario) (*scenarioProgress, error) {
	sp := p.by[sc.Name]
	if sp == nil {
		return nil, fmt.Errorf("scenario %s is not one the run selected", sc.Name)
	}
	return sp, nil
}

// Began waits until sc began: nil, or why it could not.
func (p *Progress) Began(ctx context.Context, sc *scenario.Scenario) error {
	sp, err := p.scenario(sc)
	if err != nil {
		return err
	}
	return p.await(ctx, sp.began, &sp.beginErr)
}

// Step waits for step index of sc: nil when it passed, its failure, or
// errNotRun.
func (p *Progress) Step(ctx context.Context, sc *scenario.Scenario, index int) error {
	sp, err := p.scenario(sc)
	if err != nil {
		return err
	}
	return p.await(ctx, sp.steps[index], &sp.stepErrs[index])
}

// Ended waits until sc's clean-up is done: nil, or what failed.
func (p *Progress) Ended(ctx context.Context, sc *scenario.Scenario) error {
	sp, err := p.scenario(sc)
	if err != nil {
		return err
	}
	return p.await(ctx, sp.ended, &sp.endErr)
}

// Stop ends the run of scenarios early, as an interrupt does.
func (p *Progress) Stop(cause error) { p.cancel(cause) }

// Wait waits until every scenario ended or was never started.
func (p *Progress) Wait() { <-p.done }
