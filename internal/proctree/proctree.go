// Package proctree lists the processes below a process, from /proc, for
// tests that check an interrupted program left none of its children
// running (meshproof run --rehearse, go test with meshtest). Linux only;
// tests only.
package proctree

import (
	"os"
	"strconv"
	"strings"
)

// Process is a process seen below another: its pid, name, command line
// (argv, empty when it could not be read) and start time (so that a reused
// pid is not mistaken for it).
type Process struct {
	Pid   int
	Name  string
	Args  []string
	start string
}

// Alive reports whether the process still runs (a zombie does not).
func (p Process) Alive() bool {
	cur, _, ok := read(p.Pid)
	return ok && cur.start == p.start
}

// Descendants lists every live process below pid, breadth first.
func Descendants(pid int) ([]Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]Process{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ppid, ok := read(n); ok {
			children[ppid] = append(children[ppid], p)
		}
	}
	var out []Process
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c.Pid)
		}
	}
	return out, nil
}

// Names counts processes by name.
func Names(ps []Process) map[string]int {
	out := map[string]int{}
	for _, p := range ps {
		out[p.Name]++
	}
	return out
}

// Running counts processes by name and subcommand, the first argument when
// it is a word ("echo serve", "pilot-agent proxy"; a flag or path is left
// out): the way to tell a pod's long-running server from a short command
// run beside it (an out-of-mesh client's probe is "echo probe").
func Running(ps []Process) map[string]int {
	out := map[string]int{}
	for _, p := range ps {
		key := p.Name
		if len(p.Args) > 1 && isWord(p.Args[1]) {
			key += " " + p.Args[1]
		}
		out[key]++
	}
	return out
}

func isWord(s string) bool {
	for _, r := range s {
		if (r < 'a' || r > 'z') && r != '-' {
			return false
		}
	}
	return s != "" && s[0] != '-'
}

// read reads /proc/<pid>/stat: the name, the parent and the start time
// (field 22); a zombie counts as gone.
func read(pid int) (Process, int, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Process{}, 0, false
	}
	s := string(data)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return Process{}, 0, false
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 20 {
		return Process{}, 0, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	// fields[0] is the state (field 3); the start time is field 22.
	if fields[0] == "Z" {
		return Process{}, 0, false
	}
	return Process{Pid: pid, Name: s[open+1 : end], Args: cmdline(pid), start: fields[19]}, ppid, true
}

// cmdline reads /proc/<pid>/cmdline: argv, each ended by a NUL.
func cmdline(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}
