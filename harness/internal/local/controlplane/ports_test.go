package controlplane

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FreePorts gives distinct ports below the kernel's ephemeral range, free
// once it returns (a server can bind each).
func TestFreePortsAreBelowTheEphemeralRangeAndFree(t *testing.T) {
	ports, err := FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d handed out twice: %v", p, ports)
		}
		seen[p] = true
		if p < lowPortMin || p >= lowPortMax {
			t.Errorf("port %d is outside [%d, %d), where outgoing connections' local ports may take it", p, lowPortMin, lowPortMax)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d is not free after FreePorts: %v", p, err)
			continue
		}
		l.Close()
	}
}

// A port FreePorts handed out is claimed: this process does not hand it
// out again, and another meshproof process (here a child test binary
// sharing the cache) cannot claim it while this one lives.
func TestClaimedPortsAreNotHandedOutTwice(t *testing.T) {
	ports, err := FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	if portClaims.file == nil {
		t.Fatal("no claim file in meshproof's cache: ports are claimed within this process only")
	}
	if claimPort(ports[0]) {
		t.Errorf("port %d claimed again in the process that was handed it", ports[0])
	}
	child := func(port int) string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestClaimedPortsAreNotHandedOutTwice$")
		cmd.Env = append(os.Environ(), ClaimChildEnv+"="+strconv.Itoa(port))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := child(ports[1]); !strings.Contains(out, "refused") {
		t.Errorf("another process claimed port %d while this one holds it:\n%s", ports[1], out)
	}
	// A port no process holds (F_GETLK), which the child then claims.
	free := 0
	for p := lowPortMin; p < lowPortMax && free == 0; p++ {
		lock := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(p), Len: 1}
		if !portClaims.held[p] && unix.FcntlFlock(portClaims.file.Fd(), unix.F_GETLK, &lock) == nil && lock.Type == unix.F_UNLCK {
			free = p
		}
	}
	if out := child(free); !strings.Contains(out, "claimed") {
		t.Errorf("another process could not claim unclaimed port %d:\n%s", free, out)
	}
}
