//go:build linux

package proc

import (
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce     sync.Once
	spawnRequests = make(chan spawnRequest)
)

// spawn starts cmd so that the kernel SIGKILLs it when this program dies.
//
// Linux sends the parent-death signal when the *thread* that forked the child
// exits, not the process. Go may end an OS thread whose goroutine exits while
// locked to it, so every fork happens on one goroutine that locks its thread
// and never returns: that thread, and with it every child, lasts exactly as
// long as the program.
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread()
			for req := range spawnRequests {
				req.done <- req.cmd.Start()
			}
		}()
	})
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a terminal's Ctrl-C reaches only this program,
		// which stops the children in order (StopOnSignal).
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	done := make(chan error, 1)
	spawnRequests <- spawnRequest{cmd: cmd, done: done}
	return <-done
}

func signalGroup(p *os.Process, sig syscall.Signal) error {
	if err := syscall.Kill(-p.Pid, sig); err != nil {
		if err == syscall.ESRCH {
			return os.ErrProcessDone
		}
		return err
	}
	return nil
}
