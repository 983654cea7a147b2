// Package probe reaches into pods: it runs the echo program's probe and
// peercert subcommands inside fixture pods, reads a sidecar's
// certificates from its Envoy config dump and its inbound TCP connection
// counts from its statistics (package istiostats), the witness of how a
// TCP connection arrived. Prober, CertReader and StatsReader implement
// engine.Prober, engine.CertReader and engine.ConnectionWitness on top of
// an Execer, the one
// transport to a pod; NewKubeExecer is the real one (the API server's exec
// subresource, as kubectl exec uses it), and tests script their own.
package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	utilexec "k8s.io/client-go/util/exec"

	"github.com/meshproof/meshproof/harness/results"
)

// Command is one process to run in a container of a pod.
type Command struct {
	Pod       results.Pod
	Container string
	Argv      []string
	// Stdin, when non-nil, is the whole of the process's standard input;
	// when nil the process gets no stdin stream at all.
	Stdin []byte
}

func (c Command) String() string {
	return fmt.Sprintf("%q in pod %s container %s", strings.Join(c.Argv, " "), c.Pod, c.Container)
}

func (c Command) validate() error {
	switch {
	case c.Pod.Namespace == "" || c.Pod.Name == "":
		return fmt.Errorf("exec %s: the pod needs a namespace and a name", c)
	case c.Container == "":
		return fmt.Errorf("exec %s: no container named", c)
	case len(c.Argv) == 0 || c.Argv[0] == "":
		return fmt.Errorf("exec in pod %s container %s: empty command", c.Pod, c.Container)
	}
	return nil
}

// Execer runs a command in a container and waits for it to finish.
//
// Exec returns what the command wrote to stdout and stderr, also when it
// fails. Every error names the pod, container and command (an *ExecError).
// A command that ran and exited non-zero is told apart from a failed exec
// by ExitCode. The call is bounded by ctx: implementations must give up and
// return once ctx is done.
type Execer interface {
	Exec(ctx context.Context, cmd Command) (stdout, stderr []byte, err error)
}

// ExecError is a failed exec: the transport failed, ctx ended, or the
// command exited non-zero (then Err is a k8s.io/client-go/util/exec
// ExitError and ExitCode reports its status).
type ExecError struct {
	Command Command
	// Stderr is the tail of what the command wrote to stderr, which is
	// usually where it said why it failed.
	Stderr string
	Err    error
}

// maxStderrInError bounds the stderr quoted in an error message.
const maxStderrInError = 2 << 10

func newExecError(cmd Command, stderr []byte, err error) *ExecError {
	tail := bytes.TrimSpace(stderr)
	if len(tail) > maxStderrInError {
		tail = append([]byte("..."), tail[len(tail)-maxStderrInError:]...)
	}
	return &ExecError{Command: cmd, Stderr: string(tail), Err: err}
}

func (e *ExecError) Error() string {
	msg := fmt.Sprintf("exec %s: %v", e.Command, e.Err)
	if e.Stderr != "" {
		msg += "; stderr: " + e.Stderr
	}
	return msg
}

func (e *ExecError) Unwrap() error { return e.Err }

// ErrHarnessLimit marks an exec error where the transport met what it does
// not stand for (a rehearsal's simulated data plane meeting a proxy
// configuration its Envoy evaluator cannot decide): the step fails at once
// as a limit of the harness, not of the mesh, rather than probing on until
// its timeout.
var ErrHarnessLimit = errors.New("harness limit")

// ExitCode reports the exit status of a command that ran to completion and
// exited non-zero; exited is false for every other error (and for nil).
func ExitCode(err error) (code int, exited bool) {
	var exitErr utilexec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		return exitErr.ExitStatus(), true
	}
	return 0, false
}

// maxOutput bounds what one exec may write to stdout or stderr. The
// largest legitimate output, a probe batch of many requests with their XFCC
// details, stays far below; the bound keeps a runaway command from eating
// the harness's memory.
const maxOutput = 64 << 20

var errOutputTooLarge = fmt.Errorf("output exceeds %d MiB", maxOutput>>20)

// cappedBuffer collects a stream up to limit bytes; past that, writes fail
// so the copy feeding it stops. It is safe for concurrent use because
// client-go's executors may still be copying into it when they return
// early on a cancelled context.
type cappedBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf.Len()+len(p) > c.limit {
		return 0, errOutputTooLarge
	}
	return c.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (c *cappedBuffer) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}
