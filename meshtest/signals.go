package meshtest

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// interrupts turns SIGINT and SIGTERM into an orderly stop of the runs in
// progress: the first signal stops their steps, a second their teardown.
// The tests then end as failed and report as usual (go test -json stays
// whole), and every later run in the test binary is skipped, so go test
// ends soon. Outside runs the signals keep their default action.
var interrupts struct {
	mu     sync.Mutex
	active int
	ch     chan os.Signal
	done   chan struct{}
	got    os.Signal     // the first signal, for the binary's lifetime
	first  chan struct{} // closed at the first signal
	second chan struct{} // closed at the second
}

// interrupted is the signal that interrupted a run of this test binary,
// nil if none did.
func interrupted() os.Signal {
	interrupts.mu.Lock()
	defer interrupts.mu.Unlock()
	return interrupts.got
}

// watchSignals registers a run until release is called.
func watchSignals() (first, second <-chan struct{}, release func()) {
	in := &interrupts
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.active == 0 {
		in.ch, in.done = make(chan os.Signal, 2), make(chan struct{})
		in.first, in.second = make(chan struct{}), make(chan struct{})
		signal.Notify(in.ch, os.Interrupt, syscall.SIGTERM)
		go forward(in.ch, in.done, in.first, in.second)
	}
	in.active++
	first, second = in.first, in.second
	var once sync.Once
	return first, second, func() { once.Do(unwatch) }
}

// forward closes first at the first signal and second at the next.
func forward(ch <-chan os.Signal, done <-chan struct{}, first, second chan struct{}) {
	for _, c := range []chan struct{}{first, second} {
		select {
		case sig := <-ch:
			interrupts.mu.Lock()
			if interrupts.got == nil {
				interrupts.got = sig
			}
			interrupts.mu.Unlock()
			close(c)
		case <-done:
			return
		}
	}
}

func unwatch() {
	in := &interrupts
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.active--; in.active == 0 {
		signal.Stop(in.ch)
		close(in.done)
	}
}
