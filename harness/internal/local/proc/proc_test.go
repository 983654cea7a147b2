package proc_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// holdEnv turns the test binary into a program that starts one child through
// proc, prints its pid and waits to be signalled (see TestMain).
const holdEnv = "MESHPROOF_PROC_TEST_HOLD"

func TestMain(m *testing.M) {
	if os.Getenv(holdEnv) != "" {
		proc.StopOnSignal(5 * time.Second)
		p, err := proc.Start("sleeper", sleepPath(), []string{"1000"})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println("pid", p.Pid())
		select {}
	}
	os.Exit(m.Run())
}

func sleepPath() string {
	path, err := exec.LookPath("sleep")
	if err != nil {
		panic(err)
	}
	return path
}

func requireLinux(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signals and the sweep are Linux only")
	}
}

// gone reports whether pid no longer names a live process (a zombie counts as gone).
func gone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, within, true, func(context.Context) (bool, error) {
		return gone(pid), nil
	})
	if err != nil {
		t.Fatalf("process %d still running %s later", pid, within)
	}
}

// holdChild re-executes the test binary as a program holding one child and
// returns the program and the child's pid.
func holdChild(t *testing.T) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"=1", binaries.CacheEnv+"="+t.TempDir())
	// Its own group, as `go test` is at a terminal, so the test can send the group a
	// Ctrl-C without hitting itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the held child's pid: %v", err)
	}
	pidText, ok := strings.CutPrefix(strings.TrimSpace(line), "pid ")
	pid, err := strconv.Atoi(pidText)
	if !ok || err != nil {
		t.Fatalf("held program said %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return cmd, pid
}

func TestChildEndsWhenItsProgramIsKilled(t *testing.T) {
	requireLinux(t)
	program, child := holdChild(t)
	if gone(child) {
		t.Fatal("the child was not running")
	}
	if err := program.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = program.Wait()
	waitGone(t, child, 10*time.Second)
}

func TestChildIsStoppedWhenItsProgramIsInterrupted(t *testing.T) {
	requireLinux(t)
	program, child := holdChild(t)
	if err := syscall.Kill(-program.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := program.Wait()
	status, ok := err.(*exec.ExitError)
	if !ok || status.Sys().(syscall.WaitStatus).Signal() != syscall.SIGINT {
		t.Errorf("the interrupted program should die of SIGINT after stopping its children; it ended with %v", err)
	}
	waitGone(t, child, 10*time.Second)
}

// StopAll stops the newest child first: each child appends its name to a file
// when it gets SIGTERM, so the file's order is the stop order.
func TestStopAllStopsNewestFirst(t *testing.T) {
	requireLinux(t)
	order := filepath.Join(t.TempDir(), "order")
	var started []*proc.Process
	for _, name := range []string{"etcd", "apiserver", "scheduler"} {
		script := fmt.Sprintf(`trap 'echo %s >> %s; exit 0' TERM; while :; do sleep 0.05; done`, name, order)
		p, err := proc.Start(name, "/bin/sh", []string{"-c", script})
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, p)
	}
	time.Sleep(200 * time.Millisecond) // let the shells install their traps
	if err := proc.StopAll(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(data)), []string{"scheduler", "apiserver", "etcd"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("stop order = %v, want %v", got, want)
	}
	for _, p := range started {
		select {
		case <-p.Done():
		default:
			t.Errorf("%s still running after StopAll", p.Name())
		}
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	requireLinux(t)
	p, err := proc.Start("stubborn", "/bin/sh", []string{"-c", `trap '' TERM; while :; do sleep 0.05; done`}, proc.WithStopTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned before the child ended")
	}
	if err := p.ExitError(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("the child should have been killed, got %v", err)
	}
}

func TestTailKeepsTheChildsLastOutput(t *testing.T) {
	p, err := proc.Start("talker", "/bin/sh", []string{"-c", `i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done; echo last words >&2`})
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	tail := p.Tail()
	if !strings.HasSuffix(tail, "line 2999\nlast words\n") || strings.Contains(tail, "line 0\n") {
		t.Errorf("tail should end with the last lines and drop the first ones; got %d bytes ending %q", len(tail), tail[max(0, len(tail)-40):])
	}
	if err := p.ExitError(); err == nil || !strings.Contains(err.Error(), "status 0") {
		t.Errorf("ExitError = %v, want a report of status 0", err)
	}
}

// The sweep kills a dead run's child only when it is provably meshproof's: its
// binary in the cache and the dead run's marker in its environment.
func TestSweepKillsOnlyProvenLeftovers(t *testing.T) {
	requireLinux(t)
	cache := t.TempDir()
	t.Setenv(binaries.CacheEnv, cache)
	cachedSleep := filepath.Join(cache, "bin", "sleep")
	copyFile(t, sleepPath(), cachedSleep)

	// A run that has ended: its pid belonged to a process that has exited.
	deadRun := exec.Command("true")
	if err := deadRun.Run(); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%d-1", deadRun.Process.Pid)
	marker := "MESHPROOF_PROC_OWNER=" + id
	runDir, err := proc.RunDir()
	if err != nil {
		t.Fatal(err)
	}
	ownerDir := filepath.Join(runDir, id)
	scratch := filepath.Join(t.TempDir(), "meshproof-"+id)
	if err := os.MkdirAll(ownerDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(scratch, "etcd-data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ownerDir, "scratch"), []byte(scratch), 0o600); err != nil {
		t.Fatal(err)
	}

	leftover := startRecorded(t, ownerDir, cachedSleep, marker) // provably ours
	unmarked := startRecorded(t, ownerDir, cachedSleep, "")     // no marker
	outside := startRecorded(t, ownerDir, sleepPath(), marker)  // binary outside the cache

	if err := proc.Sweep(); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	waitGone(t, leftover, 5*time.Second)
	for name, pid := range map[string]int{"unmarked": unmarked, "outside the cache": outside} {
		if gone(pid) {
			t.Errorf("the sweep killed a process it cannot prove is meshproof's (%s)", name)
		}
	}
	for _, dir := range []string{ownerDir, scratch} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("the sweep left %s (%v)", dir, err)
		}
	}
}

// startRecorded starts path as a dead run's child would have been and records it.
func startRecorded(t *testing.T, ownerDir, path, marker string) int {
	t.Helper()
	cmd := exec.Command(path, "1000")
	cmd.Env = os.Environ()
	if marker != "" {
		cmd.Env = append(cmd.Env, marker)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	go func() { _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))[19]
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf(`{"name":"sleep","path":%q,"pid":%d,"start":%s}`, resolved, pid, start)
	if err := os.WriteFile(filepath.Join(ownerDir, strconv.Itoa(pid)+".json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	return pid
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}
