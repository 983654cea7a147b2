package wire

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	echowire "github.com/meshproof/meshproof/fixtures/echo/wire"
)

// Loopback is the witness in this process, capturing on the loopback
// interface: where a rehearsal's real proxyless pods (pilot-agent and
// grpc-go at their 127.0.0.0/8 addresses) really talk.
type Loopback struct {
	limits echowire.Limits
	log    *slog.Logger

	once sync.Once
	err  error
}

// LoopbackOption configures a Loopback.
type LoopbackOption func(*Loopback)

// WithLogger receives the one line saying the witness cannot capture.
func WithLogger(l *slog.Logger) LoopbackOption { return func(w *Loopback) { w.log = l } }

// NewLoopback returns the loopback witness.
func NewLoopback(opts ...LoopbackOption) *Loopback {
	l := &Loopback{log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Err is nil when this process can capture, else why not (typically
// fixtures/echo/wire.ErrNoCapability). The first call that finds it
// missing logs it, once for the life of the witness.
func (l *Loopback) Err() error {
	l.once.Do(func() {
		l.err = echowire.CheckCapability()
		if l.err != nil {
			l.log.Warn("the wire witness cannot capture: requests of the real data plane carry not-captured", "error", l.err)
		}
	})
	return l.err
}

// LoopbackWatch is one capture around one probe batch.
type LoopbackWatch struct {
	capture          *echowire.Capture
	clients, servers []netip.Addr
	err              error
}

// Watch starts capturing on the loopback interface between every client
// and server address. When the witness cannot capture, the watch's Judge
// answers not-captured (unavailable) for every request, with the reason.
func (l *Loopback) Watch(clients, servers []netip.Addr) *LoopbackWatch {
	w := &LoopbackWatch{clients: clients, servers: servers}
	if w.err = l.Err(); w.err != nil {
		return w
	}
	var ps []echowire.Pair
	for _, p := range pairs(clients, servers) {
		ps = append(ps, echowire.Pair{A: netip.MustParseAddr(p.A), B: netip.MustParseAddr(p.B)})
	}
	w.capture, w.err = echowire.Start(echowire.Config{Pairs: ps, Interface: loopbackName(), Limits: l.limits})
	return w
}

// Judge ends the capture and returns one answer per result, in order.
func (w *LoopbackWatch) Judge(results []echoapi.ProbeResult) []echoapi.WitnessAnswer {
	if w.err != nil {
		out := make([]echoapi.WitnessAnswer, len(results))
		for i := range out {
			out[i] = echoapi.UnavailableWitness(fmt.Sprint(i), "the wire witness cannot capture: "+w.err.Error())
		}
		return out
	}
	var reqs []echoapi.WitnessRequest
	for i, r := range results {
		reqs = append(reqs, requests(fmt.Sprint(i), r, w.clients, w.servers)...)
	}
	rep := w.capture.Report(reqs)
	return merge(len(results), rep.Answers)
}

// Stop ends the capture without judging (a batch that did not run).
func (w *LoopbackWatch) Stop() {
	if w.capture != nil {
		w.capture.Stop()
	}
}
