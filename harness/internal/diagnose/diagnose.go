// Package diagnose collects what a person needs to understand a failed
// step: the logs of every container of the fixture pods and of istiod, the
// events and pods of those namespaces, the run's PeerAuthentications and
// DestinationRules, each sidecar's Envoy config dump (private keys
// scrubbed) and, on kind, the node logs.
//
// Collection is best effort: every item is attempted, one failing item
// never stops the others, and index.txt in the output folder lists what
// was collected and every item that could not be, with the error. The
// whole collection is bounded by the caller's context and each item by a
// per-item timeout, so a hung log stream or exec cannot eat the budget of
// the rest.
//
// Layout of the output folder:
//
//	index.txt
//	policies.yaml
//	<ns>-events.txt
//	<ns>-pods.yaml
//	<ns>/<pod>/<container>.log
//	<ns>/<pod>/<container>.previous.log   (containers that restarted)
//	<ns>/<pod>/config_dump.json            (pods with an istio-proxy container)
//	nodes/                                 (kind node logs)
package diagnose

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/probe"
)

const (
	// IndexFile lists what was collected and what could not be.
	IndexFile = "index.txt"
	// PoliciesFile holds the run's PeerAuthentications and DestinationRules.
	PoliciesFile = "policies.yaml"
	// ConfigDumpFile is a sidecar's Envoy config dump, in its pod's folder.
	ConfigDumpFile = "config_dump.json"
	// NodeLogsDir receives the cluster provider's node logs.
	NodeLogsDir = "nodes"

	// DefaultIstioNamespace is where istiod runs.
	DefaultIstioNamespace = "istio-system"
	// IstiodSelector selects istiod's pods, as Istio's chart labels them
	// (canary revisions included).
	IstiodSelector = "app=istiod"

	// DefaultLogLimitBytes bounds each container log: enough for the
	// recent history of a sidecar at info level, small enough that a
	// chatty container cannot fill the CI artifact store.
	DefaultLogLimitBytes = 5 << 20
	// DefaultTailLines keeps the end of a log, where a failure shows.
	DefaultTailLines = 10000
	// DefaultItemTimeout bounds each single item (one log, one exec).
	DefaultItemTimeout = 30 * time.Second

	// parallelism bounds how many logs and execs run at once; the API
	// server and the kubelets serve the collection next to the suite.
	parallelism = 4

	dirMode  os.FileMode = 0o755
	fileMode os.FileMode = 0o644
)

// Collector collects diagnostics from one cluster. Create it with New.
type Collector struct {
	kube        client.Client
	clientset   kubernetes.Interface
	execer      probe.Execer
	nodeLogs    func(dir string) error
	namespaces  []string
	istioNS     string
	runID       string
	limitBytes  int64
	tailLines   int64
	itemTimeout time.Duration
	now         func() time.Time
}

// Option configures a Collector.
type Option func(*Collector)

// WithExecer enables the sidecar config dumps, exec'd through e.
func WithExecer(e probe.Execer) Option { return func(c *Collector) { c.execer = e } }

// WithNodeLogs exports the cluster's node logs into a folder, e.g. a kind
// cluster provider's ExportLogs. A function returning an error that wraps
// errors.ErrUnsupported (a cluster meshproof did not create) is noted in
// the index, not counted as a failure.
func WithNodeLogs(export func(dir string) error) Option {
	return func(c *Collector) { c.nodeLogs = export }
}

// WithNamespaces names the fixture namespaces whose pods, logs and events
// are collected.
func WithNamespaces(namespaces ...string) Option {
	return func(c *Collector) { c.namespaces = append(c.namespaces, namespaces...) }
}

// WithRunID selects the policies of run id (by meshproof's ownership
// labels). Without it the policies of every meshproof run are collected.
func WithRunID(id string) Option { return func(c *Collector) { c.runID = id } }

// WithIstioNamespace names the namespace istiod runs in
// (DefaultIstioNamespace if not given).
func WithIstioNamespace(ns string) Option { return func(c *Collector) { c.istioNS = ns } }

// WithItemTimeout bounds each single item (DefaultItemTimeout if not given).
func WithItemTimeout(d time.Duration) Option {
	return func(c *Collector) {
		if d > 0 {
			c.itemTimeout = d
		}
	}
}

// New returns a Collector. kube reads the policies (as unstructured
// objects, so its scheme need not know Istio's types); clientset reads
// pods, events and logs.
func New(kube client.Client, clientset kubernetes.Interface, opts ...Option) *Collector {
	c := &Collector{
		kube:        kube,
		clientset:   clientset,
		istioNS:     DefaultIstioNamespace,
		limitBytes:  DefaultLogLimitBytes,
		tailLines:   DefaultTailLines,
		itemTimeout: DefaultItemTimeout,
		now:         time.Now,
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Item is one thing written into the output folder.
type Item struct {
	// Path is relative to the output folder.
	Path string
	// What says what the file holds, e.g. "log of container app".
	What string
}

// Failure is one thing that could not be collected.
type Failure struct {
	// Path is where it would have been written, relative to the output
	// folder; empty when the failure stopped a whole group (listing pods).
	Path string
	What string
	Err  error
}

// Summary is what one Collect did; index.txt says the same.
type Summary struct {
	Dir       string
	Collected []Item
	Failed    []Failure
	// Notes are things not collected on purpose, e.g. node logs of a
	// cluster that cannot export them.
	Notes []string
}

// Collect writes the diagnostics into dir (created if needed) and returns
// what it did. Failing items are in Summary.Failed and index.txt, not in
// the error: Collect returns an error only when it could not write dir or
// its index at all. Collect returns once every item is done or ctx ends.
func (c *Collector) Collect(ctx context.Context, dir string) (Summary, error) {
	s := &summary{Summary: Summary{Dir: dir}}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return s.Summary, fmt.Errorf("collect diagnostics: create %s: %w", dir, err)
	}
	started := c.now()

	namespaces := c.allNamespaces()
	c.collectPolicies(ctx, dir, s)
	for _, ns := range namespaces {
		c.collectEvents(ctx, dir, ns, s)
	}
	var pods []podRef
	for _, ns := range namespaces {
		pods = append(pods, c.collectPods(ctx, dir, ns, s)...)
	}

	fake := c.fakeNodes(ctx, pods)
	var jobs []func()
	for _, p := range pods {
		if fake[p.node] {
			s.note(fmt.Sprintf("logs of %s/%s: none, its node %s is played by kwok and runs no container", p.namespace, p.name, p.node))
		} else {
			for _, ct := range p.containers {
				jobs = append(jobs, func() { c.collectLog(ctx, dir, p, ct, false, s) })
				if ct.restarts > 0 {
					jobs = append(jobs, func() { c.collectLog(ctx, dir, p, ct, true, s) })
				}
			}
		}
		if p.inMesh {
			if c.execer == nil {
				s.note(fmt.Sprintf("config dump of %s/%s: not collected, no exec transport given (WithExecer)", p.namespace, p.name))
			} else {
				jobs = append(jobs, func() { c.collectConfigDump(ctx, dir, p, s) })
			}
		}
	}
	runBounded(jobs, parallelism)

	c.collectNodeLogs(ctx, dir, s)

	if err := c.writeIndex(dir, started, namespaces, s); err != nil {
		return s.sorted(), err
	}
	return s.sorted(), nil
}

// allNamespaces is the fixture namespaces and istiod's, each once.
func (c *Collector) allNamespaces() []string {
	var out []string
	for _, ns := range append(slices.Clone(c.namespaces), c.istioNS) {
		if ns != "" && !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out
}

// itemContext bounds one item by the per-item timeout and ctx.
func (c *Collector) itemContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.itemTimeout)
}

// collectNodeLogs runs the node-log export. The export function takes no
// context (kind's own log collection cannot be cancelled), so once ctx
// ends Collect stops waiting for it and records that; the export then
// finishes on its own in the background.
func (c *Collector) collectNodeLogs(ctx context.Context, dir string, s *summary) {
	if c.nodeLogs == nil {
		return
	}
	const what = "node logs"
	if err := ctx.Err(); err != nil {
		s.fail(NodeLogsDir, what, fmt.Errorf("not started: %w", err))
		return
	}
	done := make(chan error, 1)
	go func() { done <- c.nodeLogs(filepath.Join(dir, NodeLogsDir)) }()
	select {
	case err := <-done:
		switch {
		case errors.Is(err, errors.ErrUnsupported):
			s.note(fmt.Sprintf("node logs: not collected, the cluster provider cannot export them: %v", err))
		case err != nil:
			s.fail(NodeLogsDir, what, err)
		default:
			s.collected(NodeLogsDir, what)
		}
	case <-ctx.Done():
		s.fail(NodeLogsDir, what, fmt.Errorf("stopped waiting, the export goes on in the background and %s may be incomplete: %w", NodeLogsDir, ctx.Err()))
	}
}

// runBounded runs jobs with at most n at a time and waits for all.
func runBounded(jobs []func(), n int) {
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, job := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			job()
		}()
	}
	wg.Wait()
}

// summary is a Summary that concurrent jobs add to.
type summary struct {
	mu sync.Mutex
	Summary
}

func (s *summary) collected(path, what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Collected = append(s.Collected, Item{Path: filepath.ToSlash(path), What: what})
}

func (s *summary) fail(path, what string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Failed = append(s.Failed, Failure{Path: filepath.ToSlash(path), What: what, Err: err})
}

func (s *summary) note(n string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Notes = append(s.Notes, n)
}

// sorted returns the summary in a stable order: jobs finish in any order.
func (s *summary) sorted() Summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.Summary
	out.Collected = slices.Clone(out.Collected)
	out.Failed = slices.Clone(out.Failed)
	out.Notes = slices.Clone(out.Notes)
	slices.SortFunc(out.Collected, func(a, b Item) int { return cmp.Or(strings.Compare(a.Path, b.Path), strings.Compare(a.What, b.What)) })
	slices.SortFunc(out.Failed, func(a, b Failure) int {
		return cmp.Or(strings.Compare(a.Path, b.Path), strings.Compare(a.What, b.What))
	})
	slices.Sort(out.Notes)
	return out
}

// writeFile writes data to dir/rel, creating its folder.
func writeFile(dir, rel string, data []byte) error {
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return err
	}
	return os.WriteFile(path, data, fileMode)
}

func (c *Collector) writeIndex(dir string, started time.Time, namespaces []string, s *summary) error {
	sum := s.sorted()
	var b strings.Builder
	fmt.Fprintf(&b, "meshproof diagnostics, collected %s\n", started.UTC().Format(time.RFC3339))
	if c.runID != "" {
		fmt.Fprintf(&b, "run: %s\n", c.runID)
	}
	fmt.Fprintf(&b, "namespaces: %s (istiod in %s)\n", strings.Join(namespaces, ", "), c.istioNS)
	fmt.Fprintf(&b, "%d collected, %d could not be collected\n", len(sum.Collected), len(sum.Failed))

	b.WriteString("\nCOLLECTED\n")
	if len(sum.Collected) == 0 {
		b.WriteString("  (nothing)\n")
	}
	for _, it := range sum.Collected {
		fmt.Fprintf(&b, "  %s  (%s)\n", it.Path, it.What)
	}
	b.WriteString("\nNOT COLLECTED\n")
	if len(sum.Failed) == 0 {
		b.WriteString("  (nothing)\n")
	}
	for _, f := range sum.Failed {
		where := f.Path
		if where == "" {
			where = "-"
		}
		// Errors from the API server can span lines; keep each failure
		// one entry by indenting its continuation lines.
		msg := strings.ReplaceAll(strings.TrimSpace(f.Err.Error()), "\n", "\n      ")
		fmt.Fprintf(&b, "  %s  (%s)\n    error: %s\n", where, f.What, msg)
	}
	if len(sum.Notes) > 0 {
		b.WriteString("\nNOTES\n")
		for _, n := range sum.Notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	if err := writeFile(dir, IndexFile, []byte(b.String())); err != nil {
		return fmt.Errorf("collect diagnostics: write the index: %w", err)
	}
	return nil
}
