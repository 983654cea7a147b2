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
)

// syncInterval bounds how long a recorded element may sit only in the
// operating system's cache. Each element is written straight to the file,
// so a killed process loses nothing; fsync only protects against the
// machine itself going down, and doing it per element would make probing
// wait on the disk.
const syncInterval = time.Second

// arrayWriter writes a JSON array one element per line, as the run goes:
//
//	[
//	{...},
//	{...}
//	]
//
// The separator is written together with the element after it, so after
// every record the file is "[", complete elements and nothing else: a
// valid array minus its closing bracket, which readArray accepts.
// results.json and events.json are both written this way.
type arrayWriter[T any] struct {
	// describe names an element in error messages, e.g. "observation
	// service-a -> service-b:8080".
	describe func(T) string

	mu        sync.Mutex
	f         *os.File
	path      string
	n         int // elements written
	err       error
	closed    bool
	closeErr  error
	syncTimer *time.Timer // pending fsync, nil if none
}

// openArray creates path, which must not exist (a run id names one run),
// and writes the opening bracket.
func openArray[T any](path string, describe func(T) string) (*arrayWriter[T], error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%s already exists: this run id was used before; start a new run id", path)
		}
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	w := &arrayWriter[T]{f: f, path: path, describe: describe}
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

func (w *arrayWriter[T]) record(v T) {
	line, err := json.Marshal(v)
	if err != nil {
		// Observations and events hold only strings, numbers and a time;
		// this happens only for a time outside years 0-9999.
		w.fail(fmt.Errorf("encode %s: %w", w.describe(v), err))
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		w.setErr(fmt.Errorf("%s recorded after %s was closed; it was dropped", w.describe(v), w.path))
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
func (w *arrayWriter[T]) syncPending() {
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

func (w *arrayWriter[T]) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setErr(err)
}

// setErr keeps the first failure; w.mu must be held.
func (w *arrayWriter[T]) setErr(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *arrayWriter[T]) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// close terminates the array, syncs and closes the file. Later calls
// return the first call's result.
func (w *arrayWriter[T]) close() error {
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

// ErrIncomplete marks a results or events file whose last element was cut
// in the middle, as when the machine went down while it was written.
var ErrIncomplete = errors.New("the file ends inside an element")

// readArray reads a file arrayWriter wrote: a closed JSON array, or one a
// killed run left without its closing bracket. An empty file (a run killed
// before its first write) holds no elements. what names the file's kind
// ("results") and noun its elements ("observations") in errors.
//
// If the file ends inside an element, readArray returns the complete
// elements before it together with an error wrapping ErrIncomplete.
func readArray[T any](path, what, noun string) ([]T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, fmt.Errorf("read %s %s: the file does not start with a JSON array", what, path)
	}
	var out []T
	for dec.More() {
		var v T
		offset := dec.InputOffset()
		if err := dec.Decode(&v); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return out, fmt.Errorf("read %s %s: element %d at byte %d is cut short (the run was interrupted while writing it); %d complete %s read: %w",
					what, path, len(out)+1, offset, len(out), noun, ErrIncomplete)
			}
			return out, fmt.Errorf("read %s %s: element %d at byte %d: %w", what, path, len(out)+1, offset, err)
		}
		out = append(out, v)
	}
	tok, err = dec.Token()
	switch {
	case errors.Is(err, io.EOF):
		// No closing bracket: the run did not get to Close.
	case err != nil:
		// A separator with nothing after it: the element that followed
		// was never written.
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return out, fmt.Errorf("read %s %s: the file ends after a separator; %d complete %s read: %w", what, path, len(out), noun, ErrIncomplete)
		}
		return out, fmt.Errorf("read %s %s: after element %d: %w", what, path, len(out), err)
	case tok != json.Delim(']'):
		return out, fmt.Errorf("read %s %s: unexpected %v after element %d", what, path, tok, len(out))
	default:
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return out, fmt.Errorf("read %s %s: data after the closing bracket", what, path)
		}
	}
	return out, nil
}
