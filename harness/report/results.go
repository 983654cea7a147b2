package report

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/meshproof/meshproof/harness/engine"
)

var _ engine.Recorder = (*Run)(nil)

// syncInterval bounds how long a recorded observation may sit only in the
// operating system's cache. Each Record is written straight to the file, so
// a killed process loses nothing; fsync only protects against the machine
// itself going down, and doing it per record would make probing wait on
// the disk.
const syncInterval = time.Second

// Record appends o to results.json. The element is written to the file
// before Record returns; it reaches the disk within syncInterval. Record
// never fails the run: a write failure is kept and reported by Err and
// Close.
func (r *Run) Record(o engine.Observation) { r.results.record(o) }

// resultsWriter writes a JSON array one element per line:
//
//	[
//	{...},
//	{...}
//	]
//
// The separator is written together with the element after it, so after
// every Record the file is "[", complete elements and nothing else: a
// valid array minus its closing bracket, which ReadResults accepts.
type resultsWriter struct {
	mu        sync.Mutex
	f         *os.File
	path      string
	n         int // elements written
	err       error
	closed    bool
	closeErr  error
	syncTimer *time.Timer // pending fsync, nil if none
}

func openResults(path string) (*resultsWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%s already exists: this run id was used before; start a new run id", path)
		}
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	w := &resultsWriter{f: f, path: path}
	// The mode given to OpenFile is reduced by the umask.
	if err := f.Chmod(fileMode); err != nil {
		f.Close()
		return nil, fmt.Errorf("set the mode of %s: %w", path, err)
	}
	if _, err := f.WriteString("[\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("sync %s: %w", path, err)
	}
	return w, nil
}

func (w *resultsWriter) record(o engine.Observation) {
	line, err := json.Marshal(o)
	if err != nil {
		// Observation holds only strings, numbers and a time; this happens
		// only for a time outside years 0-9999.
		w.fail(fmt.Errorf("encode observation %s -> %s:%d: %w", o.From, o.To, o.Port, err))
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.setErr(fmt.Errorf("observation %s -> %s:%d recorded after %s was closed; it was dropped", o.From, o.To, o.Port, w.path))
		return
	}
	if w.n > 0 {
		line = append([]byte(",\n"), line...)
	}
	// One write per element: with no buffering in between, the file only
	// ever misses whole elements when the process dies.
	if _, err := w.f.Write(line); err != nil {
		w.setErr(fmt.Errorf("write %s: %w", w.path, err))
		return
	}
	w.n++
	if w.syncTimer == nil {
		w.syncTimer = time.AfterFunc(syncInterval, w.syncPending)
	}
}

// syncPending is the scheduled fsync: at most one per syncInterval,
// covering everything written since the last.
func (w *resultsWriter) syncPending() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.syncTimer = nil
	if w.closed {
		return
	}
	if err := w.f.Sync(); err != nil {
		w.setErr(fmt.Errorf("sync %s: %w", w.path, err))
	}
}

func (w *resultsWriter) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setErr(err)
}

// setErr keeps the first failure; w.mu must be held.
func (w *resultsWriter) setErr(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *resultsWriter) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *resultsWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.closeErr
	}
	w.closed = true
	if w.syncTimer != nil {
		// If the timer already fired, its callback sees closed and returns.
		w.syncTimer.Stop()
		w.syncTimer = nil
	}
	end := "]\n"
	if w.n > 0 {
		end = "\n]\n"
	}
	_, werr := w.f.WriteString(end)
	if werr != nil {
		werr = fmt.Errorf("terminate %s: %w", w.path, werr)
	}
	serr := w.f.Sync()
	if serr != nil {
		serr = fmt.Errorf("sync %s: %w", w.path, serr)
	}
	cerr := w.f.Close()
	if cerr != nil {
		cerr = fmt.Errorf("close %s: %w", w.path, cerr)
	}
	w.closeErr = errors.Join(w.err, werr, serr, cerr)
	return w.closeErr
}

// ErrIncomplete marks a results file whose last element was cut in the
// middle, as when the machine went down while it was written.
var ErrIncomplete = errors.New("the results file ends inside an observation")

// ReadResults reads a results.json: a closed JSON array, or one a killed
// run left without its closing bracket. An empty file (a run killed before
// its first write) holds no observations.
//
// If the file ends inside an element, ReadResults returns the complete
// observations before it together with an error wrapping ErrIncomplete,
// so a caller can still show what the run saw.
func ReadResults(path string) ([]engine.Observation, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("read results %s: %w", path, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, fmt.Errorf("read results %s: the file does not start with a JSON array", path)
	}
	var obs []engine.Observation
	for dec.More() {
		var o engine.Observation
		offset := dec.InputOffset()
		if err := dec.Decode(&o); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return obs, fmt.Errorf("read results %s: element %d at byte %d is cut short (the run was interrupted while writing it); %d complete observations read: %w",
					path, len(obs)+1, offset, len(obs), ErrIncomplete)
			}
			return obs, fmt.Errorf("read results %s: element %d at byte %d: %w", path, len(obs)+1, offset, err)
		}
		obs = append(obs, o)
	}
	tok, err = dec.Token()
	switch {
	case errors.Is(err, io.EOF):
		// No closing bracket: the run did not get to Close.
	case err != nil:
		// A separator with nothing after it: the element that followed
		// was never written.
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return obs, fmt.Errorf("read results %s: the file ends after a separator; %d complete observations read: %w", path, len(obs), ErrIncomplete)
		}
		return obs, fmt.Errorf("read results %s: after element %d: %w", path, len(obs), err)
	case tok != json.Delim(']'):
		return obs, fmt.Errorf("read results %s: unexpected %v after element %d", path, tok, len(obs))
	default:
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return obs, fmt.Errorf("read results %s: data after the closing bracket", path)
		}
	}
	return obs, nil
}
