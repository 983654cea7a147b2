package report

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshproof/meshproof/harness/junit"
	"github.com/meshproof/meshproof/harness/results"
)

// ShardsDir holds, in a merged folder, each shard's diagnostics under
// shards/<i>/ (i from its run.json).
const ShardsDir = "shards"

// Merge combines the run folders of the shards of one run (`meshproof run
// --shard i/n`, one CI job each) into the folder out, as if one run had
// run every shard's scenarios: junit.xml with every planned testcase
// exactly once (one setup case), results.json with every observation and
// verdict, events.json with every event in time order, run.json, each
// shard's diagnostics under shards/<i>/, and report.html. It refuses
// folders that are not the shards of one run of one file: different
// suites or planned scenarios, a shard given twice, a shard missing, or
// a scenario run twice.
func Merge(out string, dirs ...string) (RunInfo, error) {
	if len(dirs) == 0 {
		return RunInfo{}, errors.New("merge: no run folder given")
	}
	dirs = slices.Clone(dirs)
	infos := make([]RunInfo, len(dirs))
	names := make([]string, len(dirs))
	for i, d := range dirs {
		if resolved, err := filepath.EvalSymlinks(d); err == nil {
			dirs[i] = resolved
		}
		info, err := ReadRunInfo(dirs[i])
		if err != nil {
			return RunInfo{}, fmt.Errorf("merge: %s is not a run folder of meshproof run: %w", d, err)
		}
		infos[i] = info
		names[i] = "shard " + cmp.Or(info.Shard, "(none)") + " (" + d + ")"
	}
	if err := checkShards(infos, names); err != nil {
		return RunInfo{}, err
	}
	merged := RunInfo{ID: filepath.Base(out), Suite: infos[0].Suite, Planned: infos[0].Planned, Scenarios: infos[0].Planned}
	merged.MergedFrom = append(merged.MergedFrom, dirs...)

	var reports []junit.Report
	for i, d := range dirs {
		r, err := junit.Read(filepath.Join(d, JUnitFile))
		if err != nil {
			return RunInfo{}, fmt.Errorf("merge: %s: %w", names[i], err)
		}
		reports = append(reports, r)
	}
	jr, err := junit.Merge(merged.Suite, merged.Planned, reports, names)
	if err != nil {
		return RunInfo{}, fmt.Errorf("merge: %w", err)
	}

	var obs []results.Observation
	var verdicts []results.Verdict
	var events []results.Event
	var setup *results.Verdict
	for i, d := range dirs {
		o, v, err := ReadResults(filepath.Join(d, ResultsFile))
		if err != nil && !errors.Is(err, ErrIncomplete) {
			return RunInfo{}, fmt.Errorf("merge: %s: %w", names[i], err)
		}
		obs = append(obs, o...)
		prefix := filepath.Join(ShardsDir, shardIndex(infos[i], i))
		for _, x := range v {
			if x.Diagnostics != "" {
				x.Diagnostics = filepath.Join(prefix, x.Diagnostics)
			}
			if x.Scenario == "" && x.Step == results.SetupStep {
				setup = mergeSetupVerdict(setup, x, names[i])
				continue
			}
			verdicts = append(verdicts, x)
		}
		e, err := ReadEvents(filepath.Join(d, EventsFile))
		if err != nil && !errors.Is(err, ErrIncomplete) && !errors.Is(err, fs.ErrNotExist) {
			return RunInfo{}, fmt.Errorf("merge: %s: %w", names[i], err)
		}
		events = append(events, e...)
		if err := copyTree(filepath.Join(d, "diagnostics"), filepath.Join(out, prefix, "diagnostics")); err != nil {
			return RunInfo{}, fmt.Errorf("merge: %s: %w", names[i], err)
		}
	}
	if setup != nil {
		verdicts = append([]results.Verdict{*setup}, verdicts...)
	}
	slices.SortStableFunc(events, func(a, b results.Event) int { return a.Time.Compare(b.Time) })
	slices.SortStableFunc(obs, func(a, b results.Observation) int { return a.Time.Compare(b.Time) })

	folder, err := Open(filepath.Dir(out), filepath.Base(out))
	if err != nil {
		return RunInfo{}, fmt.Errorf("merge: %w", err)
	}
	for _, o := range obs {
		folder.Record(o)
	}
	for _, v := range verdicts {
		folder.RecordVerdict(v)
	}
	for _, e := range events {
		folder.RecordEvent(e)
	}
	werr := errors.Join(junit.Write(jr, folder.JUnitPath()), WriteRunInfo(folder.Dir, merged))
	return merged, errors.Join(werr, folder.Close())
}

// checkShards checks that infos are the shards of one run, each once and
// none missing, together running every planned scenario once.
func checkShards(infos []RunInfo, names []string) error {
	first := infos[0]
	var errs []error
	count := 0
	shards := map[string]string{}
	ran := map[string]string{}
	for i, info := range infos {
		if info.Suite != first.Suite || !slices.Equal(info.Planned, first.Planned) {
			errs = append(errs, fmt.Errorf("%s ran %q planning %v, but %s ran %q planning %v: not shards of one run", names[i], info.Suite, info.Planned, names[0], first.Suite, first.Planned))
			continue
		}
		if info.Shard == "" {
			if len(infos) > 1 {
				errs = append(errs, fmt.Errorf("%s is a whole run, not a shard", names[i]))
			}
			continue
		}
		var index, n int
		if _, err := fmt.Sscanf(info.Shard, "%d/%d", &index, &n); err != nil {
			errs = append(errs, fmt.Errorf("%s: shard %q: %w", names[i], info.Shard, err))
			continue
		}
		if count != 0 && n != count {
			errs = append(errs, fmt.Errorf("%s is one of %d shards, others of %d", names[i], n, count))
		}
		count = n
		if prev, ok := shards[info.Shard]; ok {
			errs = append(errs, fmt.Errorf("shard %s given twice: %s and %s", info.Shard, prev, names[i]))
		}
		shards[info.Shard] = names[i]
		for _, sc := range info.Scenarios {
			if prev, ok := ran[sc]; ok {
				errs = append(errs, fmt.Errorf("scenario %s ran in both %s and %s", sc, prev, names[i]))
			}
			ran[sc] = names[i]
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("merge: %w", errors.Join(errs...))
	}
	var missing []string
	for k := 1; k <= count; k++ {
		if _, ok := shards[fmt.Sprintf("%d/%d", k, count)]; !ok {
			missing = append(missing, fmt.Sprintf("%d/%d", k, count))
		}
	}
	var notRun []string
	for _, sc := range first.Planned {
		if _, ok := ran[sc]; !ok && first.Shard != "" {
			notRun = append(notRun, sc)
		}
	}
	if len(missing) > 0 || len(notRun) > 0 {
		return fmt.Errorf("merge: shards missing: %s (scenarios no folder ran: %s)", strings.Join(missing, ", "), strings.Join(notRun, ", "))
	}
	return nil
}

// shardIndex names a shard's folder in a merged one: its index, else its
// position among the folders.
func shardIndex(info RunInfo, position int) string {
	if i, _, ok := strings.Cut(info.Shard, "/"); ok {
		return i
	}
	return fmt.Sprint(position + 1)
}

// mergeSetupVerdict folds one shard's setup verdict into the merged one:
// failed when any failed (each failure named by its shard), from the
// earliest start to the latest end.
func mergeSetupVerdict(into *results.Verdict, v results.Verdict, shard string) *results.Verdict {
	if v.Status == results.Failed {
		v.Reason = shard + ": " + v.Reason
	}
	if into == nil {
		return &v
	}
	end := into.Started.Add(into.Duration)
	if e := v.Started.Add(v.Duration); e.After(end) {
		end = e
	}
	if v.Started.Before(into.Started) {
		into.Started = v.Started
	}
	into.Duration = end.Sub(into.Started)
	if v.Status == results.Failed {
		if into.Status == results.Failed {
			into.Reason += "\n" + v.Reason
		} else {
			into.Status, into.Reason = results.Failed, v.Reason
		}
		if into.Diagnostics == "" {
			into.Diagnostics = v.Diagnostics
		}
	}
	return into
}

// copyTree copies the files under src (if it exists) to dst.
func copyTree(src, dst string) error {
	if _, err := os.Stat(src); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, dirMode)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, fileMode)
	})
}
