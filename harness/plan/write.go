package plan

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/schedule"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

// WriteText prints the plan for a person: each cluster's setup, then each
// scenario's steps with their operations and where they were written.
func (p *Plan) WriteText(w io.Writer) error {
	var b bytes.Buffer
	steps := 0
	for _, sc := range p.Scenarios {
		steps += len(sc.Steps)
	}
	fmt.Fprintf(&b, "Run %s: %s, %s, %s\n", p.RunID, count(len(p.Scenarios), "scenario"), count(steps, "step"), count(len(p.Clusters), "cluster"))
	for _, c := range p.Clusters {
		fmt.Fprintf(&b, "\nSetup of cluster %s (at most %s)\n", c.Cluster.Name, p.Suite.Defaults.SetupTimeout)
		for i, op := range c.Setup {
			fmt.Fprintf(&b, "  %d. %s\n", i+1, op)
		}
	}
	fmt.Fprintf(&b, "\nSchedule (--parallel %d)\n", p.Schedule.Parallel)
	for _, line := range p.Schedule.Lines() {
		fmt.Fprintf(&b, "  %s\n", line)
	}
	for _, sc := range p.Scenarios {
		s := sc.Scenario
		labels := ""
		if len(s.Labels) > 0 {
			labels = " [" + strings.Join(s.Labels, ", ") + "]"
		}
		fmt.Fprintf(&b, "\nScenario %s%s on %s (%s)\n", s.Name, labels, s.Cluster, s.Source.Position)
		if where := p.where(s); where != "" {
			fmt.Fprintf(&b, "  %s\n", where)
		}
		for _, st := range sc.Steps {
			fmt.Fprintf(&b, "  Step %s (at most %s, %s)\n", st.Step.Name, st.Step.Timeout, st.Step.Source.Position)
			for _, op := range st.Operations {
				fmt.Fprintf(&b, "      %s\n", op)
			}
		}
	}
	fmt.Fprintf(&b, "\nTeardown (also after a failure or Ctrl-C; --keep skips it)\n")
	for _, c := range p.Clusters {
		switch {
		case c.Cluster.Kind != nil && !c.Cluster.Kind.Reuse:
			fmt.Fprintf(&b, "  delete kind cluster %s, which the run created\n", c.Cluster.Name)
			continue
		case c.Cluster.Kind != nil:
			fmt.Fprintf(&b, "  cluster %s (reused: it may have existed before the run, and stays):\n", c.Cluster.Name)
		default:
			fmt.Fprintf(&b, "  cluster %s (existing: it stays):\n", c.Cluster.Name)
		}
		created := "namespaces, fixtures, Istio's releases and CRDs"
		if c.Cluster.Istio.Mode == scenario.IstioUseExisting {
			created = "namespaces, fixtures"
		}
		fmt.Fprintf(&b, "      undo the run's ledger: delete what the run created (%s) if still its own; restore the labels it set on namespaces it found\n", created)
		fmt.Fprintf(&b, "      delete the run's other objects (its policies), labelled %s=%s\n", ownership.RunIDLabel, p.RunID)
		fmt.Fprintf(&b, "      release the cluster's Lease\n")
	}
	_, err := w.Write(alignArrows(b.Bytes()))
	return err
}

// alignArrows lines up the "->" rows of expect tables.
func alignArrows(text []byte) []byte {
	var out bytes.Buffer
	tw := tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
	for _, line := range strings.SplitAfter(string(text), "\n") {
		if strings.HasPrefix(line, "        ") && strings.Contains(line, " -> ") { // an expect row
			from, rest, _ := strings.Cut(line, " -> ")
			to, result, _ := strings.Cut(rest, "  ")
			line = from + " -> " + to + "\t" + result
		}
		fmt.Fprint(tw, line)
	}
	tw.Flush()
	return out.Bytes()
}

// WriteYAML prints every object of the plan as multi-document YAML, each
// introduced by a comment saying where it comes from, ready for
// `kubectl apply --dry-run=server -f -`.
func (p *Plan) WriteYAML(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# meshproof plan, run %s. The echo image is built at run time; it shows here as %s.\n", p.RunID, PlaceholderImage)
	doc := func(comment string, obj any) error {
		y, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "---\n# %s\n%s", comment, y)
		return nil
	}
	for _, c := range p.Clusters {
		for _, o := range c.Fixtures {
			if err := doc("cluster "+c.Cluster.Name+": fixture", o); err != nil {
				return err
			}
		}
		for _, o := range c.Witness {
			if err := doc("cluster "+c.Cluster.Name+": wire witness", o); err != nil {
				return err
			}
		}
	}
	for _, sc := range p.Scenarios {
		for _, o := range sc.Fixtures {
			if err := doc(fmt.Sprintf("scenario %s: its own copy of the fixtures, deployed as it begins", sc.Scenario.Name), o); err != nil {
				return err
			}
		}
		for _, st := range sc.Steps {
			for _, o := range st.Patched {
				if err := doc(fmt.Sprintf("scenario %s, step %s (%s): fixture as the step patches it", sc.Scenario.Name, st.Step.Name, st.Step.Source.Position), o); err != nil {
					return err
				}
			}
			for _, o := range st.Policies {
				u, err := o.Unstructured() // what is sent: every mode written out
				if err != nil {
					return err
				}
				if err := doc(fmt.Sprintf("scenario %s, step %s (%s)", sc.Scenario.Name, st.Step.Name, o.Source), u.Object); err != nil {
					return err
				}
			}
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// where says where an isolated scenario's fixtures run: a copy of the
// workloads it uses, in namespaces of its own.
func (p *Plan) where(sc *scenario.Scenario) string {
	for _, pl := range p.Schedule.Together {
		if pl.Scenario != sc {
			continue
		}
		c := schedule.Isolate(p.Suite, sc, p.RunID)
		var ws []string
		for _, w := range c.Suite.Fixtures.Workloads {
			ws = append(ws, w.Name)
		}
		return fmt.Sprintf("in its own copy of %s, in namespace %s (removed when it ends)", strings.Join(ws, ", "), strings.Join(c.CopyNamespaces(), ", "))
	}
	return ""
}
