package report

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// RunFile describes the run a folder holds: which scenarios it was to run
// and, for a shard of a run split across CI jobs, which part. Merge reads
// it to check that the shards it combines are the parts of one run.
const RunFile = "run.json"

// RunInfo is the content of run.json.
type RunInfo struct {
	// ID is the run id (the folder's name).
	ID string `json:"id"`
	// Suite is the JUnit suite's name, which names the scenario file.
	Suite string `json:"suite"`
	// Shard is "i/n" for one of n shards; empty for a whole run.
	Shard string `json:"shard,omitempty"`
	// Planned are the scenarios the whole run covers, in file order: for a
	// shard, those of every shard together.
	Planned []string `json:"planned"`
	// Scenarios are the scenarios this folder's run ran (its shard's).
	Scenarios []string `json:"scenarios"`
	// MergedFrom are the folders Merge combined into this one.
	MergedFrom []string `json:"mergedFrom,omitempty"`
}

// WriteRunInfo writes dir/run.json.
func WriteRunInfo(dir string, info RunInfo) error {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, RunFile)
	if err := os.WriteFile(path+".tmp", append(data, '\n'), fileMode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return os.Rename(path+".tmp", path)
}

// ReadRunInfo reads dir/run.json.
func ReadRunInfo(dir string) (RunInfo, error) {
	var info RunInfo
	path := filepath.Join(dir, RunFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}
