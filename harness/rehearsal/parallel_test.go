package rehearsal_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/harness/internal/ledger"
	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/report"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/run"
)

// span is a stretch of time: a scenario's, or a step's.
type span struct {
	scenario, what string
	from, to       time.Time
}

func (a span) overlaps(b span) bool { return a.from.Before(b.to) && b.from.Before(a.to) }

// scenarioSpans are each scenario's time from its scenario-started to its
// scenario-ended event.
func scenarioSpans(t *testing.T, events []results.Event) map[string]span {
	t.Helper()
	out := map[string]span{}
	for _, e := range events {
		s := out[e.Scenario]
		s.scenario, s.what = e.Scenario, "scenario"
		switch e.Kind {
		case results.EventScenarioStarted:
			s.from = e.Time
		case results.EventScenarioEnded:
			s.to = e.Time
		default:
			continue
		}
		out[e.Scenario] = s
	}
	for name, s := range out {
		if s.from.IsZero() || s.to.IsZero() {
			t.Errorf("scenario %s has no start or no end event: %+v", name, s)
		}
	}
	return out
}

// stepSpans are the steps' times, from their verdicts.
func stepSpans(verdicts []results.Verdict) []span {
	var out []span
	for _, v := range verdicts {
		if v.Scenario != "" && v.Status != results.Skipped {
			out = append(out, span{v.Scenario, v.Step, v.Started, v.Started.Add(v.Duration)})
		}
	}
	return out
}

// Isolated scenarios run at the same time, each in namespaces of its own:
// a transition under continuous traffic (a TCP port among its pairs)
// overlaps a rotation whose traffic goes to the same-named server's same
// TCP port, and neither disturbs the other's counts (every TCP connection
// is witnessed as the step expects it, none as someone else's). The
// mesh-wide scenario never overlaps another scenario's step. Each
// isolated scenario's namespaces are removed through the ledger when it
// ends; nothing of the run is left.
func TestIsolatedScenariosRunAtOnce(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	progress := &lines{}
	r := newRunWith(t, c, "testdata/parallel.yaml", lineWatcher{progressLog(t), "\x00", make(chan struct{}), progress}, []run.Option{run.WithParallel(run.DefaultParallel)})
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() {
		t.Fatalf("summary %+v; failed: %q", sum, f.failedCases())
	}
	events, err := report.ReadEvents(filepath.Join(r.Dir(), report.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	scenarios := scenarioSpans(t, events)
	for _, pair := range [][2]string{{"transition", "rotation"}, {"transition", "strict"}, {"rotation", "strict"}} {
		if a, b := scenarios[pair[0]], scenarios[pair[1]]; !a.overlaps(b) {
			t.Errorf("isolated scenarios %s (%s to %s) and %s (%s to %s) did not overlap", a.scenario, a.from.Format(time.TimeOnly), a.to.Format(time.TimeOnly),
				b.scenario, b.from.Format(time.TimeOnly), b.to.Format(time.TimeOnly))
		}
	}
	steps := stepSpans(f.verdicts)
	var transition, rotation span
	for _, s := range steps {
		switch {
		case s.scenario == "transition" && strings.Contains(s.what, "transition"):
			transition = s
		case s.scenario == "rotation" && strings.Contains(s.what, "rotate"):
			rotation = s
		}
	}
	if !transition.overlaps(rotation) {
		t.Errorf("the transition (%s to %s) and the rotation (%s to %s) did not overlap", transition.from.Format(time.TimeOnly), transition.to.Format(time.TimeOnly),
			rotation.from.Format(time.TimeOnly), rotation.to.Format(time.TimeOnly))
	}
	// The mesh-wide scenario ran alone: none of its steps, nor its whole
	// span, overlaps another scenario's.
	mesh := scenarios["mesh-wide"]
	for name, s := range scenarios {
		if name != "mesh-wide" && s.overlaps(mesh) {
			t.Errorf("the mesh-wide scenario (%s to %s) overlapped scenario %s (%s to %s)", mesh.from.Format(time.TimeOnly), mesh.to.Format(time.TimeOnly),
				name, s.from.Format(time.TimeOnly), s.to.Format(time.TimeOnly))
		}
	}
	for _, a := range steps {
		for _, b := range steps {
			if a.scenario == "mesh-wide" && b.scenario != "mesh-wide" && a.overlaps(b) {
				t.Errorf("step %s of the mesh-wide scenario overlapped step %s of %s", a.what, b.what, b.scenario)
			}
		}
	}
	// Counts undisturbed: every TCP observation of the transition and
	// the rotation is one the witness saw as the step's own (never
	// no-witness), and each comes from the scenario's own namespace.
	tcp := 0
	for _, o := range f.observations {
		if o.Scenario != "transition" && o.Scenario != "rotation" {
			continue
		}
		if o.Port == 9000 {
			tcp++
		}
		if o.Result == "fail" && (o.From == "service-a" || strings.Contains(o.Reason, "witness")) {
			t.Errorf("%s/%s: %s -> %s:%d failed (%s): %s", o.Scenario, o.Step, o.From, o.To, o.Port, o.Reason, o.Error)
		}
		if o.ClientID != "" && !strings.Contains(o.ClientID, "/ns/"+schedule.Namespace(r.ID(), o.Scenario, "rehearsal-parallel")+"/") {
			t.Errorf("%s/%s: client identity %s is not of the scenario's own namespace", o.Scenario, o.Step, o.ClientID)
		}
	}
	if tcp == 0 {
		t.Error("no TCP observation in the transition or the rotation")
	}
	// The ledger removed each isolated scenario's namespace when it
	// ended, and says so; none is left.
	data, err := os.ReadFile(filepath.Join(r.Dir(), ledger.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var rec ledger.Record
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	var removed []string
	for _, o := range rec.Removed {
		removed = append(removed, o.Name)
	}
	for _, sc := range []string{"transition", "rotation", "strict"} {
		ns := schedule.Namespace(r.ID(), sc, "rehearsal-parallel")
		if !slices.Contains(removed, ns) {
			t.Errorf("the ledger lists no removal of %s's namespace %s: %v", sc, ns, removed)
		}
		got, err := c.kube.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
		if err == nil && got.DeletionTimestamp == nil {
			t.Errorf("namespace %s of %s is still there", ns, sc)
		}
		if end := scenarios[sc].to; !end.IsZero() && !strings.Contains(progress.String(), "scenario's namespaces removed") {
			t.Errorf("the progress does not say %s's namespaces were removed", sc)
		}
	}
	if !strings.Contains(progress.String(), "mesh-wide") || !strings.Contains(progress.String(), "mesh-scope PeerAuthentication") {
		t.Errorf("the progress does not say why the mesh-wide scenario runs alone")
	}
	f.labelled(t)
}

// A file whose scenarios all change mesh-wide state runs them one at a
// time, on the fixtures' own namespaces, and says why.
func TestMeshScopeScenariosRunOneAtATime(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	progress := &lines{}
	r := newRunWith(t, c, "testdata/mesh-only.yaml", lineWatcher{progressLog(t), "\x00", make(chan struct{}), progress}, []run.Option{run.WithParallel(run.DefaultParallel)})
	if sch := r.Schedule(); len(sch.Together) != 0 || len(sch.Alone) != 2 {
		t.Errorf("schedule:\n%s", sch)
	}
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() {
		t.Fatalf("summary %+v; failed: %q", sum, f.failedCases())
	}
	for _, want := range []string{"every scenario runs alone", "mesh-scope PeerAuthentication", "mesh-wide DestinationRule"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("the progress does not say %q", want)
		}
	}
	events, err := report.ReadEvents(filepath.Join(r.Dir(), report.EventsFile))
	if err != nil {
		t.Fatal(err)
	}
	s := scenarioSpans(t, events)
	if a, b := s["mesh-strict"], s["mesh-dr"]; a.overlaps(b) {
		t.Errorf("mesh-strict (%s to %s) and mesh-dr (%s to %s) overlapped", a.from, a.to, b.from, b.to)
	}
	for _, e := range events {
		if e.Kind == results.EventScenarioStarted && !strings.Contains(e.Detail, "alone") {
			t.Errorf("scenario %s started %q, want alone", e.Scenario, e.Detail)
		}
	}
}
