//go:build unix

package binaries

import (
	"os/exec"
	"syscall"
)

// killProcessGroupOnCancel makes cancellation stop the whole build: the go command
// runs the compiler and linker as children, which a plain kill of the go process
// would leave running.
func killProcessGroupOnCancel(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
