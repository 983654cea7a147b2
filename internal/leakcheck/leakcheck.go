// Package leakcheck fails a test binary whose tests leave goroutines
// running: servers, connections and processes a test starts, it must stop.
// It is imported only from TestMain functions.
//
// The check compares goroutine counts before and after the tests rather
// than identities, so goroutines a dependency starts once and keeps (klog's
// flusher, say) must be started before Run, in TestMain, to be tolerated.
package leakcheck

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// settleTimeout is how long goroutines get to unwind after the tests end:
// connections a test closed take a moment to go.
const settleTimeout = 10 * time.Second

// Run runs m's tests and returns the code to pass to os.Exit: the tests'
// own, else 1 when goroutines started during the tests still run
// settleTimeout after them, with every goroutine's stack printed to stderr.
// Fuzzing is exempt: the fuzzing engine keeps a goroutine of its own.
func Run(m *testing.M) int {
	baseline := runtime.NumGoroutine()
	code := m.Run()
	if code != 0 || fuzzing() {
		return code
	}
	if err := settle(context.Background(), baseline, settleTimeout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		// Debug level 1 groups identical stacks, which keeps a leak of
		// many connections readable.
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
		return 1
	}
	return 0
}

// fuzzing reports whether the binary runs with -test.fuzz.
func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// settle waits, up to limit, for the goroutine count to fall back to
// baseline.
func settle(ctx context.Context, baseline int, limit time.Duration) error {
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, limit, true, func(context.Context) (bool, error) {
		return runtime.NumGoroutine() <= baseline, nil
	})
	if err != nil {
		return fmt.Errorf("goroutines leaked: %d running %s after the tests, %d before them", runtime.NumGoroutine(), limit, baseline)
	}
	return nil
}
