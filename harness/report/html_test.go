package report

import (
	"bytes"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/meshproof/meshproof/harness/results"
)

var update = flag.Bool("update", false, "rewrite the golden HTML in testdata")

func render(t *testing.T, c Contents, opts ...Option) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := HTML(&b, c, opts...); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func parse(t *testing.T, page []byte) *html.Node {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(page))
	if err != nil {
		t.Fatalf("the page does not parse as HTML: %v", err)
	}
	return doc
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasClass(n *html.Node, class string) bool {
	return slices.Contains(strings.Fields(attr(n, "class")), class)
}

// findAll returns every element below n (n included) that match accepts.
func findAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

func byTagClass(tag, class string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Data == tag && (class == "" || hasClass(n, class)) }
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return strings.TrimSpace(b.String())
}

func texts(nodes []*html.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, text(n))
	}
	return out
}

// stepSection finds the section of a step by its heading.
func stepSection(t *testing.T, doc *html.Node, step string) *html.Node {
	t.Helper()
	var found []*html.Node
	for _, s := range findAll(doc, byTagClass("section", "step")) {
		if h := findAll(s, byTagClass("h3", "")); len(h) > 0 && strings.HasPrefix(text(h[0]), "Step "+step+" ") {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d sections for step %q, want 1", len(found), step)
	}
	return found[0]
}

func cell(t *testing.T, section *html.Node, from, target string) *html.Node {
	t.Helper()
	cells := findAll(section, func(n *html.Node) bool {
		return n.Data == "td" && attr(n, "data-from") == from && attr(n, "data-target") == target
	})
	if len(cells) != 1 {
		t.Fatalf("%d cells for %s -> %s, want 1", len(cells), from, target)
	}
	return cells[0]
}

func TestHTMLMatrixCells(t *testing.T) {
	doc := parse(t, render(t, syntheticRun()))

	for _, tc := range []struct {
		step, from, target string
		outcomes           []string // texts of the outcome badges, in order
		classes            []string // their o-* classes
		status             string   // cell-* class
		verdict            string
	}{
		{"strict-on", "service-a", "service-b:8080", []string{"mtls 3"}, []string{"o-mtls"}, "ok", "✓ expected mtls"},
		{"strict-on", "legacy", "service-b:8080", []string{"fail (reset) 3"}, []string{"o-fail"}, "ok", "✓ expected fail (reset)"},
		{"strict-on", "legacy", "service-b:9090", []string{"fail (reset) 3"}, []string{"o-fail"}, "ok", "✓ expected fail (any reason)"},
		{"port-exception", "legacy", "service-b:9090", []string{"plaintext 3", "fail (timeout) 1"}, []string{"o-plaintext", "o-fail"}, "differs", "✗ expected fail (reset): 4 of 4 differ"},
		{"port-exception", "service-a", "service-b:9090", nil, nil, "empty", "not probed"},
		{"migrate", "legacy", "service-b:8080", []string{"plaintext 10", "fail (reset) 10"}, []string{"o-plaintext", "o-fail"}, "differs", "✗ expected fail (reset) / plaintext: 2 of 20 differ"},
		{"migrate", "service-a", "service-b:8080", []string{"mtls 20"}, []string{"o-mtls"}, "ok", "✓ expected mtls"},
	} {
		c := cell(t, stepSection(t, doc, tc.step), tc.from, tc.target)
		name := tc.step + ": " + tc.from + " -> " + tc.target
		badges := findAll(c, byTagClass("span", "outcome"))
		if got := texts(badges); !slices.Equal(got, tc.outcomes) {
			t.Errorf("%s: outcomes %q, want %q", name, got, tc.outcomes)
		}
		for i, b := range badges {
			if i < len(tc.classes) && !hasClass(b, tc.classes[i]) {
				t.Errorf("%s: badge %q has class %q, want %s", name, text(b), attr(b, "class"), tc.classes[i])
			}
		}
		if !hasClass(c, "cell-"+tc.status) {
			t.Errorf("%s: cell class %q, want cell-%s", name, attr(c, "class"), tc.status)
		}
		if v := findAll(c, byTagClass("span", "verdict")); len(v) != 1 || text(v[0]) != tc.verdict {
			t.Errorf("%s: verdict %q, want %q", name, texts(v), tc.verdict)
		}
		// The cell reads the same without colour or sight: its label says
		// who, what was observed and whether it matched.
		label := attr(c, "aria-label")
		if label == "" || label != attr(c, "title") {
			t.Errorf("%s: aria-label %q and title %q must be equal and set", name, label, attr(c, "title"))
		}
		if !strings.HasPrefix(label, tc.from+" to "+tc.target+": ") {
			t.Errorf("%s: label %q does not name the pair", name, label)
		}
		for _, o := range tc.outcomes {
			if !strings.Contains(label, o) {
				t.Errorf("%s: label %q lacks %q", name, label, o)
			}
		}
		if (tc.status == "differs") != strings.Contains(label, "(differs)") {
			t.Errorf("%s: label %q and status %s disagree about differing", name, label, tc.status)
		}
	}

	// Rows are clients and columns server:port, both sorted.
	pe := stepSection(t, doc, "port-exception")
	if got := texts(findAll(pe, byTagClass("th", ""))); !slices.Equal(got, []string{"client \\ server:port", "service-b:8080", "service-b:9090", "legacy", "service-a"}) {
		t.Errorf("port-exception headers %q", got)
	}
	// The mTLS cell names the identities it saw.
	if l := attr(cell(t, pe, "service-a", "service-b:8080"), "aria-label"); !strings.Contains(l, "identities "+idA+" → "+idB) {
		t.Errorf("mtls cell label %q lacks the SPIFFE identities", l)
	}
	if l := attr(cell(t, pe, "legacy", "service-b:9090"), "aria-label"); !strings.Contains(l, "errors: read: connection reset by peer") {
		t.Errorf("failing cell label %q lacks the error", l)
	}

	// Step statuses come from the verdicts; the observations against their
	// expectations are told next to them.
	for step, want := range map[string][2]string{
		"strict-policies": {"✓ passed", "(500ms)"},
		"strict-on":       {"✓ passed", "✓ all 12 observations as expected"},
		"port-exception":  {"✗ failed", "✗ 4 of 10 expected observations differ from the expectation"},
		"migrate":         {"✓ passed", "✗ 2 of 40 expected observations differ from the expectation"},
		"rotate-root":     {"✓ passed", "✓ all 16 observations as expected"},
		"check-after":     {"skipped", "(0s)"},
	} {
		s := stepSection(t, doc, step)
		if got := findAll(s, byTagClass("span", "status")); len(got) != 1 || text(got[0]) != want[0] {
			t.Errorf("step %s status %q, want %q", step, texts(got), want[0])
		}
		if m := findAll(s, byTagClass("p", "meta")); len(m) == 0 || !strings.HasSuffix(text(m[0]), want[1]) {
			t.Errorf("step %s meta %q, want it to end in %q", step, texts(m), want[1])
		}
	}
	// A failed step's text is on the page, not in a tooltip, in its section
	// and in the failures at the top.
	if r := findAll(pe, byTagClass("pre", "reason")); len(r) != 1 || !strings.HasPrefix(text(r[0]), `step "port-exception": expectations did not hold`) {
		t.Errorf("port-exception reason %q", texts(r))
	}
	if r := findAll(stepSection(t, doc, "check-after"), byTagClass("pre", "reason")); len(r) != 1 || !strings.Contains(text(r[0]), "skipped") {
		t.Errorf("skipped step reason %q", texts(r))
	}
	nav := findAll(doc, byTagClass("nav", ""))
	if len(nav) != 1 || len(findAll(nav[0], byTagClass("a", ""))) != 1+3+6 {
		t.Errorf("the table of contents does not link the setup, 3 scenarios and 6 steps")
	}
	// Scenarios in the order they ran, not alphabetical.
	if got := texts(findAll(doc, byTagClass("h2", ""))); !slices.Equal(got, []string{"Failures", "Setup ✓ passed", "Scenario strict-mesh", "Scenario permissive-to-strict", "Scenario root-rotation"}) {
		t.Errorf("scenario order %q", got)
	}
	banner := findAll(doc, byTagClass("div", "banner"))
	if len(banner) != 1 || !hasClass(banner[0], "banner-failed") ||
		text(banner[0]) != "FAILED 3 scenarios, 6 steps: 4 passed, 1 failed, 1 skipped; setup passed" {
		t.Errorf("banner %q", texts(banner))
	}
	failures := findAll(doc, byTagClass("div", "failure"))
	if len(failures) != 1 {
		t.Fatalf("%d failures listed, want 1", len(failures))
	}
	if h := findAll(failures[0], byTagClass("h3", "")); len(h) != 1 || text(h[0]) != "strict-mesh / port-exception ✗ failed" {
		t.Errorf("failure heading %q", texts(h))
	}
	rows := findAll(failures[0], byTagClass("tr", "row-differs"))
	if len(rows) != 1 || text(rows[0]) != "legacyservice-b9090fail (reset)fail (timeout) x1fail (timeout) x1, plaintext x3✗ failed with timeout, want reset" {
		t.Errorf("the failure's table marks %q as differing", texts(rows))
	}
	if n := len(findAll(failures[0], byTagClass("tr", "row-ok"))); n != 1 {
		t.Errorf("%d matching table rows, want 1", n)
	}
	// Without WithLinks the diagnostics are named, not linked.
	if a := findAll(failures[0], byTagClass("a", "")); len(a) != 1 || attr(a[0], "href") != "#"+attr(pe, "id") {
		t.Errorf("failure links %q", texts(a))
	}
	if !strings.Contains(text(failures[0]), "diagnostics: diagnostics/strict-mesh/port-exception") {
		t.Error("the failure does not name its diagnostics")
	}
	// Expectations are present, so no note says they are missing.
	if n := findAll(doc, byTagClass("p", "note")); len(n) != 0 {
		t.Errorf("unexpected notes %q", texts(n))
	}
	// Self-contained: nothing is loaded from elsewhere and nothing runs.
	for _, tag := range []string{"script", "link", "img", "iframe"} {
		if n := findAll(doc, byTagClass(tag, "")); len(n) != 0 {
			t.Errorf("the page has %d <%s> elements", len(n), tag)
		}
	}
}

func TestHTMLTimelines(t *testing.T) {
	doc := parse(t, render(t, syntheticRun()))

	// Steps without events have no timeline.
	for _, step := range []string{"strict-on", "port-exception"} {
		if n := findAll(stepSection(t, doc, step), byTagClass("svg", "")); len(n) != 0 {
			t.Errorf("step %s without events has a timeline", step)
		}
	}

	migrate := stepSection(t, doc, "migrate")
	svgs := findAll(migrate, byTagClass("svg", "timeline"))
	if len(svgs) != 1 {
		t.Fatalf("migrate has %d timelines, want 1", len(svgs))
	}
	svg := svgs[0]
	if attr(svg, "role") != "img" || !strings.Contains(attr(svg, "aria-label"), "2 pairs") {
		t.Errorf("timeline role %q, label %q", attr(svg, "role"), attr(svg, "aria-label"))
	}
	lanes := findAll(svg, byTagClass("g", "lane"))
	var laneNames []string
	for _, l := range lanes {
		laneNames = append(laneNames, text(findAll(l, byTagClass("text", ""))[0]))
	}
	if !slices.Equal(laneNames, []string{"legacy → service-b:8080", "service-a → service-b:8080"}) {
		t.Errorf("lanes %q", laneNames)
	}
	// legacy: plaintext as expected, plaintext after the change (differs),
	// then the reset; service-a: one mtls bar.
	legacy := findAll(lanes[0], byTagClass("rect", "seg"))
	var segs []string
	for _, s := range legacy {
		segs = append(segs, attr(s, "class")+" | "+text(s))
	}
	want := []string{
		"seg seg-plaintext | legacy → service-b:8080: plaintext ×8 from +0s to +7s",
		"seg seg-plaintext seg-differs | legacy → service-b:8080: plaintext ×2 from +8s to +9s (differs: expected fail (reset))",
		"seg seg-fail | legacy → service-b:8080: fail (reset) ×10 from +10s to +19s",
	}
	if !slices.Equal(segs, want) {
		t.Errorf("legacy segments:\n%s\nwant:\n%s", strings.Join(segs, "\n"), strings.Join(want, "\n"))
	}
	if n := len(findAll(lanes[1], byTagClass("rect", "seg"))); n != 1 {
		t.Errorf("service-a has %d segments, want 1", n)
	}
	markers := findAll(svg, byTagClass("g", "event"))
	var markerTitles []string
	for _, m := range markers {
		markerTitles = append(markerTitles, texts(findAll(m, byTagClass("title", "")))...)
	}
	if !slices.Equal(markerTitles, []string{
		"1. +7.5s policy-change: applying PeerAuthentication mp-b/default STRICT",
		"2. +10s converged: every pair matched the new policies 2.5s after the change",
	}) {
		t.Errorf("event markers %q", markerTitles)
	}
	if got := texts(findAll(svg, byTagClass("text", "marker-num"))); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("event numbers %q", got)
	}
	rows := findAll(migrate, byTagClass("tr", "event-row"))
	if got := texts(rows); len(got) != 4 || !strings.Contains(got[0], "policy-change") || !strings.Contains(got[1], "converged") {
		t.Errorf("event rows %q", got)
	}
	// The step spans its verdict's 20 seconds: the marker for the change
	// sits where 7.5 of them fall, the deadlines where they are due.
	line := findAll(markers[0], byTagClass("line", "marker"))[0]
	if x := attr(line, "x1"); x != f1(tlPlotX0+7.5/20*(tlPlotX1-tlPlotX0)) {
		t.Errorf("policy-change marker at x=%s", x)
	}
	var deadlines []string
	for _, g := range findAll(svg, byTagClass("g", "deadline-mark")) {
		l := findAll(g, byTagClass("line", ""))[0]
		deadlines = append(deadlines, attr(l, "class")+" x="+attr(l, "x1")+" | "+text(findAll(g, byTagClass("title", ""))[0]))
	}
	if want := []string{
		"deadline deadline-met x=" + f1(tlPlotX0+19.0/20*(tlPlotX1-tlPlotX0)) + " | 3. deadline converged by the end of the window at +19s, met: every pair matched the new policies 2.5s after the change",
		"deadline deadline-met x=" + f1(tlPlotX0+10.5/20*(tlPlotX1-tlPlotX0)) + " | 4. deadline no plaintext after 3s at +10.5s, met: no plaintext request after it",
	}; !slices.Equal(deadlines, want) {
		t.Errorf("deadlines drawn:\n%s\nwant:\n%s", strings.Join(deadlines, "\n"), strings.Join(want, "\n"))
	}
	if got := texts(findAll(migrate, byTagClass("tr", "deadline-row"))); len(got) != 2 || !strings.HasSuffix(got[1], "no plaintext after 3s (met): no plaintext request after it (due at +10.5s)") {
		t.Errorf("deadline rows %q", got)
	}

	rotate := stepSection(t, doc, "rotate-root")
	svgs = findAll(rotate, byTagClass("svg", "timeline"))
	if len(svgs) != 1 {
		t.Fatalf("rotate-root has %d timelines, want 1", len(svgs))
	}
	lanes = findAll(svgs[0], byTagClass("g", "lane"))
	if len(lanes) != 2 || text(findAll(lanes[1], byTagClass("text", ""))[0]) != "certificate serials" {
		t.Fatalf("rotation lanes %q, want a pair and the certificate serials", texts(lanes))
	}
	var serials []string
	for _, p := range findAll(lanes[1], byTagClass("polygon", "serial")) {
		serials = append(serials, text(p))
	}
	if !slices.Equal(serials, []string{
		`1. +0s service-b serves serial 1a2b3c4d (root "Root A")`,
		`5. +16s service-b serves serial 5e6f7a8b (root "Root B")`,
		`7. +28s service-b serves serial 9c0d1e2f (root "Root B")`,
	}) {
		t.Errorf("serial markers %q", serials)
	}
	// One table of events, the serials marked in it; no second table
	// repeating them.
	if got := texts(findAll(rotate, byTagClass("tr", "serial-row"))); len(got) != 3 || !strings.Contains(got[1], "5e6f7a8b") {
		t.Errorf("serial rows %q", got)
	}
	if n := len(findAll(rotate, byTagClass("table", "events"))); n != 1 {
		t.Errorf("rotation has %d event tables, want 1", n)
	}
	if n := len(findAll(rotate, byTagClass("tr", "event-row"))); n != 7 {
		t.Errorf("rotation has %d event rows, want 7", n)
	}
}

// The same observations and events in any order give the same bytes, and
// those bytes are the golden page (go test -run TestHTMLGolden -update).
func TestHTMLGolden(t *testing.T) {
	c := syntheticRun()
	page := render(t, c, WithTitle("meshproof run synthetic"))
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		o, e, v := slices.Clone(c.Observations), slices.Clone(c.Events), slices.Clone(c.Verdicts)
		rng.Shuffle(len(o), func(i, j int) { o[i], o[j] = o[j], o[i] })
		rng.Shuffle(len(e), func(i, j int) { e[i], e[j] = e[j], e[i] })
		rng.Shuffle(len(v), func(i, j int) { v[i], v[j] = v[j], v[i] })
		if again := render(t, Contents{o, e, v}, WithTitle("meshproof run synthetic")); !bytes.Equal(again, page) {
			t.Fatal("shuffled input renders a different page")
		}
	}
	golden := filepath.Join("testdata", "synthetic.golden.html")
	if *update {
		if err := os.WriteFile(golden, page, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./harness/report -run TestHTMLGolden -update to create it)", err)
	}
	if !bytes.Equal(page, want) {
		t.Errorf("the page differs from %s; if the change is intended, run go test ./harness/report -run TestHTMLGolden -update and review the diff", golden)
	}
}

// Everything from the run is text, never markup.
func TestHTMLEscapes(t *testing.T) {
	const evil = `<script>alert(1)</script><img src=x onerror=alert(2)>"'&`
	o := probe(evil, evil, 0, evil, evil, 8080, fail, evil, evil)
	o.Error = evil
	e := event(evil, evil, 0, evil, evil)
	v := results.Verdict{Scenario: evil, Step: evil, Kind: evil, Status: results.Failed, Reason: evil, Diagnostics: evil,
		Table: []results.Row{{From: evil, To: evil, Expected: evil, Why: evil}}, Deadlines: []results.Deadline{{Name: evil, Detail: evil}}}
	page := render(t, Contents{[]results.Observation{o}, []results.Event{e}, []results.Verdict{v}}, WithTitle(evil), WithNote(evil), WithLinks("/run", "/run"))
	doc := parse(t, page)
	for _, tag := range []string{"script", "img"} {
		if n := findAll(doc, byTagClass(tag, "")); len(n) != 0 {
			t.Errorf("hostile names became %d <%s> elements", len(n), tag)
		}
	}
	if bytes.Contains(page, []byte("<script>")) || bytes.Contains(page, []byte("<img")) {
		t.Error("the raw page holds unescaped markup")
	}
	// ...and each reads back as the original text.
	if h := findAll(doc, byTagClass("h1", "")); len(h) != 1 || text(h[0]) != evil {
		t.Errorf("title reads %q", texts(h))
	}
	if h := findAll(doc, byTagClass("h2", "")); len(h) != 2 || text(h[1]) != "Scenario "+evil {
		t.Errorf("scenario heading reads %q", texts(h))
	}
	c := findAll(doc, byTagClass("td", "cell"))
	if len(c) != 1 || attr(c[0], "data-from") != evil || !strings.Contains(attr(c[0], "aria-label"), "errors: "+evil) {
		t.Errorf("cell attributes do not carry the text back")
	}
	rows := findAll(doc, byTagClass("tr", "event-row"))
	if len(rows) != 1 || !strings.Contains(text(rows[0]), evil) {
		t.Errorf("event row %q", texts(rows))
	}
	r := findAll(doc, byTagClass("pre", "reason"))
	if len(r) != 2 || text(r[0]) != evil {
		t.Errorf("reasons %q", texts(r))
	}
	if rows := findAll(doc, byTagClass("tr", "row-differs")); len(rows) != 1 || !strings.Contains(text(rows[0]), evil) {
		t.Errorf("table row %q", texts(rows))
	}
}

func TestHTMLWithoutExpectations(t *testing.T) {
	o := probe("s", "look", 0, "service-a", "service-b", 8080, mtls, "", "")
	doc := parse(t, render(t, Contents{Observations: []results.Observation{o, o}}, WithNote("results.json was cut short")))
	notes := texts(findAll(doc, byTagClass("p", "note")))
	if len(notes) != 2 || !strings.Contains(notes[0], "cut short") || !strings.Contains(notes[1], "observed only") {
		t.Errorf("notes %q, want the given note and one saying there are no expectations", notes)
	}
	c := cell(t, stepSection(t, doc, "look"), "service-a", "service-b:8080")
	if !hasClass(c, "cell-observed") || !strings.Contains(text(c), "mtls 2") || !strings.Contains(text(c), "no expectation") {
		t.Errorf("cell %q class %q", text(c), attr(c, "class"))
	}
	if s := findAll(doc, byTagClass("span", "status-observed")); len(s) != 2 { // nav and heading
		t.Errorf("%d observed-only status badges, want 2", len(s))
	}
}

func TestHTMLEmptyRun(t *testing.T) {
	doc := parse(t, render(t, Contents{}))
	if s := texts(findAll(doc, byTagClass("p", "summary"))); len(s) != 1 || s[0] != "0 probe observations and 0 events recorded." {
		t.Errorf("summary %q", s)
	}
	if b := findAll(doc, byTagClass("div", "banner-unknown")); len(b) != 1 || !strings.HasPrefix(text(b[0]), "NO VERDICT 0 scenarios, 0 steps") {
		t.Errorf("banner %q", texts(b))
	}
	if n := findAll(doc, byTagClass("section", "")); len(n) != 0 {
		t.Errorf("an empty run has %d sections", len(n))
	}
}

// A step with only events (e.g. an upgrade killed before its first probe)
// still shows its timeline.
func TestHTMLStepWithEventsOnly(t *testing.T) {
	doc := parse(t, render(t, Contents{Events: []results.Event{event("s", "upgrade", 0, "upgrade", "Istio 1.29.6 to 1.30.3 (canary)")}}))
	s := stepSection(t, doc, "upgrade")
	if n := findAll(s, byTagClass("g", "event")); len(n) != 1 {
		t.Errorf("%d event markers, want 1", len(n))
	}
	if n := findAll(s, byTagClass("p", "meta")); len(n) < 2 || !strings.Contains(text(n[1]), "No observations") {
		t.Errorf("no note that the step has no observations: %q", texts(n))
	}
}

func BenchmarkHTML(b *testing.B) {
	c := syntheticRun()
	obs, events := c.Observations, c.Events
	// A long transition: 6 pairs probed every 200ms for 5 minutes.
	for i := range 1500 {
		for p := range 6 {
			obs = append(obs, probe("big", "transition", 0+time.Duration(i)*200*time.Millisecond, "client", "server", 8000+p, mtls, "", "mtls"))
		}
	}
	events = append(events, event("big", "transition", time.Minute, "policy-change", "x"))
	b.ReportAllocs()
	for b.Loop() {
		if err := HTML(io.Discard, Contents{obs, events, c.Verdicts}); err != nil {
			b.Fatal(err)
		}
	}
}

// A setup that failed is the run's verdict: the banner says so and the
// failure is listed with its text, though no step ran.
func TestHTMLSetupFailure(t *testing.T) {
	v := results.Verdict{Step: results.SetupStep, Kind: results.SetupStep, Status: results.Failed, Started: runStart,
		Reason: "installing Istio 1.30.3: istiod did not become ready within 5m0s", Diagnostics: "diagnostics/setup"}
	dir := t.TempDir()
	doc := parse(t, render(t, Contents{Verdicts: []results.Verdict{v}}, WithLinks(dir, dir)))
	if b := findAll(doc, byTagClass("div", "banner-failed")); len(b) != 1 || text(b[0]) != "FAILED 0 scenarios, 0 steps: 0 passed, 0 failed, 0 skipped; setup failed" {
		t.Errorf("banner %q", texts(findAll(doc, byTagClass("div", "banner"))))
	}
	f := findAll(doc, byTagClass("div", "failure"))
	if len(f) != 1 || !strings.HasPrefix(text(f[0]), "setup ✗ failed") || !strings.Contains(text(f[0]), v.Reason) {
		t.Fatalf("failures %q", texts(f))
	}
	if a := findAll(f[0], byTagClass("a", "")); len(a) != 2 || attr(a[0], "href") != "#setup" || attr(a[1], "href") != "diagnostics/setup" {
		t.Errorf("setup failure links %q, want the setup's section and its diagnostics", texts(a))
	}
	// No junit.xml in the run folder: no link to one.
	if a := findAll(findAll(doc, byTagClass("div", "banner"))[0], byTagClass("a", "")); len(a) != 0 {
		t.Errorf("the banner links %q without a junit.xml", texts(a))
	}
}

// A transition that let plaintext through after its deadline is red, and
// the missed deadline is drawn where it fell and listed with the failure.
func TestHTMLMissedDeadline(t *testing.T) {
	const sc, step = "permissive-to-strict", "migrate"
	s := time.Second
	var obs []results.Observation
	for i := range 10 {
		r, want := plaintext, "fail (reset)"
		if i < 2 {
			want = "plaintext"
		}
		obs = append(obs, probe(sc, step, time.Duration(i)*s, "legacy", "service-b", 8080, r, "", want))
	}
	missed := results.Deadline{Name: "no plaintext after 2s", At: runStart.Add(4 * s), Met: false,
		Detail: "6 plaintext requests after it: legacy -> service-b:8080 plaintext at +3.0s"}
	v := verdict(sc, step, "transition", 0, 10*s, results.Failed, "6 requests were still accepted in plaintext after the allowed delay")
	v.Deadlines = []results.Deadline{missed}
	c := Contents{
		Observations: obs,
		Events:       []results.Event{event(sc, step, 2*s, "policy-change", "applying STRICT"), deadline(sc, step, 10*s, missed)},
		Verdicts:     []results.Verdict{v},
	}
	doc := parse(t, render(t, c))
	sec := stepSection(t, doc, step)
	if st := findAll(sec, byTagClass("span", "status")); len(st) != 1 || !hasClass(st[0], "status-differs") {
		t.Errorf("status %q", texts(st))
	}
	lines := findAll(sec, byTagClass("line", "deadline-missed"))
	if len(lines) != 1 || attr(lines[0], "x1") != f1(tlPlotX0+4.0/10*(tlPlotX1-tlPlotX0)) {
		t.Fatalf("missed deadlines drawn: %d", len(lines))
	}
	f := findAll(doc, byTagClass("div", "failure"))
	if len(f) != 1 {
		t.Fatalf("%d failures", len(f))
	}
	if rows := findAll(f[0], byTagClass("tr", "deadline-row-missed")); len(rows) != 1 || !strings.Contains(text(rows[0]), "✗ missed") {
		t.Errorf("the failure's deadlines %q", texts(rows))
	}
}

// A run whose requests a stand-in answered says so at the top, once per
// stand-in, whether the label came with observations or verdicts.
func TestHTMLDataPlaneNote(t *testing.T) {
	const label = "rehearsal: data plane simulated; istiod v0.0.0-x"
	o := probe("s", "look", 0, "service-a", "service-b", 8080, mtls, "", "mtls")
	o.DataPlane = label
	v := results.Verdict{Scenario: "s", Step: "look", Kind: "expect", Status: results.Passed, DataPlane: label}
	doc := parse(t, render(t, Contents{Observations: []results.Observation{o, o}, Verdicts: []results.Verdict{v}}))
	notes := texts(findAll(doc, byTagClass("p", "note")))
	if len(notes) != 1 || !strings.Contains(notes[0], label) || !strings.Contains(notes[0], "Envoy") {
		t.Errorf("notes %q, want one saying %q", notes, label)
	}
	doc = parse(t, render(t, Contents{Observations: []results.Observation{probe("s", "look", 0, "service-a", "service-b", 8080, mtls, "", "mtls")}}))
	if notes := texts(findAll(doc, byTagClass("p", "note"))); len(notes) != 0 {
		t.Errorf("a run on a real data plane has notes %q", notes)
	}
}

// Each cell says what answered its requests in a rehearsal, so a pair run
// on the real proxyless data plane reads apart from a simulated one, and
// the real one's note does not claim to be a stand-in for Envoy.
func TestHTMLCellDataPlane(t *testing.T) {
	const (
		simulated = "rehearsal: data plane simulated; istiod v0.0.0-x"
		real      = "rehearsal: data plane real (proxyless gRPC): pilot-agent and grpc-go, istiod v0.0.0-x"
	)
	sim := probe("s", "look", 0, "service-a", "service-b", 8080, mtls, "", "mtls")
	sim.DataPlane = simulated
	grpc := probe("s", "look", 0, "grpc-a", "grpc-b", 7070, mtls, "", "mtls")
	grpc.DataPlane = real
	onEnvoy := probe("s", "look", 0, "legacy", "service-b", 8080, mtls, "", "mtls")
	doc := parse(t, render(t, Contents{Observations: []results.Observation{sim, grpc, onEnvoy}}))
	marks := map[string]string{}
	for _, cell := range findAll(doc, byTagClass("td", "cell")) {
		var mark []string
		for _, m := range findAll(cell, byTagClass("span", "dataplane")) {
			mark = append(mark, strings.Join(texts([]*html.Node{m}), ""))
		}
		marks[attr(cell, "data-from")+"->"+attr(cell, "data-target")] = strings.Join(mark, ",")
	}
	for pair, want := range map[string]string{
		"service-a->service-b:8080": "data plane: simulated",
		"grpc-a->grpc-b:7070":       "data plane: real (proxyless gRPC)",
		"legacy->service-b:8080":    "",
	} {
		if marks[pair] != want {
			t.Errorf("cell %s marked %q, want %q (all: %q)", pair, marks[pair], want, marks)
		}
	}
	notes := texts(findAll(doc, byTagClass("p", "note")))
	if len(notes) != 2 {
		t.Fatalf("notes %q, want one per label", notes)
	}
	for _, n := range notes {
		if strings.Contains(n, real) && strings.Contains(n, "Envoy") {
			t.Errorf("the real data plane's note %q speaks of Envoy", n)
		}
	}
}
