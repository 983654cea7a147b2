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

// predictedRow is one element of `meshproof predict -o json`.
type predictedRow struct {
	Scenario string          `json:"scenario"`
	Step     int             `json:"step"` // 1-based, as in plan and reports
	From     string          `json:"from"`
	To       string          `json:"to"`
	Port     int             `json:"port"`
	Result   scenario.Result `json:"result"`
	Reason   string          `json:"reason,omitempty"`
}

// predictedStep is the oracle's answer for one step of one scenario.
type predictedStep struct {
	scenario *scenario.Scenario
	index    int // 0-based
	preds    []oracle.Prediction
	err      error
}

func predictCmd(args []string, stdout, stderr io.Writer) int {
	fl := newFlags("predict", stderr)
	output := fl.String("o", "table", "output format: table (a matrix per step) or json")
	only := fl.String("scenario", "", "predict only this scenario (a matrix scenario's name selects all its expansions)")
	stepNumber := fl.Int("step", 0, "predict only step `N` (1-based) of the selected scenario")
	files, ok := parseInterleaved(fl, args)
	if !ok {
		return exitUsage
	}
	if len(files) > 1 {
		fmt.Fprintln(stderr, "meshproof predict: takes one scenario file")
		return exitUsage
	}
	file := defaultFile
	if len(files) == 1 {
		file = files[0]
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "meshproof predict: -o must be table or json, not %q\n", *output)
		return exitUsage
	}
	if *stepNumber != 0 && *only == "" {
		fmt.Fprintln(stderr, "meshproof predict: --step needs --scenario: step numbers belong to one scenario")
		return exitUsage
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
		fmt.Fprintf(stderr, "meshproof predict: no scenario named %q in %s; the scenarios are %s\n", *only, file, strings.Join(names, ", "))
		return exitUsage
	}
	var steps []predictedStep
	for _, sc := range scenarios {
		if *stepNumber != 0 && (*stepNumber < 1 || *stepNumber > len(sc.Steps)) {
			fmt.Fprintf(stderr, "meshproof predict: scenario %q has steps 1 to %d; there is no step %d\n", sc.Name, len(sc.Steps), *stepNumber)
			return exitUsage
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
	code = exitOK
	for _, st := range steps {
		if st.err != nil {
			fmt.Fprintf(stderr, "meshproof predict: %s step %d %s: %v\n", st.scenario.Name, st.index+1, st.scenario.Steps[st.index].Name, st.err)
			code = exitInvalid
		}
	}
	return code
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
		for _, p := range st.preds {
			rows = append(rows, predictedRow{
				Scenario: st.scenario.Name, Step: st.index + 1,
				From: p.From, To: p.To, Port: p.Port, Result: p.Result, Reason: p.Reason,
			})
		}
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
	fmt.Fprintln(w, "Predicted by meshproof's model of Istio (sidecar mode, auto mTLS). * = asserted by the step's expect table and agrees, ! = asserted and disagrees.")
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
