//go:build !linux

package proc

import "errors"

var errNoProcfs = errors.New("process start times are only read on Linux")

// Without /proc no process can be proven meshproof's, so nothing is recorded
// and nothing is swept.
func startTime(int) (uint64, error)  { return 0, errNoProcfs }
func executable(int) (string, error) { return "", errNoProcfs }
func environHas(int, string) bool    { return false }
func killPid(int) error              { return errNoProcfs }
