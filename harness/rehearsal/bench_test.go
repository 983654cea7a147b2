package rehearsal_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/run"
	"github.com/meshproof/meshproof/harness/scenario"
)

// BenchmarkDefaultScenarios measures what `make rehearse` of
// scenarios.yaml costs, end to end (a new local cluster, Istio, every
// scenario, teardown), several ways back to back in one run on one
// machine: --parallel 1 (every scenario in turn, as before scenarios ran
// at once), the default parallelism, two shards at once (each on a cluster
// of its own, competing for this machine's cores, as two CI jobs on one
// runner would) and each of the two shards alone (what each job of a
// matrix on runners of its own takes). The machine's load average is
// reported beside each figure: other processes slow every variant.
//
//	go test ./harness/rehearsal -run '^$' -bench DefaultScenarios -benchtime 1x -timeout 30m
func BenchmarkDefaultScenarios(b *testing.B) {
	// rehearse is one rehearsal of scenarios.yaml on a local cluster of
	// its own; safe to call from several goroutines.
	rehearse := func(dir string, opts ...run.Option) (time.Duration, error) {
		s, err := scenario.LoadFile("../../scenarios.yaml")
		if err != nil {
			return 0, err
		}
		start := time.Now()
		r, err := run.New(s, append(append([]run.Option{run.WithReports(dir), run.WithLogger(slog.New(slog.DiscardHandler))}, opts...),
			rehearsal.New(rehearsal.WithBuildLog(os.Stderr)).RunOptions()...)...)
		if err != nil {
			return 0, err
		}
		sum, err := r.Execute(context.Background(), context.Background())
		if err == nil && !sum.OK() {
			err = fmt.Errorf("rehearsal %s failed: %+v", r.Dir(), sum)
		}
		return time.Since(start), err
	}
	one := func(b *testing.B, opts ...run.Option) time.Duration {
		b.Helper()
		took, err := rehearse(b.TempDir(), opts...)
		if err != nil {
			b.Fatal(err)
		}
		return took
	}
	report := func(b *testing.B, took time.Duration) {
		b.ReportMetric(took.Seconds(), "s/rehearsal")
		b.ReportMetric(load1(), "load1")
	}
	b.Run("parallel=1", func(b *testing.B) {
		for b.Loop() {
			report(b, one(b, run.WithParallel(1)))
		}
	})
	b.Run("parallel=default", func(b *testing.B) {
		for b.Loop() {
			report(b, one(b, run.WithParallel(run.DefaultParallel)))
		}
	})
	b.Run("shards=2,at-once", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i := range 2 {
				dir := b.TempDir()
				wg.Go(func() {
					_, errs[i] = rehearse(dir, run.WithParallel(run.DefaultParallel), run.WithShard(run.Shard{Index: i + 1, Count: 2}))
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				b.Fatal(err)
			}
			report(b, time.Since(start))
		}
	})
	for i := 1; i <= 2; i++ {
		b.Run(fmt.Sprintf("shard=%d/2,alone", i), func(b *testing.B) {
			for b.Loop() {
				report(b, one(b, run.WithParallel(run.DefaultParallel), run.WithShard(run.Shard{Index: i, Count: 2})))
			}
		})
	}
}

// load1 is the machine's load average over the last minute.
func load1() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	var v float64
	if f := strings.Fields(string(data)); len(f) > 0 {
		if _, err := fmt.Sscan(f[0], &v); err != nil {
			return -1
		}
	}
	return v
}
