package proc

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
)

// markerEnv is set in every child's environment to the id of the program that
// started it: the sweep's proof, beside the binary's path, that a process is
// meshproof's and whose.
const markerEnv = "MESHPROOF_PROC_OWNER"

// owner is this program as the starter of children: its id is its pid and the
// kernel's start time of it, which no later process with the same pid shares.
type owner struct {
	id string
	// dir holds one record per running child; "" where records cannot be kept.
	dir string
	// scratch holds the children's data directories (see TempDir).
	scratch string
}

func (o *owner) marker() string { return markerEnv + "=" + o.id }

// record is what the sweep needs to find and prove a child left behind.
type record struct {
	Name  string `json:"name"`
	Path  string `json:"path"`
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

var (
	ownerOnce sync.Once
	self      *owner
	selfErr   error
)

// currentOwner sets up this program's run directory the first time, after
// sweeping what dead programs left.
func currentOwner() (*owner, error) {
	ownerOnce.Do(func() { self, selfErr = newOwner() })
	return self, selfErr
}

func newOwner() (*owner, error) {
	pid := os.Getpid()
	o := &owner{}
	start, err := startTime(pid)
	if err != nil {
		// No process start times here: children are neither recorded nor swept.
		o.id = strconv.Itoa(pid)
		o.scratch = filepath.Join(os.TempDir(), "meshproof-"+o.id)
		return o, os.MkdirAll(o.scratch, 0o700)
	}
	o.id = fmt.Sprintf("%d-%d", pid, start)
	runDir, err := RunDir()
	if err != nil {
		return nil, err
	}
	if err := Sweep(); err != nil {
		slog.Warn("sweeping processes left by earlier runs", "error", err)
	}
	o.dir = filepath.Join(runDir, o.id)
	o.scratch = filepath.Join(os.TempDir(), "meshproof-"+o.id)
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.scratch, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(o.dir, scratchFile), []byte(o.scratch), 0o600); err != nil {
		return nil, err
	}
	return o, nil
}

const scratchFile = "scratch"

// recordChild notes a started child for the sweep and returns the record's path
// ("" when none is kept: the child then just has no second line of defence).
func (o *owner) recordChild(name, path string, pid int) string {
	if o.dir == "" {
		return ""
	}
	start, err := startTime(pid)
	if err != nil {
		return "" // already gone
	}
	data, err := json.Marshal(record{Name: name, Path: path, Pid: pid, Start: start})
	if err != nil {
		return ""
	}
	file := filepath.Join(o.dir, strconv.Itoa(pid)+".json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		slog.Warn("recording a child process for the sweep", "process", name, "error", err)
		return ""
	}
	return file
}

// RunDir is where running programs record their children: <cache>/run.
func RunDir() (string, error) {
	root, err := binaries.CacheRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "run"), nil
}

// TempDir creates a fresh directory for a child's data (etcd's data, a
// certificate directory) under this program's scratch directory, which the
// sweep removes once the program is gone. The caller removes it after a clean
// stop.
func TempDir(pattern string) (string, error) {
	o, err := currentOwner()
	if err != nil {
		return "", err
	}
	return os.MkdirTemp(o.scratch, pattern)
}

// Sweep ends the children that programs no longer running left behind and
// removes their records and scratch directories. A recorded process is killed
// only when all of these prove it is the one recorded and meshproof's: the
// kernel's start time for its pid equals the recorded one, its executable is
// the recorded binary and lies inside meshproof's cache, and its environment
// carries the dead program's marker. Anything else is left alone and reported.
// The first Start of every program runs it.
func Sweep() error {
	runDir, err := RunDir()
	if err != nil {
		return err
	}
	cache, err := binaries.CacheRoot()
	if err != nil {
		return err
	}
	if resolved, err := filepath.EvalSymlinks(cache); err == nil {
		cache = resolved
	}
	owners, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, entry := range owners {
		id := entry.Name()
		if !entry.IsDir() || ownerAlive(id) {
			continue
		}
		dir := filepath.Join(runDir, id)
		if err := sweepOwner(dir, id, cache); err != nil {
			errs = append(errs, err)
			continue
		}
		if data, err := os.ReadFile(filepath.Join(dir, scratchFile)); err == nil {
			if scratch := string(data); filepath.Base(scratch) == "meshproof-"+id {
				_ = os.RemoveAll(scratch)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sweepOwner kills the provable leftovers of the dead program id; it fails
// when one could not be killed, so its record stays for the next sweep.
func sweepOwner(dir, id, cache string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return err
	}
	var errs []error
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		var r record
		if err := json.Unmarshal(data, &r); err != nil {
			slog.Warn("sweep: unreadable record", "file", file, "error", err)
			continue
		}
		if reason := provenOurs(r, id, cache); reason != "" {
			slog.Debug("sweep: leaving a process alone", "process", r.Name, "pid", r.Pid, "why", reason)
			continue
		}
		slog.Info("sweep: killing a process left by an earlier run", "process", r.Name, "pid", r.Pid, "path", r.Path)
		if err := killPid(r.Pid); err != nil {
			errs = append(errs, fmt.Errorf("sweep: killing %s (pid %d) left by an earlier run: %w", r.Name, r.Pid, err))
		}
	}
	return errors.Join(errs...)
}

// provenOurs returns "" when pid is the recorded child of the dead program id,
// else why it is not proven to be.
func provenOurs(r record, id, cache string) string {
	start, err := startTime(r.Pid)
	if err != nil {
		return "not running"
	}
	if start != r.Start {
		return "pid reused by another process"
	}
	if !strings.HasPrefix(r.Path, cache+string(filepath.Separator)) {
		return "binary outside meshproof's cache " + cache
	}
	exe, err := executable(r.Pid)
	if err != nil || exe != r.Path {
		return fmt.Sprintf("runs %q, not the recorded %s", exe, r.Path)
	}
	if !environHas(r.Pid, markerEnv+"="+id) {
		return "no " + markerEnv + " marker of the dead run"
	}
	return ""
}

// ownerAlive reports whether the program with run id "<pid>-<start>" still runs.
// Unparsable ids count as alive: the sweep leaves what it does not understand.
func ownerAlive(id string) bool {
	pidText, startText, ok := strings.Cut(id, "-")
	if !ok {
		return true
	}
	pid, err1 := strconv.Atoi(pidText)
	recorded, err2 := strconv.ParseUint(startText, 10, 64)
	if err1 != nil || err2 != nil {
		return true
	}
	start, err := startTime(pid)
	return err == nil && start == recorded
}
