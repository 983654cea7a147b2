// Package proc runs the local processes of meshproof's test control plane and
// local cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kwok, istiod) so that none of them outlives the process that started it.
//
// Three things make that hold:
//   - On Linux every child is started with a parent-death signal (SIGKILL), from
//     one goroutine locked to its OS thread for the life of the program: the
//     kernel sends the signal when the thread that forked the child ends, so the
//     thread must never end before the program does. A test process killed with
//     SIGKILL therefore takes its children with it.
//   - StopOnSignal (test processes call it) turns SIGINT and SIGTERM into an
//     orderly stop of every child, newest first (the API server before etcd),
//     each escalated to SIGKILL after a bound, before the program dies of the
//     signal as it would have. Children run in their own process group, so a
//     Ctrl-C at the terminal reaches only the program, which stops them in order.
//   - Every child is recorded under <cache>/run/<owner> with a marker in its
//     environment; the first Start of a program sweeps the records of owners that
//     are gone and kills what they left, but only a process it can prove is
//     meshproof's (see Sweep).
package proc

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// DefaultStopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopTimeout = 20 * time.Second

// Process is a running child started by Start.
type Process struct {
	name        string
	cmd         *exec.Cmd
	stopTimeout time.Duration
	tail        *tailBuffer
	record      string // the sweep record's path, "" where none is kept

	done    chan struct{}
	waitErr error // set before done is closed

	stopOnce sync.Once
	stopErr  error
}

type options struct {
	env         []string
	dir         string
	output      io.Writer
	stderr      io.Writer
	stdin       io.Reader
	stopTimeout time.Duration
}

// Option configures Start.
type Option func(*options)

// WithEnv adds KEY=VALUE entries to the child's environment, which is otherwise
// the program's own.
func WithEnv(kv ...string) Option { return func(o *options) { o.env = append(o.env, kv...) } }

// WithDir sets the child's working directory.
func WithDir(dir string) Option { return func(o *options) { o.dir = dir } }

// WithOutput also copies the child's stdout and stderr to w (Tail keeps the end
// of them either way).
func WithOutput(w io.Writer) Option { return func(o *options) { o.output = w } }

// WithStdin gives the child r as its standard input (default: none).
func WithStdin(r io.Reader) Option { return func(o *options) { o.stdin = r } }

// WithStderr sends the child's stderr to w alone, apart from its stdout
// (which WithOutput and Tail keep), for a command whose stdout is data.
func WithStderr(w io.Writer) Option { return func(o *options) { o.stderr = w } }

// WithStopTimeout bounds how long Stop waits for the child to exit after SIGTERM
// before it sends SIGKILL.
func WithStopTimeout(d time.Duration) Option { return func(o *options) { o.stopTimeout = d } }

// Start starts path with args as a child that ends with this program (see the
// package comment). name labels the child in errors and logs.
func Start(name, path string, args []string, opts ...Option) (*Process, error) {
	o := options{stopTimeout: DefaultStopTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	// The sweep compares the record with /proc/<pid>/exe, which has no symlinks.
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	owner, err := currentOwner()
	if err != nil {
		return nil, err
	}
	p := &Process{name: name, stopTimeout: o.stopTimeout, tail: newTailBuffer(8 << 10), done: make(chan struct{})}
	cmd := exec.Command(abs, args...)
	cmd.Dir = o.dir
	cmd.Env = append(append(os.Environ(), o.env...), owner.marker())
	var out io.Writer = p.tail
	if o.output != nil {
		out = io.MultiWriter(p.tail, o.output)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if o.stderr != nil {
		cmd.Stderr = o.stderr
	}
	cmd.Stdin = o.stdin
	p.cmd = cmd

	// The registry lock is held from the fork to the registration so that a
	// signal arriving in between still finds the child to stop.
	registry.mu.Lock()
	err = spawn(cmd)
	if err == nil {
		registry.live = append(registry.live, p)
	}
	registry.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, abs, err)
	}
	p.record = owner.recordChild(p.name, abs, cmd.Process.Pid)
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	slog.Debug("started", "process", name, "pid", cmd.Process.Pid, "path", abs)
	return p, nil
}

// Name is the label Start was given.
func (p *Process) Name() string { return p.name }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the child has exited, for whatever reason.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitError reports how the child ended once Done is closed; nil before that.
func (p *Process) ExitError() error {
	select {
	case <-p.done:
		if p.waitErr == nil {
			return fmt.Errorf("%s exited with status 0", p.name)
		}
		return fmt.Errorf("%s exited: %w", p.name, p.waitErr)
	default:
		return nil
	}
}

// Tail returns the last few kilobytes the child wrote to stdout and stderr, for
// error messages that say why it failed.
func (p *Process) Tail() string { return p.tail.String() }

// Stop ends the child: SIGTERM to its process group, SIGKILL when it has not
// exited within the stop timeout. Only the escalation failing is an error; a
// child that needed SIGKILL is logged. Stop may be called more than once.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop(p.stopTimeout) })
	return p.stopErr
}

func (p *Process) stop(timeout time.Duration) error {
	defer p.forget()
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := signalGroup(p.cmd.Process, syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.name, p.Pid(), err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	slog.Warn("did not stop after SIGTERM; sending SIGKILL", "process", p.name, "pid", p.Pid(), "waited", timeout)
	if err := signalGroup(p.cmd.Process, syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s (pid %d) after it ignored SIGTERM for %s: %w", p.name, p.Pid(), timeout, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) still running 10s after SIGKILL", p.name, p.Pid())
	}
}

// forget drops the stopped child from the registry and its sweep record.
func (p *Process) forget() {
	registry.mu.Lock()
	registry.live = slices.DeleteFunc(registry.live, func(q *Process) bool { return q == p })
	registry.mu.Unlock()
	if p.record != "" {
		_ = os.Remove(p.record)
	}
}

// registry holds the running children in start order.
var registry struct {
	mu   sync.Mutex
	live []*Process
}

// StopAll stops every running child, newest first, each bounded by timeout
// (SIGTERM, then SIGKILL). Dependants start after what they depend on, so the
// reverse order stops the API server before etcd.
func StopAll(timeout time.Duration) error {
	registry.mu.Lock()
	live := slices.Clone(registry.live)
	registry.mu.Unlock()
	var errs []error
	for _, p := range slices.Backward(live) {
		p.stopOnce.Do(func() { p.stopErr = p.stop(timeout) })
		errs = append(errs, p.stopErr)
	}
	return errors.Join(errs...)
}

var signalOnce sync.Once

// StopOnSignal makes SIGINT and SIGTERM stop every child (StopAll with timeout)
// and then end the program by the same signal, as if it had not been caught.
// Test processes call it; a program with its own orderly shutdown (meshproof
// run) does not, and relies on its own stop path and the parent-death signal.
func StopOnSignal(timeout time.Duration) {
	signalOnce.Do(func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			sig := <-signals
			fmt.Fprintf(os.Stderr, "proc: %s: stopping the local processes this program started\n", sig)
			if err := StopAll(timeout); err != nil {
				fmt.Fprintf(os.Stderr, "proc: %v\n", err)
			}
			signal.Reset(syscall.SIGINT, syscall.SIGTERM)
			if self, err := os.FindProcess(os.Getpid()); err == nil && self.Signal(sig) == nil {
				time.Sleep(time.Second) // the signal's default action ends the program
			}
			os.Exit(130)
		}()
	})
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
