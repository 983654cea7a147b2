//go:build linux

package cluster_test

import (
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Nothing of the cluster listens beyond 127.0.0.1.
func TestPartsListenOnLoopbackOnly(t *testing.T) {
	for name, pid := range lc.Pids() {
		addrs, err := listeningAddresses(pid)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, a := range addrs {
			if !a.IP.IsLoopback() {
				t.Errorf("%s (pid %d) listens on %s", name, pid, a)
			}
		}
		t.Logf("%s listens on %v", name, addrs)
	}
}

// listeningAddresses reads which TCP addresses pid listens on: its socket
// inodes (/proc/<pid>/fd) matched against the kernel's socket tables.
func listeningAddresses(pid int) ([]*net.TCPAddr, error) {
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var addrs []*net.TCPAddr
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			// local_address is f[1], st is f[3] (0A = LISTEN), inode is f[9].
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			addr, err := parseProcAddr(f[1])
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, addr)
		}
	}
	return addrs, nil
}

// parseProcAddr decodes /proc/net/tcp's "0100007F:1F90": the IP as 32-bit
// words in host (little-endian) order, the port in hex.
func parseProcAddr(s string) (*net.TCPAddr, error) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(ipHex)
	if !ok || err != nil {
		return nil, fmt.Errorf("bad address %q", s)
	}
	for i := 0; i+4 <= len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return nil, err
	}
	return &net.TCPAddr{IP: net.IP(raw), Port: int(port)}, nil
}
