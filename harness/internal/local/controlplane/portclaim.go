package controlplane

import (
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
)

// portClaims keeps FreePorts from handing one port to two local stacks
// between its check and the server's bind: within this process by a set,
// across meshproof processes (the test packages of make test, which start
// clusters at once) by a POSIX record lock on the port's byte of one file
// in meshproof's cache. The kernel drops a process's record locks when it
// exits, so a crashed process leaves no claim behind. A claim lasts for
// the process's life: a port is handed out once per process.
//
// Without it, two processes picking at random from the same range could
// both find a port free and start servers on it a moment apart (CI: istiod
// exited with "bind: address already in use" on a port it had reserved).
var portClaims struct {
	sync.Mutex
	held map[int]bool // nil until the first claim opens the file
	file *os.File     // nil when the cache cannot be used: the set alone then
}

// portClaimFile is the file whose bytes are locked, one per port.
const portClaimFile = "ports.lock"

// claimPort claims port for this process; false if it is already claimed
// here or by another meshproof process.
func claimPort(port int) bool {
	portClaims.Lock()
	defer portClaims.Unlock()
	if portClaims.held[port] {
		return false
	}
	if portClaims.held == nil {
		portClaims.held = map[int]bool{}
		if root, err := binaries.CacheRoot(); err == nil && os.MkdirAll(root, 0o755) == nil {
			// Kept open for the process's life: closing any descriptor
			// of the file would drop every lock the process holds on it.
			portClaims.file, _ = os.OpenFile(filepath.Join(root, portClaimFile), os.O_CREATE|os.O_RDWR, 0o644)
		}
	}
	if f := portClaims.file; f != nil {
		lock := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(port), Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lock); err != nil {
			return false // another process holds it (EAGAIN/EACCES)
		}
	}
	portClaims.held[port] = true
	return true
}
