// Package report owns a run's output folder, <root>/<run id>/, and the
// <root>/latest link to the newest one. Everything in it is written as the
// run goes, so a run that is interrupted (Ctrl-C, a killed CI job) still
// leaves a readable folder: results.json holds every probe observation and
// every step verdict made up to that point, and events.json the timeline
// of what the steps did (policy changes, upgrade and rotation phases,
// deadlines). When the run closes, it renders them into report.html, one
// self-contained page.
//
// results.json is a JSON array written one element per line; each element
// is an envelope naming what it holds, {"observation": {...}} or
// {"verdict": {...}} (results.Observation and results.Verdict). A killed
// run leaves the array without its closing bracket, and possibly its last
// element cut short; ReadResults reads every complete element of such a
// file. events.json is a plain array of results.Event.
//
// What this package writes holds no secrets, so directories are 0755 and
// files 0644, readable by whoever collects CI artifacts. A file with
// credentials that another package puts in the folder (a cluster
// provider's kubeconfig) carries its own 0600 mode.
package report

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/meshproof/meshproof/harness/results"
)

const (
	// LatestLink is the name of the symlink in the root that points at the
	// newest run's folder.
	LatestLink = "latest"
	// ResultsFile holds every observation and verdict of the run as a JSON
	// array of envelopes (see the package doc).
	ResultsFile = "results.json"
	// EventsFile holds the run's timeline events as a JSON array.
	EventsFile = "events.json"
	// HTMLFile is the page Close renders from the results and events.
	HTMLFile = "report.html"
	// JUnitFile is the JUnit report the suites write.
	JUnitFile = "junit.xml"
	// LogFile is the run's debug log: every record of the run's logger,
	// debug level included, and what Kubernetes' client libraries logged
	// (their warnings, e.g. deprecated APIs), which the terminal never shows.
	LogFile = "meshproof.log"

	dirMode  os.FileMode = 0o755
	fileMode os.FileMode = 0o644
)

// ValidateRunID checks that id can name a run folder: not empty, not a
// path (no separators, not "." or ".."), not hidden (the temporary links
// Open makes start with a dot) and not the name of the latest link.
func ValidateRunID(id string) error {
	switch {
	case id == "":
		return errors.New("the run id is empty")
	case strings.ContainsAny(id, `/\`) || strings.ContainsRune(id, os.PathSeparator):
		return fmt.Errorf("run id %q contains a path separator; it must name a single folder", id)
	case strings.ContainsRune(id, 0):
		return fmt.Errorf("run id %q contains a NUL byte", id)
	case strings.HasPrefix(id, "."):
		return fmt.Errorf("run id %q starts with a dot; run folders must not be hidden or relative paths", id)
	case id == LatestLink:
		return fmt.Errorf("run id %q is the name of the link to the newest run", id)
	}
	return nil
}

// Open creates the folder <root>/<runID>/ (and root if needed), starts its
// results.json and events.json and points <root>/latest at it. The link is relative, so the
// whole root can be moved or archived, and it is replaced atomically: a
// reader sees either the previous run or this one, never no link.
//
// The run folder may already exist (a cluster provider may have written a
// kubeconfig into it), but results.json and events.json must not: a run id
// names one run.
func Open(root, runID string) (*Run, error) {
	if err := ValidateRunID(runID); err != nil {
		return nil, fmt.Errorf("open run report: %w", err)
	}
	if root == "" {
		return nil, errors.New("open run report: the report root directory is empty")
	}
	dir := filepath.Join(root, runID)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("open run report: create %s: %w", dir, err)
	}
	// MkdirAll's mode is reduced by the umask; the folder is meant to be
	// readable by artifact collectors whatever the umask.
	if err := os.Chmod(dir, dirMode); err != nil {
		return nil, fmt.Errorf("open run report: %w", err)
	}
	results, err := openArray(filepath.Join(dir, ResultsFile), describeEntry)
	if err != nil {
		return nil, fmt.Errorf("open run report: %w", err)
	}
	events, err := openArray(filepath.Join(dir, EventsFile), describeEvent)
	if err != nil {
		results.close()
		return nil, fmt.Errorf("open run report: %w", err)
	}
	if err := pointLatest(root, runID); err != nil {
		results.close()
		events.close()
		return nil, fmt.Errorf("open run report: %w", err)
	}
	// Make the new directory entries (the files, the link) durable too,
	// not only the file contents.
	syncDir(dir)
	syncDir(root)
	return &Run{ID: runID, Dir: dir, results: results, events: events}, nil
}

// Run is one run's output folder. Its methods are safe for concurrent use.
type Run struct {
	// ID is the run id the folder is named after.
	ID string
	// Dir is the run's folder, <root>/<ID>.
	Dir string

	results *arrayWriter[entry]
	events  *arrayWriter[results.Event]

	closeOnce sync.Once
	closeErr  error
}

// Path joins parts onto the run's folder, e.g. Path("diagnostics", s, step).
// The result is cleaned like filepath.Join; parts that come from users
// (scenario or step names) must be made into single safe names first.
func (r *Run) Path(parts ...string) string {
	return filepath.Join(append([]string{r.Dir}, parts...)...)
}

// JUnitPath is where the JUnit report of the run goes: <dir>/junit.xml.
func (r *Run) JUnitPath() string { return r.Path(JUnitFile) }

// ResultsPath is the run's results.json.
func (r *Run) ResultsPath() string { return r.Path(ResultsFile) }

// EventsPath is the run's events.json.
func (r *Run) EventsPath() string { return r.Path(EventsFile) }

// HTMLPath is the run's report.html, written by Close.
func (r *Run) HTMLPath() string { return r.Path(HTMLFile) }

// LogPath is where the run's debug log goes.
func (r *Run) LogPath() string { return r.Path(LogFile) }

// Err reports the first failure to record an observation, a verdict or an
// event (a write error, or a Record after Close), since the Recorder's
// methods cannot return one.
func (r *Run) Err() error { return errors.Join(r.results.failure(), r.events.failure()) }

// Close terminates results.json and events.json (so each is a complete
// JSON array), syncs and closes them, then renders report.html from what
// they hold. Both files are closed whatever happens to the rendering; a
// rendering failure is returned with any write failure an earlier Record
// met. Close is idempotent: later calls return the first call's result.
func (r *Run) Close() error {
	r.closeOnce.Do(func() {
		closeErr := errors.Join(r.results.close(), r.events.close())
		r.closeErr = errors.Join(closeErr, r.renderHTML())
	})
	return r.closeErr
}

// renderHTML writes report.html from the closed results.json and
// events.json. Reading the files back, rather than keeping every
// observation in memory during a long run, also makes the page show
// exactly what the files hold. junit.xml, when the suites wrote it before
// Close, is linked. The page is written under a temporary name
// and renamed, so report.html is either absent or complete.
func (r *Run) renderHTML() error {
	var notes []string
	obs, verdicts, err := ReadResults(r.ResultsPath())
	if err != nil {
		if !errors.Is(err, ErrIncomplete) {
			return fmt.Errorf("render %s: %w", HTMLFile, err)
		}
		notes = append(notes, err.Error())
	}
	events, err := ReadEvents(r.EventsPath())
	if err != nil {
		if !errors.Is(err, ErrIncomplete) {
			return fmt.Errorf("render %s: %w", HTMLFile, err)
		}
		notes = append(notes, err.Error())
	}
	opts := []Option{WithTitle("meshproof run " + r.ID), WithLinks(r.Dir, r.Dir)}
	for _, n := range notes {
		opts = append(opts, WithNote(n))
	}
	return WriteHTMLFile(r.HTMLPath(), Contents{Observations: obs, Events: events, Verdicts: verdicts}, opts...)
}

// latestSeq makes temporary link names unique within the process; the pid
// makes them unique across processes sharing a root.
var latestSeq atomic.Uint64

// pointLatest makes <root>/latest a relative symlink to runID by creating a
// temporary link and renaming it over the old one, which is atomic.
func pointLatest(root, runID string) error {
	link := filepath.Join(root, LatestLink)
	if fi, err := os.Lstat(link); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		return fmt.Errorf("%s exists and is not a symlink; move it away so it can point at the newest run", link)
	}
	tmp := filepath.Join(root, fmt.Sprintf(".%s-%d-%d", LatestLink, os.Getpid(), latestSeq.Add(1)))
	if err := os.Symlink(runID, tmp); err != nil {
		return fmt.Errorf("create the link to the newest run: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("point %s at %s: %w", link, runID, err)
	}
	return nil
}

// syncDir fsyncs a directory so entries created in it survive a crash of
// the machine. It is best effort: some file systems refuse to sync
// directories, and the entries are already visible to every process.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	_ = d.Sync()
	_ = d.Close()
}
