package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/scenario"
)

// predictedRow is one element of `meshproof predict -o json`: one cell of
// one step's matrix.
type predictedRow struct {
	Scenario string          `json:"scenario"`
	Step     int             `json:"step"` // 1-based, as in plan and reports
	StepName string          `json:"stepName"`
	From     string          `json:"from"`
	To       string          `json:"to"`
	Port     int             `json:"port"`
	Result   scenario.Result `json:"result"`
	Reason   string          `json:"reason,omitempty"`
	// Rule is the oracle's reasoning: the client-side rule, then the
	// server-side one.
	Rule string `json:"rule"`
	// Asserted says whether the step's expect table has a row for the cell.
	Asserted bool `json:"asserted"`
	// Expected is that row's result and reason, when asserted.
	Expected *expectedCell `json:"expected,omitempty"`
	// Agrees says whether the row agrees with the prediction, when asserted.
	Agrees *bool `json:"agrees,omitempty"`
	// At is where the row was written, when asserted.
	At string `json:"at,omitempty"`
}

// expectedCell is what an expect row asserts for a cell.
type expectedCell struct {
	Result scenario.Result `json:"result"`
	Reason string          `json:"reason,omitempty"`
}

// predictedStep is the oracle's answer for one step of one scenario.
type predictedStep struct {
	scenario *scenario.Scenario
	index    int // 0-based
	preds    []oracle.Prediction
	err      error
}

// cells joins a step's predictions with the rows its expect table writes.
func (st predictedStep) cells() []predictedRow {
	step := &st.scenario.Steps[st.index]
	var written []scenario.Expectation
	if step.Expect != nil && !step.Expect.Auto { // auto rows are the prediction itself
		written = step.Expect.Table
	}
	rows := make([]predictedRow, 0, len(st.preds))
	for _, p := range st.preds {
		r := predictedRow{
			Scenario: st.scenario.Name, Step: st.index + 1, StepName: step.Name,
			From: p.From, To: p.To, Port: p.Port, Result: p.Result, Reason: p.Reason, Rule: p.Why,
		}
		for _, x := range written {
			if x.From == p.From && x.To == p.To && x.Port == p.Port {
				agrees := p.Agrees(x)
				r.Asserted, r.Agrees, r.At = true, &agrees, x.Source.Position.String()
				r.Expected = &expectedCell{Result: x.Result, Reason: x.Reason}
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// contradicts reports whether a cell is asserted and disagrees.
func (r predictedRow) contradicts() bool { return r.Asserted && !*r.Agrees }

func predictCmd(args []string, stdout, stderr io.Writer) int {
	c := newCommandLine("predict", "[FILE] [-o table|json] [--scenario NAME [--step N]]",
		"Predicts, from Istio's rules and without a cluster, the outcome of every client,\nserver and port at every step of FILE (default scenarios.yaml; - reads standard\ninput), and holds each expect row against it. Exit 1 when a row contradicts\nthe prediction or a step cannot be predicted: a CI gate for scenario files.",
		1, stdout, stderr)
	output := c.String("o", "table", "output format: table (a matrix per step) or json (one element per cell, with asserted and agrees)")
	only := c.String("scenario", "", "predict only this scenario (a matrix scenario's name selects all its expansions)")
	stepNumber := c.Int("step", 0, "predict only step `N` (1-based) of the selected scenario")
	files, code, ok := c.parse(args)
	if !ok {
		return code
	}
	file := fileArg(files)
	if *output != "table" && *output != "json" {
		return c.usageError("-o must be table or json, not %q", *output)
	}
	if *stepNumber != 0 && *only == "" {
		return c.usageError("--step needs --scenario: step numbers belong to one scenario")
	}
	s, code := load(file, stderr)
	if s == nil {
		return code
	}
	scenarios := selectScenarios(s, *only)
	if len(scenarios) == 0 {
		var names []string
		for _, sc := range s.Scenarios {
			names = append(names, sc.Name)
		}
		return c.usageError("no scenario named %q in %s; the scenarios are %s", *only, inputName(file), strings.Join(names, ", "))
	}
	var steps []predictedStep
	for _, sc := range scenarios {
		if *stepNumber != 0 && (*stepNumber < 1 || *stepNumber > len(sc.Steps)) {
			return c.usageError("scenario %q has steps 1 to %d; there is no step %d", sc.Name, len(sc.Steps), *stepNumber)
		}
		for i := range sc.Steps {
			if *stepNumber != 0 && i != *stepNumber-1 {
				continue
			}
			preds, err := oracle.Predict(s, sc, i)
			steps = append(steps, predictedStep{scenario: sc, index: i, preds: preds, err: err})
		}
	}
	var err error
	if *output == "json" {
		err = writePredictJSON(stdout, steps)
	} else {
		err = writePredictTable(stdout, s, steps)
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshproof predict: %v\n", err)
		return exitUsage
	}
	// The gate: a step whose outcome the oracle cannot tell, or a cell an
	// expect row asserts against Istio's rules, fails the command.
	code = exitOK
	asserted, contradictions := 0, 0
	for _, st := range steps {
		if st.err != nil {
			fmt.Fprintf(stderr, "meshproof predict: %s step %d %s: %v\n", st.scenario.Name, st.index+1, st.scenario.Steps[st.index].Name, st.err)
			code = exitInvalid
		}
		for _, c := range st.cells() {
			if c.Asserted {
				asserted++
			}
			if c.contradicts() {
				contradictions++
				fmt.Fprintf(stderr, "%s: %s step %d: %s -> %s:%d expects %s, Istio's rules give %s: %s\n",
					c.At, c.Scenario, c.Step, c.From, c.To, c.Port, describeCell(c.Expected.Result, c.Expected.Reason), describeCell(c.Result, c.Reason), c.Rule)
			}
		}
	}
	if contradictions > 0 {
		fmt.Fprintf(stderr, "meshproof predict: %d of %d asserted cells contradict Istio's rules\n", contradictions, asserted)
		code = exitInvalid
	}
	return code
}

func describeCell(r scenario.Result, reason string) string {
	if reason == "" {
		return string(r)
	}
	return fmt.Sprintf("%s (%s)", r, reason)
}

// selectScenarios returns the scenarios named name, or every scenario when
// name is empty; a matrix scenario's base name selects all its expansions.
func selectScenarios(s *scenario.Suite, name string) []*scenario.Scenario {
	var out []*scenario.Scenario
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		if name == "" || sc.Name == name || strings.HasPrefix(sc.Name, name+"[") {
			out = append(out, sc)
		}
	}
	return out
}

func writePredictJSON(w io.Writer, steps []predictedStep) error {
	rows := []predictedRow{}
	for _, st := range steps {
		rows = append(rows, st.cells()...)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

// writePredictTable prints, per scenario and step, a matrix of clients
// (rows) against server ports (columns). Cells the step's expect table
// asserts end in * when the expectation agrees and ! when it does not; the
// disagreements are listed under the matrix.
func writePredictTable(w io.Writer, s *scenario.Suite, steps []predictedStep) error {
	fmt.Fprintf(w, "Predicted by meshproof's model of Istio (the oracle, harness/oracle), without a cluster, for %s.\n", dataPlanes(s))
	fmt.Fprintln(w, "* = asserted by the step's expect table and agrees, ! = asserted and disagrees.")
	var last *scenario.Scenario
	for _, st := range steps {
		sc := st.scenario
		if sc != last {
			fmt.Fprintf(w, "\nScenario %s (%s)\n", sc.Name, sc.Source.Position)
			last = sc
		}
		step := &sc.Steps[st.index]
		fmt.Fprintf(w, "  Step %s\n", step.Name)
		if st.err != nil {
			fmt.Fprintf(w, "    no prediction: %v\n", st.err)
			continue
		}
		notes, err := writeMatrix(w, s, step, st.preds)
		if err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintf(w, "    ! %s\n", n)
		}
	}
	return nil
}

// dataPlanes says which data plane the oracle modelled for which of the
// file's workloads.
func dataPlanes(s *scenario.Suite) string {
	var sidecar, ambient, proxyless, none []string
	for _, w := range s.Fixtures.Workloads {
		switch w.Plane() {
		case scenario.DataPlaneNone:
			none = append(none, w.Name)
		case scenario.DataPlaneProxyless:
			proxyless = append(proxyless, w.Name)
		case scenario.DataPlaneAmbient:
			ambient = append(ambient, w.Name)
		default:
			sidecar = append(sidecar, w.Name)
		}
	}
	var parts []string
	if len(sidecar) > 0 {
		parts = append(parts, "Envoy sidecars with auto mTLS ("+strings.Join(sidecar, ", ")+")")
	}
	if len(ambient) > 0 {
		parts = append(parts, "ambient, ztunnel on each node speaking HBONE mutual TLS ("+strings.Join(ambient, ", ")+")")
	}
	if len(proxyless) > 0 {
		parts = append(parts, "proxyless gRPC, grpc-go with pilot-agent, no auto mTLS: its client sends mTLS only under a DestinationRule ISTIO_MUTUAL ("+strings.Join(proxyless, ", ")+")")
	}
	if len(none) > 0 {
		parts = append(parts, "no mesh ("+strings.Join(none, ", ")+")")
	}
	return strings.Join(parts, "; ")
}

// writeMatrix prints one step's matrix and returns the disagreements with
// its expect table.
func writeMatrix(w io.Writer, s *scenario.Suite, step *scenario.Step, preds []oracle.Prediction) ([]string, error) {
	var asserted []scenario.Expectation
	if step.Expect != nil {
		asserted = step.Expect.Table
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := []string{"    client \\ server"}
	for _, server := range s.Fixtures.Workloads {
		for _, p := range server.Ports {
			header = append(header, server.Name+":"+strconv.Itoa(p.Number))
		}
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	var notes []string
	for _, client := range s.Fixtures.Workloads {
		row := []string{"    " + client.Name}
		for _, server := range s.Fixtures.Workloads {
			for _, port := range server.Ports {
				if client.Name == server.Name {
					row = append(row, "-")
					continue
				}
				p, ok := oracle.Find(preds, client.Name, server.Name, port.Number)
				if !ok {
					row = append(row, "?")
					continue
				}
				cell := string(p.Result)
				if p.Reason != "" {
					cell += "(" + p.Reason + ")"
				}
				for _, x := range asserted {
					if x.From != p.From || x.To != p.To || x.Port != p.Port {
						continue
					}
					if p.Agrees(x) {
						cell += "*"
					} else {
						cell += "!"
						want := string(x.Result)
						if x.Reason != "" {
							want += " (" + x.Reason + ")"
						}
						got := string(p.Result)
						if p.Reason != "" {
							got += " (" + p.Reason + ")"
						}
						notes = append(notes, fmt.Sprintf("%s -> %s:%d (%s): expects %s, predicted %s because %s",
							p.From, p.To, p.Port, x.Source.Position, want, got, p.Why))
					}
				}
				row = append(row, cell)
			}
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return notes, tw.Flush()
}
