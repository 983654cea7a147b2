package wire

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	echowire "github.com/meshproof/meshproof/fixtures/echo/wire"
)

// exchange sends one line carrying a canary from 127.0.0.1 to a server at
// addr (which echoes it back), as a probe would, and returns the result
// the probe would record.
func exchange(t *testing.T, addr string) echoapi.ProbeResult {
	t.Helper()
	canary := echoapi.NewCanary()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s\n", canary)
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return echoapi.ProbeResult{Canary: canary, Started: start, LatencyNS: time.Since(start).Nanoseconds(),
		LocalAddr: c.LocalAddr().String(), RemoteAddr: c.RemoteAddr().String()}
}

func lineEcho(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Write([]byte(line))
			c.Close()
		}
	})
	return ln.Addr().String()
}

// The loopback witness judges a real exchange from real packets (by the
// connection's own ports), a request whose connection went elsewhere as
// not-captured, and one without a canary as not-captured too.
func TestLoopbackWitness(t *testing.T) {
	if err := echowire.CheckCapability(); err != nil {
		if os.Getenv("CI") == "true" || !errors.Is(err, echowire.ErrNoCapability) {
			t.Fatal(err)
		}
		t.Skipf("skipped: needs CAP_NET_RAW: %v", err)
	}
	server := netip.AddrFrom4([4]byte{127, 78, byte(rand.IntN(256)), byte(2 + rand.IntN(250))})
	addr := lineEcho(t, server.String())
	l := NewLoopback()
	w := l.Watch([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, []netip.Addr{server})
	seen := exchange(t, addr)
	elsewhere := exchange(t, lineEcho(t, "127.0.0.1"))
	old := seen
	old.Canary = ""
	answers := w.Judge([]echoapi.ProbeResult{seen, elsewhere, old})
	if answers[0].Verdict != echoapi.WitnessPlaintext || answers[0].Packet == nil {
		// What the capture took in, to tell a packet never read from one
		// read but not followed (seen once in CI, never reproduced).
		t.Errorf("the exchange %s -> %s: %+v; the capture: %+v", seen.LocalAddr, seen.RemoteAddr, answers[0], w.capture.Stats())
	}
	if answers[1].Verdict != echoapi.WitnessNotCaptured || answers[1].Unavailable {
		t.Errorf("an exchange with another server: %+v", answers[1])
	}
	if answers[2].Verdict != echoapi.WitnessNotCaptured || answers[2].Detail != NoCanary {
		t.Errorf("a result without a canary: %+v", answers[2])
	}
	results := []echoapi.ProbeResult{seen, elsewhere}
	Stamp(results[:1], answers[:1])
	StampUnavailable(results, SimulatedDataPlane)
	if results[0].Witness.Verdict != echoapi.WitnessPlaintext || !results[1].Witness.Unavailable || results[1].Witness.Detail != SimulatedDataPlane {
		t.Errorf("stamped %+v and %+v", results[0].Witness, results[1].Witness)
	}
}
