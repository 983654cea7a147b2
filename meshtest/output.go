package meshtest

import (
	"io"
	"sync"
	"testing"
)

// testOutput writes the run's log lines into the output of the test that is
// running, so go test -v and go test -json show each line under the step
// (or scenario, or whole run) it belongs to. Tests are pushed as they start
// and popped before they end; a line written once every test has ended
// (a background goroutine's, say) is dropped, since testing panics on it.
//
// One stack fits scenarios that run one after another; parallel scenarios
// would route lines by their scenario attribute instead.
type testOutput struct {
	mu     sync.Mutex
	stack  []io.Writer
	closed bool
}

// push makes t's output the destination until pop is called, which must
// happen before t ends.
func (o *testOutput) push(t testing.TB) (pop func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stack = append(o.stack, t.Output())
	n := len(o.stack)
	return func() {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.stack = o.stack[:n-1]
	}
}

// close drops every later line.
func (o *testOutput) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
}

func (o *testOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || len(o.stack) == 0 {
		return len(p), nil
	}
	// A test's Output goes to its nearest running parent once the test has
	// ended, so a stale entry still lands somewhere sensible.
	return o.stack[len(o.stack)-1].Write(p)
}
