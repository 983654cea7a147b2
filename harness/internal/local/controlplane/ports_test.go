package controlplane

import (
	"net"
	"strconv"
	"testing"
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
