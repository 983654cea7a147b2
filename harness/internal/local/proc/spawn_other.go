//go:build !linux

package proc

import (
	"os"
	"os/exec"
	"syscall"
)

// spawn starts cmd plainly: without a parent-death signal, a child outlives a
// program that is killed, and only StopOnSignal, Stop and the next program's
// sweep (Linux only) end it.
func spawn(cmd *exec.Cmd) error { return cmd.Start() }

func signalGroup(p *os.Process, sig syscall.Signal) error {
	if sig == syscall.SIGKILL {
		return p.Kill()
	}
	return p.Signal(sig)
}
