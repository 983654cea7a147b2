package report

import (
	"bytes"
	"cmp"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// Option adjusts the page HTML renders.
type Option func(*htmlOptions)

type htmlOptions struct {
	title           string
	notes           []string
	runDir, pageDir string
}

// Contents is what a run folder holds and the page shows: the probe
// observations and step verdicts of results.json and the events of
// events.json.
type Contents struct {
	Observations []results.Observation
	Events       []results.Event
	Verdicts     []results.Verdict
}

// WithTitle sets the page's title and heading (default "meshproof report").
func WithTitle(title string) Option { return func(o *htmlOptions) { o.title = title } }

// WithNote adds a warning shown at the top of the page, e.g. that the
// results file was cut short by an interrupted run.
func WithNote(note string) Option { return func(o *htmlOptions) { o.notes = append(o.notes, note) } }

// WithLinks makes the page link the files of the run folder runDir: its
// junit.xml, when the file is there, and each failed step's diagnostics
// (Verdict.Diagnostics, relative to the run folder). The links are
// relative to pageDir, the folder the page is written to, so the run
// folder can be moved or archived with its page.
func WithLinks(runDir, pageDir string) Option {
	return func(o *htmlOptions) { o.runDir, o.pageDir = runDir, pageDir }
}

// href is the link from the page to a run-folder-relative path, or "" when
// the page was not told where the run folder is.
func (o htmlOptions) href(rel string) string {
	if o.runDir == "" {
		return ""
	}
	base, err := filepath.Rel(o.pageDir, o.runDir)
	if err != nil {
		base = o.runDir
	}
	return filepath.ToSlash(filepath.Join(base, filepath.FromSlash(rel)))
}

//go:embed html.tmpl
var pageSource string

var pageTemplate = template.Must(template.New("report").Parse(pageSource))

// HTML writes one self-contained page (inline CSS and SVG, no scripts, no
// external assets). It opens with the run's verdict: a pass/fail banner
// counting scenarios and steps passed, failed and skipped (every step with
// a verdict, mtls steps and the setup included), then every failure with
// its whole text and evidence (an expect step's table, a transition's or
// rotation's deadlines, a link to its diagnostics). Then, for every
// scenario and step, the client × server:port matrix of what was observed,
// each cell with its outcome counts and whether they agree with what the
// step expected (Observation.Expected); steps that recorded events also get
// a timeline of every pair with the events as markers, their deadlines
// (EventDeadline) as lines, and the certificate serials seen during a
// rotation.
//
// The output depends only on the set of observations, events and verdicts,
// not on their order, so it can be compared byte for byte.
func HTML(w io.Writer, c Contents, opts ...Option) error {
	o := htmlOptions{title: "meshproof report"}
	for _, opt := range opts {
		opt(&o)
	}
	// Render into memory first: a template error half way must not leave a
	// truncated page in w.
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, buildPage(c, o)); err != nil {
		return fmt.Errorf("render the HTML report: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	if err != nil {
		return fmt.Errorf("write the HTML report: %w", err)
	}
	return nil
}

// WriteHTMLFile renders HTML into path, through a temporary file in the
// same folder that is renamed over path, so path is never left half
// written. The file is 0644 like the rest of the run folder.
func WriteHTMLFile(path string, c Contents, opts ...Option) error {
	var buf bytes.Buffer
	if err := HTML(&buf, c, opts...); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(fileMode); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// The page's view model: everything the template shows, already sorted
// and formatted, so the template only lays it out.
type page struct {
	Title        string
	Notes        []string
	Banner       bannerView
	JUnit        string // link to junit.xml, "" when there is none
	Failures     []failureView
	Observations int
	// Summary says how many observations and events the page draws.
	Summary     string
	AnyExpected bool
	// Setup is the setup's section: its verdict and the phases it
	// recorded; nil when the run recorded neither.
	Setup     *setupView
	Scenarios []scenarioView
}

// setupView is the setup (clusters, Istio, image, fixtures): not a step of
// any scenario, so neither counted among the steps nor drawn as one (it
// probes nothing: no matrix, no timeline), but its phases are listed.
type setupView struct {
	Status     string // "ok", "differs" or "observed" (no verdict)
	StatusText string
	Start, End string
	Duration   string
	Reason     string // the failure, whole
	Events     []eventView
}

// bannerView is the run's verdict in one line and its counts.
type bannerView struct {
	Status    string // "passed", "failed" or "unknown"
	Headline  string // "PASSED", "FAILED", "NO VERDICT"
	Scenarios int
	Steps     int
	Passed    int
	Failed    int
	Skipped   int
	// NoVerdict counts steps that recorded observations or events but no
	// verdict: an interrupted run, or results from before verdicts.
	NoVerdict int
	Setup     string // the setup's status, "" when it recorded no verdict
	// Size is "3 scenarios, 6 steps".
	Size string
}

// failureView is a failed step (or the setup) with its evidence.
type failureView struct {
	Name        string // "scenario / step" or "setup"
	Kind        string
	Anchor      string // the step's section, "" for the setup
	Source      string
	Reason      string
	Table       []tableRowView
	Deadlines   []deadlineView
	Diagnostics string // the path as recorded
	DiagHref    string
	// Failure names a failure of its own kind (results.Verdict.Failure),
	// which goes before every other: "mTLS claimed, plaintext on the wire".
	Failure string
}

type tableRowView struct {
	results.Row
	Differs bool
}

type deadlineView struct {
	Name   string
	At     string
	Offset string // after the step's start
	Met    bool
	Detail string
}

type scenarioView struct {
	Name  string
	ID    string
	Where string // with whom it ran, from its scenario-started event
	Steps []stepView
}

type stepView struct {
	Name         string
	ID           string
	Kind         string
	Source       string
	Start, End   string // UTC times
	Duration     string
	Observations int
	Status       string // "ok", "differs", "skipped" or "observed"
	StatusText   string
	Verdict      string   // the verdict's status, "" when none was recorded
	Reason       string   // a failed or skipped step's text, shown whole
	Evidence     string   // the failure's anchor
	ObservedText string   // what the observations say against their expectations
	Columns      []string // server:port
	Rows         []rowView
	Timeline     *timelineView
	Events       []eventView
}

type rowView struct {
	Client string
	Cells  []cellView
}

type cellView struct {
	From, To string // the client and server:port, for tests and tools
	Probed   bool
	Outcomes []outcomeView
	Verdict  string // "✓ expected mtls", "✗ expected mtls: 3 of 12 differ", "no expectation"
	Status   string // "ok", "differs", "observed" or "empty"
	Label    string // the cell in words, for aria-label and title
	// DataPlane is what answered the cell's requests when it was not the
	// cluster's own data plane ("simulated", "real (proxyless gRPC)"), from
	// its observations' DataPlane; empty on a run on real sidecars.
	DataPlane string
	// Wire counts what the wire witness saw of the cell's requests
	// ("wire: encrypted 6"); empty when no witness watched. Witnessed is
	// set when it saw any of them encrypted or in plaintext, WireLeak when
	// a request reported as mTLS crossed in cleartext.
	Wire      string
	Witnessed bool
	WireLeak  bool
	// DecidedBy names the configuration that decided the cell's requests
	// when a rehearsal's Envoy evaluator decided them
	// (Observation.DecidedBy), the distinct ones joined.
	DecidedBy string
	// Enforced is how long after the mtls step before this step the pair
	// was at its new outcome (Verdict.EnforcedAfter), "" when the step
	// measured none.
	Enforced string
	// Ztunnel sums ztunnel's evidence of an ambient pair's requests
	// ("ztunnel (destination) mutual_tls 6"); empty for other pairs, whose
	// cells it sets apart.
	Ztunnel string
}

type outcomeView struct {
	Class string // mtls, plaintext, fail or other
	Text  string // "mtls 9"
}

type eventView struct {
	Number int
	Time   string
	Offset string
	Kind   string
	Detail string
	Class  string // event-row, with serial-row or deadline-row
}

type timelineView struct {
	Width, Height int
	Label         string // the figure in words
	PlotX0        int
	PlotX1        int
	PlotW         int
	Lanes         []laneView
	Ticks         []tickView
	Markers       []markerView
	Deadlines     []deadlineLineView
	AxisY         int
	MarkerTop     int
	MarkerBottom  int
}

type laneView struct {
	Label    string
	Y        int // top of the lane
	TextY    int
	Segments []segmentView
	Serials  []serialView // the certificate lane only
}

type segmentView struct {
	X, Width string
	Class    string
	Title    string
}

type serialView struct {
	Points string // the diamond
	Number int
	TextX  string
	Title  string
}

type tickView struct {
	X     string
	Label string
}

// deadlineLineView is a deadline drawn across the lanes: solid red when
// missed, dashed green when met.
type deadlineLineView struct {
	X     string
	Met   bool
	Class string
	Label string
	Title string
}

type markerView struct {
	X      string
	Number int
	NumY   int
	Title  string
}

// Timeline geometry, in SVG user units (CSS pixels at 100%).
const (
	tlWidth     = 1200
	tlPlotX0    = 280
	tlPlotX1    = 1180
	tlLaneH     = 16
	tlLaneGap   = 6
	tlTop       = 44 // room for the event numbers
	tlAxisH     = 26
	tlNumberGap = 14 // closer event numbers are staggered
	tlNumRows   = 3
	tlMinSegW   = 3.0
)

// SerialEvent is the event kind a rotation records for each certificate
// serial it sees; such events get their own lane and table.
const SerialEvent = results.EventSerial

type stepKey struct{ scenario, step string }

type stepData struct {
	key     stepKey
	obs     []results.Observation
	events  []results.Event
	verdict *results.Verdict
	first   time.Time
}

func buildPage(c Contents, o htmlOptions) page {
	p := page{Title: o.title, Notes: o.notes, Observations: len(c.Observations),
		Summary: fmt.Sprintf("%s and %s recorded.", plural(len(c.Observations), "probe observation"), plural(len(c.Events), "event"))}
	if o.runDir != "" {
		if fi, err := os.Stat(filepath.Join(o.runDir, JUnitFile)); err == nil && fi.Mode().IsRegular() {
			p.JUnit = o.href(JUnitFile)
		}
	}
	steps := map[stepKey]*stepData{}
	// A zero time (a verdict recorded without its start) does not move a
	// step's start to year 1.
	get := func(k stepKey, t time.Time) *stepData {
		d := steps[k]
		if d == nil {
			d = &stepData{key: k, first: t}
			steps[k] = d
		}
		if !t.IsZero() && (t.Before(d.first) || d.first.IsZero()) {
			d.first = t
		}
		return d
	}
	p.Notes = append(dataPlaneNotes(c), p.Notes...)
	for _, ob := range c.Observations {
		d := get(stepKey{ob.Scenario, ob.Step}, ob.Time)
		d.obs = append(d.obs, ob)
		if ob.Expected != "" {
			p.AnyExpected = true
		}
	}
	var setupEvents []results.Event
	where := map[string]string{}
	for _, e := range c.Events {
		switch {
		case e.Kind == results.EventScenarioStarted:
			where[e.Scenario] = e.Detail
			continue
		case e.Kind == results.EventScenarioEnded:
			continue
		case e.Scenario == "" && e.Step == results.SetupStep:
			setupEvents = append(setupEvents, e)
			continue
		}
		d := get(stepKey{e.Scenario, e.Step}, e.Time)
		d.events = append(d.events, e)
	}
	// Verdicts sorted so that a step recorded twice (it should not be)
	// keeps the same one whatever the input order: the last to start.
	verdicts := slices.Clone(c.Verdicts)
	slices.SortFunc(verdicts, compareVerdict)
	var setup *results.Verdict
	for i := range verdicts {
		v := &verdicts[i]
		if v.Scenario == "" && v.Step == results.SetupStep {
			setup = v
			continue
		}
		get(stepKey{v.Scenario, v.Step}, v.Started).verdict = v
	}

	// Scenarios and steps in the order they ran (first record), names
	// breaking ties, so the order of the input does not matter.
	byScenario := map[string][]*stepData{}
	scenarioFirst := map[string]time.Time{}
	for _, d := range steps {
		s := d.key.scenario
		byScenario[s] = append(byScenario[s], d)
		if t, ok := scenarioFirst[s]; !ok || d.first.Before(t) {
			scenarioFirst[s] = d.first
		}
	}
	names := make([]string, 0, len(byScenario))
	for s := range byScenario {
		names = append(names, s)
	}
	sort.Slice(names, func(i, j int) bool {
		ti, tj := scenarioFirst[names[i]], scenarioFirst[names[j]]
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return names[i] < names[j]
	})
	b := &p.Banner
	if setup != nil {
		b.Setup = string(setup.Status)
		if setup.Status == results.Failed {
			f := buildFailure(*setup, "", "setup", setup.Started, o)
			f.Anchor = "setup"
			p.Failures = append(p.Failures, f)
		}
	}
	if setup != nil || len(setupEvents) > 0 {
		p.Setup = buildSetup(setup, setupEvents)
	}
	for si, s := range names {
		list := byScenario[s]
		sort.Slice(list, func(i, j int) bool {
			if !list[i].first.Equal(list[j].first) {
				return list[i].first.Before(list[j].first)
			}
			return list[i].key.step < list[j].key.step
		})
		sv := scenarioView{Name: s, ID: fmt.Sprintf("scenario-%d", si+1), Where: where[s]}
		for ti, d := range list {
			st := buildStep(d, fmt.Sprintf("%s-step-%d", sv.ID, ti+1))
			b.Steps++
			switch {
			case d.verdict == nil:
				b.NoVerdict++
			case d.verdict.Status == results.Passed:
				b.Passed++
			case d.verdict.Status == results.Skipped:
				b.Skipped++
			default:
				b.Failed++
				f := buildFailure(*d.verdict, st.ID, s+" / "+d.key.step, d.first, o)
				st.Evidence = "failure-" + st.ID
				f.Anchor = st.ID
				p.Failures = append(p.Failures, f)
			}
			sv.Steps = append(sv.Steps, st)
		}
		p.Scenarios = append(p.Scenarios, sv)
	}
	b.Scenarios = len(names)
	b.Size = plural(b.Scenarios, "scenario") + ", " + plural(b.Steps, "step")
	// A request reported as mTLS that crossed in cleartext is the worst
	// there is: such failures come first.
	slices.SortStableFunc(p.Failures, func(a, b failureView) int {
		return cmp.Compare(failureRank(a), failureRank(b))
	})
	switch {
	case b.Failed > 0 || b.Setup == string(results.Failed):
		b.Status, b.Headline = "failed", "FAILED"
	case b.Passed+b.Skipped > 0 && b.NoVerdict == 0 && b.Setup != "":
		b.Status, b.Headline = "passed", "PASSED"
	case b.Passed+b.Skipped > 0 || b.Setup != "":
		b.Status, b.Headline = "unknown", "INCOMPLETE"
	default:
		b.Status, b.Headline = "unknown", "NO VERDICT"
	}
	return p
}

// failureRank puts the wire witness's failures before the others.
func failureRank(f failureView) int {
	if f.Failure == results.FailureWirePlaintext {
		return 0
	}
	return 1
}

// buildSetup is the setup's section from its verdict (nil when it recorded
// none) and the phases it recorded.
func buildSetup(v *results.Verdict, events []results.Event) *setupView {
	slices.SortFunc(events, compareEvent)
	var start, end time.Time
	if v != nil && !v.Started.IsZero() {
		start, end = v.Started, v.Started.Add(v.Duration)
	}
	for _, e := range events {
		if start.IsZero() || e.Time.Before(start) {
			start = e.Time
		}
		end = maxTime(end, e.Time)
	}
	sv := &setupView{Status: "observed", StatusText: "no verdict", Start: formatTime(start), End: formatTime(end), Duration: formatDuration(end.Sub(start))}
	switch {
	case v == nil:
	case v.Status == results.Passed:
		sv.Status, sv.StatusText = "ok", "✓ passed"
	default:
		sv.Status, sv.StatusText, sv.Reason = "differs", "✗ failed", v.Reason
	}
	for i, e := range events {
		sv.Events = append(sv.Events, eventView{Number: i + 1, Time: formatTime(e.Time), Offset: formatOffset(e.Time.Sub(start)),
			Kind: string(e.Kind), Detail: e.Detail, Class: "event-row"})
	}
	return sv
}

// compareVerdict orders verdicts by start, then by name and status.
func compareVerdict(a, b results.Verdict) int {
	return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.Scenario, b.Scenario), cmp.Compare(a.Step, b.Step),
		cmp.Compare(a.Status, b.Status), cmp.Compare(a.Reason, b.Reason))
}

// buildFailure is a failed verdict with its evidence; start is the step's
// first record, for the deadlines' offsets.
func buildFailure(v results.Verdict, id, name string, start time.Time, o htmlOptions) failureView {
	f := failureView{Name: name, Kind: v.Kind, Source: v.Source, Reason: v.Reason, Diagnostics: v.Diagnostics, Failure: v.Failure}
	if id != "" {
		f.Anchor = id
	}
	if v.Diagnostics != "" {
		f.DiagHref = o.href(v.Diagnostics)
	}
	for _, r := range v.Table {
		f.Table = append(f.Table, tableRowView{Row: r, Differs: r.Why != ""})
	}
	for _, d := range v.Deadlines {
		f.Deadlines = append(f.Deadlines, viewDeadline(d, start))
	}
	return f
}

func viewDeadline(d results.Deadline, start time.Time) deadlineView {
	return deadlineView{Name: d.Name, At: formatTime(d.At), Offset: formatOffset(d.At.Sub(start)), Met: d.Met, Detail: d.Detail}
}

// formatOffset is a signed offset from a step's start, "+2.5s".
func formatOffset(d time.Duration) string {
	if d < 0 {
		return "-" + formatDuration(-d)
	}
	return "+" + formatDuration(d)
}

// outcomeLabel names an observation's outcome as the engine's messages do:
// "mtls", "plaintext", "fail (reset)".
func outcomeLabel(o results.Observation) string {
	if o.Result == scenario.ResultFail && o.Reason != "" {
		return "fail (" + o.Reason + ")"
	}
	return string(o.Result)
}

func outcomeClass(r scenario.Result) string {
	switch r {
	case scenario.ResultMTLS, scenario.ResultPlaintext, scenario.ResultFail:
		return string(r)
	}
	return "other"
}

// outcomeRank orders a cell's outcomes: mtls, plaintext, failures, then
// anything else.
func outcomeRank(r scenario.Result) int {
	switch r {
	case scenario.ResultMTLS:
		return 0
	case scenario.ResultPlaintext:
		return 1
	case scenario.ResultFail:
		return 2
	}
	return 3
}

// differs reports whether an observation disagrees with its expectation.
// An expectation of a failure without a reason ("fail", or "fail (any
// reason)" as the engine words it) accepts every failure.
func differs(o results.Observation) bool {
	e := o.Expected
	if e == "" || e == outcomeLabel(o) || e == string(o.Result) {
		return false
	}
	if o.Result == scenario.ResultFail && e == "fail (any reason)" {
		return false
	}
	return true
}

// compareObservation orders observations by time, then by every field, so
// that equal times still sort the same whatever the input order.
func compareObservation(a, b results.Observation) int {
	return cmp.Or(
		a.Time.Compare(b.Time),
		cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To), cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Result, b.Result), cmp.Compare(a.Reason, b.Reason), cmp.Compare(a.Expected, b.Expected),
		cmp.Compare(a.Pod, b.Pod), cmp.Compare(a.ClientID, b.ClientID), cmp.Compare(a.ServerID, b.ServerID),
		cmp.Compare(a.Error, b.Error), cmp.Compare(a.Status, b.Status), cmp.Compare(a.Latency, b.Latency),
	)
}

func compareEvent(a, b results.Event) int {
	return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Detail, b.Detail))
}

type pairKey struct {
	from, to string
	port     int
}

func (k pairKey) target() string { return k.to + ":" + strconv.Itoa(k.port) }

func lessPair(a, b pairKey) bool {
	if a.from != b.from {
		return a.from < b.from
	}
	if a.to != b.to {
		return a.to < b.to
	}
	return a.port < b.port
}

func buildStep(d *stepData, id string) stepView {
	slices.SortFunc(d.obs, compareObservation)
	slices.SortFunc(d.events, compareEvent)
	start, end := d.first, d.first
	for _, o := range d.obs {
		end = maxTime(end, o.Time)
	}
	for _, e := range d.events {
		end = maxTime(end, e.Time)
		if e.Deadline != nil {
			end = maxTime(end, e.Deadline.At)
		}
	}
	if v := d.verdict; v != nil && !v.Started.IsZero() {
		end = maxTime(end, v.Started.Add(v.Duration))
	}
	st := stepView{
		Name: d.key.step, ID: id, Observations: len(d.obs),
		Start: formatTime(start), End: formatTime(end), Duration: formatDuration(end.Sub(start)),
	}
	if v := d.verdict; v != nil {
		st.Kind, st.Source, st.Verdict = v.Kind, v.Source, string(v.Status)
		if v.Status != results.Passed {
			st.Reason = v.Reason
		}
	}

	byPair := map[pairKey][]results.Observation{}
	clients := map[string]bool{}
	targets := map[string]pairKey{} // server:port -> a key holding to and port
	for _, o := range d.obs {
		k := pairKey{o.From, o.To, o.Port}
		byPair[k] = append(byPair[k], o)
		clients[o.From] = true
		targets[k.target()] = pairKey{to: o.To, port: o.Port}
	}
	cols := make([]pairKey, 0, len(targets))
	for _, k := range targets {
		cols = append(cols, k)
	}
	sort.Slice(cols, func(i, j int) bool { return lessPair(cols[i], cols[j]) })
	for _, c := range cols {
		st.Columns = append(st.Columns, c.target())
	}
	rows := sortedKeys(clients)
	differing, expected := 0, 0
	for _, client := range rows {
		row := rowView{Client: client}
		for _, c := range cols {
			k := pairKey{client, c.to, c.port}
			cell := buildCell(k, byPair[k])
			if d.verdict != nil {
				for _, en := range d.verdict.EnforcedAfter {
					if en.From == k.from && en.To == k.to && en.Port == k.port {
						cell.Enforced = enforcedText(en)
						cell.Label += "; " + cell.Enforced
					}
				}
			}
			row.Cells = append(row.Cells, cell)
		}
		st.Rows = append(st.Rows, row)
	}
	for _, o := range d.obs {
		if o.Expected != "" {
			expected++
			if differs(o) {
				differing++
			}
		}
	}
	// Without a verdict (an interrupted run, results from before verdicts)
	// the observations against their expectations are all there is.
	status, text := "observed", ""
	switch {
	case len(d.obs) == 0:
		text = "no observations"
	case differing > 0:
		status = "differs"
		text = fmt.Sprintf("✗ %d of %s differ from the expectation", differing, plural(expected, "expected observation"))
	case expected > 0 && expected == len(d.obs):
		status = "ok"
		text = fmt.Sprintf("✓ all %s as expected", plural(len(d.obs), "observation"))
	case expected > 0:
		status = "ok"
		text = fmt.Sprintf("✓ %s as expected, %d with no expectation", plural(expected, "observation"), len(d.obs)-expected)
	default:
		text = fmt.Sprintf("observed only: none of %s carries an expectation", plural(len(d.obs), "observation"))
	}
	st.ObservedText = text
	switch {
	case d.verdict == nil:
		st.Status, st.StatusText = status, text
	case d.verdict.Status == results.Passed:
		st.Status, st.StatusText = "ok", "✓ passed"
	case d.verdict.Status == results.Skipped:
		st.Status, st.StatusText = "skipped", "skipped"
	default:
		st.Status, st.StatusText = "differs", "✗ failed"
	}

	for i, e := range d.events {
		ev := eventView{Number: i + 1, Time: formatTime(e.Time), Offset: formatOffset(e.Time.Sub(start)), Kind: string(e.Kind), Detail: e.Detail, Class: "event-row"}
		switch {
		case e.Kind == SerialEvent:
			ev.Class += " serial-row"
		case e.Deadline != nil:
			// The event is when the step judged the bound; the bound
			// itself is drawn on the timeline, and named here.
			ev.Class += " deadline-row"
			ev.Detail += " (due at " + formatOffset(e.Deadline.At.Sub(start)) + ")"
		}
		st.Events = append(st.Events, ev)
	}
	if len(d.events) > 0 {
		pairs := make([]pairKey, 0, len(byPair))
		for k := range byPair {
			pairs = append(pairs, k)
		}
		sort.Slice(pairs, func(i, j int) bool { return lessPair(pairs[i], pairs[j]) })
		st.Timeline = buildTimeline(d, pairs, byPair, start, end)
	}
	return st
}

func buildCell(k pairKey, obs []results.Observation) cellView {
	c := cellView{From: k.from, To: k.target()}
	if len(obs) == 0 {
		c.Status = "empty"
		c.Verdict = "not probed"
		c.Label = fmt.Sprintf("%s to %s: not probed in this step", k.from, k.target())
		return c
	}
	c.Probed = true
	type count struct {
		result scenario.Result
		label  string
		n      int
	}
	counts := map[string]*count{}
	expectations := map[string]bool{}
	identities := map[string]bool{}
	errs := map[string]bool{}
	dataPlanes := map[string]bool{}
	decidedBy := map[string]bool{}
	wire := map[string]int{}
	ztunnel := map[string]int{}
	differing, withExpectation := 0, 0
	for _, o := range obs {
		if o.DataPlane != "" {
			dataPlanes[dataPlaneShort(o.DataPlane)] = true
		}
		if o.DecidedBy != "" {
			decidedBy[o.DecidedBy] = true
		}
		if z := o.Ztunnel; z != nil {
			ztunnel[fmt.Sprintf("(%s) %s", z.Reporter, z.SecurityPolicy)]++
		}
		if o.Wire != nil {
			v := o.Wire.Verdict
			if o.Wire.Unavailable {
				v += " (" + o.Wire.Detail + ")"
			}
			wire[v]++
			c.Witnessed = c.Witnessed || o.Wire.Witnessed()
			c.WireLeak = c.WireLeak || o.Result == scenario.ResultMTLS && o.Wire.Verdict == results.WirePlaintext
		}
		l := outcomeLabel(o)
		if counts[l] == nil {
			counts[l] = &count{result: o.Result, label: l}
		}
		counts[l].n++
		if o.Expected != "" {
			withExpectation++
			expectations[o.Expected] = true
			if differs(o) {
				differing++
			}
		}
		if o.Result == scenario.ResultMTLS {
			identities[fmt.Sprintf("%s → %s", orNone(o.ClientID), orNone(o.ServerID))] = true
		}
		if o.Error != "" {
			errs[strings.TrimSpace(o.Error)] = true
		}
	}
	list := make([]*count, 0, len(counts))
	for _, v := range counts {
		list = append(list, v)
	}
	sort.Slice(list, func(i, j int) bool {
		if ri, rj := outcomeRank(list[i].result), outcomeRank(list[j].result); ri != rj {
			return ri < rj
		}
		return list[i].label < list[j].label
	})
	var texts []string
	for _, v := range list {
		text := fmt.Sprintf("%s %d", v.label, v.n)
		c.Outcomes = append(c.Outcomes, outcomeView{Class: outcomeClass(v.result), Text: text})
		texts = append(texts, text)
	}
	want := strings.Join(sortedKeys(expectations), " / ")
	switch {
	case differing > 0:
		c.Status = "differs"
		c.Verdict = fmt.Sprintf("✗ expected %s: %d of %d differ", want, differing, withExpectation)
	case withExpectation > 0:
		c.Status = "ok"
		c.Verdict = "✓ expected " + want
	default:
		c.Status = "observed"
		c.Verdict = "no expectation"
	}
	var label strings.Builder
	fmt.Fprintf(&label, "%s to %s: observed %s; %s", k.from, k.target(), strings.Join(texts, ", "), strings.TrimPrefix(strings.TrimPrefix(c.Verdict, "✓ "), "✗ "))
	if differing > 0 {
		label.WriteString(" (differs)")
	}
	if ids := sortedKeys(identities); len(ids) > 0 {
		fmt.Fprintf(&label, "; identities %s", strings.Join(ids, ", "))
	}
	if dp := sortedKeys(dataPlanes); len(dp) > 0 {
		c.DataPlane = "data plane: " + strings.Join(dp, " / ")
		fmt.Fprintf(&label, "; %s", c.DataPlane)
	}
	if d := sortedKeys(decidedBy); len(d) > 0 {
		c.DecidedBy = "decided by " + strings.Join(d, " | ")
		fmt.Fprintf(&label, "; %s", c.DecidedBy)
	}
	if len(ztunnel) > 0 {
		var parts []string
		for _, v := range sortedKeys(ztunnel) {
			parts = append(parts, fmt.Sprintf("%s %d", v, ztunnel[v]))
		}
		c.Ztunnel = "ztunnel " + strings.Join(parts, ", ")
		fmt.Fprintf(&label, "; ambient, proven by %s", c.Ztunnel)
	}
	if len(wire) > 0 {
		var parts []string
		for _, v := range sortedKeys(wire) {
			parts = append(parts, fmt.Sprintf("%s %d", v, wire[v]))
		}
		c.Wire = "wire: " + strings.Join(parts, ", ")
		fmt.Fprintf(&label, "; %s", c.Wire)
		if c.WireLeak {
			fmt.Fprintf(&label, " (%s)", results.FailureWirePlaintext)
		}
	}
	if e := sortedKeys(errs); len(e) > 0 {
		const shown = 3
		if len(e) > shown {
			e = append(e[:shown], fmt.Sprintf("and %d more", len(e)-shown))
		}
		fmt.Fprintf(&label, "; errors: %s", strings.Join(e, " | "))
	}
	c.Label = label.String()
	return c
}

func buildTimeline(d *stepData, pairs []pairKey, byPair map[pairKey][]results.Observation, start, end time.Time) *timelineView {
	span := end.Sub(start)
	if span <= 0 {
		span = time.Second
	}
	x := func(t time.Time) float64 {
		return tlPlotX0 + float64(t.Sub(start))/float64(span)*(tlPlotX1-tlPlotX0)
	}
	tl := &timelineView{Width: tlWidth, PlotX0: tlPlotX0, PlotX1: tlPlotX1, PlotW: tlPlotX1 - tlPlotX0, MarkerTop: tlTop - 6}
	y := tlTop
	for _, k := range pairs {
		lane := laneView{Label: fmt.Sprintf("%s → %s", k.from, k.target()), Y: y, TextY: y + tlLaneH - 4}
		lane.Segments = segments(k, byPair[k], start, x)
		tl.Lanes = append(tl.Lanes, lane)
		y += tlLaneH + tlLaneGap
	}
	var serialCount int
	for _, e := range d.events {
		if e.Kind == SerialEvent {
			serialCount++
		}
	}
	if serialCount > 0 {
		lane := laneView{Label: "certificate serials", Y: y, TextY: y + tlLaneH - 4}
		mid := y + tlLaneH/2
		for i, e := range d.events {
			if e.Kind != SerialEvent {
				continue
			}
			cx := x(e.Time)
			lane.Serials = append(lane.Serials, serialView{
				Points: fmt.Sprintf("%s,%d %s,%d %s,%d %s,%d", f1(cx), mid-7, f1(cx+6), mid, f1(cx), mid+7, f1(cx-6), mid),
				Number: i + 1,
				TextX:  f1(cx + 8),
				Title:  fmt.Sprintf("%d. +%s %s", i+1, formatDuration(e.Time.Sub(start)), e.Detail),
			})
		}
		tl.Lanes = append(tl.Lanes, lane)
		y += tlLaneH + tlLaneGap
	}
	tl.MarkerBottom = y
	tl.AxisY = y + 4
	tl.Height = y + tlAxisH

	// Event numbers are staggered over a few rows when close together.
	lastX := make([]float64, tlNumRows)
	for i := range lastX {
		lastX[i] = -1e9
	}
	for i, e := range d.events {
		if e.Deadline != nil {
			dl := e.Deadline
			class, met := "deadline deadline-missed", "missed"
			if dl.Met {
				class, met = "deadline deadline-met", "met"
			}
			tl.Deadlines = append(tl.Deadlines, deadlineLineView{
				X: f1(x(dl.At)), Met: dl.Met, Class: class, Label: fmt.Sprintf("%d %s", i+1, met),
				Title: fmt.Sprintf("%d. deadline %s at %s, %s: %s", i+1, dl.Name, formatOffset(dl.At.Sub(start)), met, dl.Detail),
			})
			continue // drawn where the bound is, not where it was judged
		}
		ex := x(e.Time)
		row := 0
		for r := range tlNumRows {
			if ex-lastX[r] >= tlNumberGap {
				row = r
				break
			}
		}
		lastX[row] = ex
		tl.Markers = append(tl.Markers, markerView{
			X: f1(ex), Number: i + 1, NumY: 12 + row*11,
			Title: fmt.Sprintf("%d. +%s %s: %s", i+1, formatDuration(e.Time.Sub(start)), e.Kind, e.Detail),
		})
	}
	// Counted rather than summed: near the largest Duration a sum would
	// overflow and never pass span.
	tick := tickStep(span)
	for i := range span/tick + 1 {
		t := i * tick
		tl.Ticks = append(tl.Ticks, tickView{X: f1(x(start.Add(t))), Label: "+" + formatDuration(t)})
	}
	tl.Label = fmt.Sprintf("Timeline of %s over %s with %s as numbered markers", plural(len(pairs), "pair"), formatDuration(end.Sub(start)), plural(len(tl.Markers), "event"))
	if n := len(tl.Deadlines); n > 0 {
		tl.Label += fmt.Sprintf(" and %s as lines", plural(n, "deadline"))
	}
	return tl
}

// segments merges a pair's consecutive observations with the same outcome
// (and the same agreement with the expectation) into one bar, which runs
// until the next different observation.
func segments(k pairKey, obs []results.Observation, start time.Time, x func(time.Time) float64) []segmentView {
	var out []segmentView
	for i := 0; i < len(obs); {
		j := i + 1
		for j < len(obs) && outcomeLabel(obs[j]) == outcomeLabel(obs[i]) && differs(obs[j]) == differs(obs[i]) {
			j++
		}
		x0 := x(obs[i].Time)
		x1 := x(obs[j-1].Time)
		if j < len(obs) {
			x1 = x(obs[j].Time)
		}
		w := max(x1-x0, tlMinSegW)
		class := "seg seg-" + outcomeClass(obs[i].Result)
		title := fmt.Sprintf("%s → %s: %s ×%d from +%s to +%s", k.from, k.target(), outcomeLabel(obs[i]), j-i,
			formatDuration(obs[i].Time.Sub(start)), formatDuration(obs[j-1].Time.Sub(start)))
		if differs(obs[i]) {
			class += " seg-differs"
			title += fmt.Sprintf(" (differs: expected %s)", obs[i].Expected)
		}
		out = append(out, segmentView{X: f1(x0), Width: f1(w), Class: class, Title: title})
		i = j
	}
	return out
}

// tickStep picks a round axis interval giving at most about ten ticks.
func tickStep(span time.Duration) time.Duration {
	for _, s := range []time.Duration{
		100 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond,
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour,
	} {
		if span/s <= 10 {
			return s
		}
	}
	return span / 10
}

func formatTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") }

// formatDuration keeps durations short: milliseconds at most.
func formatDuration(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// dataPlaneNotes says, at the top of the page, every stand-in for the
// cluster's sidecars that answered the run's requests or decided its
// verdicts (results.Observation.DataPlane), so that nobody reads a
// rehearsal as a run on Envoy.
func dataPlaneNotes(c Contents) []string {
	var labels []string
	add := func(l string) {
		if l != "" && !slices.Contains(labels, l) {
			labels = append(labels, l)
		}
	}
	for _, v := range c.Verdicts {
		// A step answered by several names each (results.StepDataPlane).
		for _, l := range results.DataPlanes(v.DataPlane) {
			if l != results.OwnDataPlane {
				add(l)
			}
		}
	}
	for _, o := range c.Observations {
		add(o.DataPlane)
	}
	notes := make([]string, len(labels))
	for i, l := range labels {
		notes[i] = l
		if dataPlaneShort(l) == "simulated" {
			notes[i] += " (these verdicts do not show what Envoy itself enforces)"
		}
	}
	return notes
}

// dataPlaneShort is the part of a data plane label a matrix cell shows:
// "rehearsal: data plane simulated; istiod v…" is "simulated",
// "rehearsal: data plane real (proxyless gRPC): pilot-agent …" is
// "real (proxyless gRPC)". A label of another shape is shown whole.
func dataPlaneShort(label string) string {
	if strings.Contains(label, "Envoy simulated") {
		return "Envoy simulated on the configuration istiod served"
	}
	if strings.Contains(label, "ztunnel simulated") {
		return "ztunnel simulated on the configuration istiod served"
	}
	_, rest, ok := strings.Cut(label, "data plane ")
	if !ok {
		return label
	}
	if i := strings.IndexAny(rest, ";:"); i >= 0 {
		rest = rest[:i]
	}
	return strings.TrimSpace(rest)
}

// enforcedText is an Enforcement as a cell shows it.
func enforcedText(e results.Enforcement) string {
	if e.Unchanged {
		return "unchanged by " + e.Policies
	}
	return fmt.Sprintf("enforced %s after %s (%s)", formatDuration(e.After), e.Policies, e.By)
}
