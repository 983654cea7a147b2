package schedule

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Shard is one of Count parts of a file's scenarios (Index from 1), each
// run by a CI job of its own on a cluster of its own.
type Shard struct{ Index, Count int }

// ParseShard reads "i/n" (1 ≤ i ≤ n).
func ParseShard(s string) (Shard, error) {
	i, n, ok := strings.Cut(s, "/")
	index, err1 := strconv.Atoi(i)
	count, err2 := strconv.Atoi(n)
	if !ok || err1 != nil || err2 != nil || count < 1 || index < 1 || index > count {
		return Shard{}, fmt.Errorf("shard %q: want i/n with 1 <= i <= n, e.g. 1/2", s)
	}
	return Shard{Index: index, Count: count}, nil
}

func (sh Shard) String() string { return fmt.Sprintf("%d/%d", sh.Index, sh.Count) }

// Select returns the scenarios (of s, selected by the caller) that this
// shard runs, in the order given. Every expansion of a matrix is a
// scenario of its own here, as in JUnit: expansions are spread over the
// shards like any other scenarios.
//
// The split depends only on the scenarios' names and estimated
// durations, never on their order in the file: each scenario, longest
// first (then by name), goes to the shard with the least estimated time
// so far (then the lowest index). Reordering the file moves nothing;
// adding or changing a scenario may move others, so shards of one run
// must be selected from the same file.
func (sh Shard) Select(s *scenario.Suite, scenarios []*scenario.Scenario) []*scenario.Scenario {
	if sh.Count <= 1 {
		return scenarios
	}
	type item struct {
		name string
		est  time.Duration
	}
	items := make([]item, len(scenarios))
	for i, sc := range scenarios {
		items[i] = item{sc.Name, estimate(s, sc)}
	}
	slices.SortFunc(items, func(a, b item) int {
		return cmp.Or(cmp.Compare(b.est, a.est), cmp.Compare(a.name, b.name))
	})
	load := make([]time.Duration, sh.Count)
	mine := map[string]bool{}
	for _, it := range items {
		best := 0
		for k := range load {
			if load[k] < load[best] {
				best = k
			}
		}
		load[best] += it.est
		if best == sh.Index-1 {
			mine[it.name] = true
		}
	}
	var out []*scenario.Scenario
	for _, sc := range scenarios {
		if mine[sc.Name] {
			out = append(out, sc)
		}
	}
	return out
}
