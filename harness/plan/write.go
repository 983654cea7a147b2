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
// introduced by a comment saying where it comes from, in the order a run
// applies them: for each cluster where meshproof installs Istio, Istio's
// namespace and the objects of its Helm releases (base, istiod, and for
// ambient mode istio-cni and ztunnel; rendered by RenderCharts: a release
// it could not render is named in a comment saying why), then the
// cluster's fixtures and wire witness, then each scenario's own copy of
// the fixtures (when it runs isolated) and its steps' policies (an
// upgrade step's releases are named in a comment, not rendered). The
// objects apply in that order with `kubectl apply --server-side -f -` (a
// server-side dry run accepts the custom resources once the base chart's
// CRDs exist).
func (p *Plan) WriteYAML(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# meshproof plan, run %s. The echo image is built at run time; it shows here as %s.\n", p.RunID, PlaceholderImage)
	doc := func(comment string, obj any) error {
		y, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "---\n%s%s", commented(comment), y)
		return nil
	}
	for _, c := range p.Clusters {
		name := c.Cluster.Name
		switch in := c.Istio; {
		case in == nil:
			fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("cluster %s: Istio is used as installed there (mode %s): meshproof installs none of its charts, so none is shown", name, scenario.IstioUseExisting)))
		default:
			if err := doc(fmt.Sprintf("cluster %s: Istio's namespace, created by the install when it is missing (the run's: teardown deletes it)", name), in.Namespace); err != nil {
				return err
			}
			if c.Cluster.Istio.PluggedCA {
				fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("cluster %s: Secret %s/cacerts (the plugged CA: a root and an intermediate generated at run time, created before istiod) is not shown", name, in.Namespace.Name)))
			}
			fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("cluster %s: Istio's charts from %s, rendered as `helm template` renders them, with the values and in the order the run installs them", name, in.Charts)))
			if missing, why := in.missing(); len(missing) > 0 || len(in.Releases) == 0 {
				what := "releases " + strings.Join(missing, ", ")
				if len(in.Releases) == 0 {
					what = "Istio's releases"
				}
				fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("cluster %s: NOT RENDERED, so their objects are missing below: %s, because %v", name, what, why)))
			}
			for _, r := range in.Releases {
				if len(r.Objects) == 0 {
					fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("cluster %s: %s: not rendered (see above)", name, r)))
				}
				for _, o := range r.Objects {
					if err := doc(fmt.Sprintf("cluster %s: %s", name, r), o.Object); err != nil {
						return err
					}
				}
			}
		}
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
			if u := st.Step.Upgrade; u != nil {
				fmt.Fprintf(&b, "---\n%s", commented(fmt.Sprintf("scenario %s, step %s (%s): the Istio %s releases this upgrade installs or upgrades are not rendered here; `meshproof plan` lists what it does", sc.Scenario.Name, st.Step.Name, st.Step.Source.Position, u.To)))
			}
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

// commented turns text into YAML comment lines, one per line of text.
func commented(text string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
	}
	return b.String()
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
