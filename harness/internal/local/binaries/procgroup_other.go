//go:build !unix

package binaries

import "os/exec"

// killProcessGroupOnCancel keeps exec's default cancellation where process groups
// are not available.
func killProcessGroupOnCancel(cmd *exec.Cmd) {}
