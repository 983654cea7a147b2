package leakcheck

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestSettleFailsWhileAGoroutineRunsAndPassesOnceItEnds(t *testing.T) {
	baseline := runtime.NumGoroutine()
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-stop
	}()

	err := settle(t.Context(), baseline, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "goroutines leaked") {
		t.Fatalf("settle with a goroutine still running = %v, want a leak error", err)
	}

	close(stop)
	<-stopped
	if err := settle(t.Context(), baseline, 10*time.Second); err != nil {
		t.Fatalf("settle after the goroutine ended: %v", err)
	}
}

func TestMain(m *testing.M) {
	// The package checks itself.
	os.Exit(Run(m))
}
