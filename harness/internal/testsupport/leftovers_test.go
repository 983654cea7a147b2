package testsupport_test

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
	"github.com/meshproof/meshproof/harness/internal/testsupport"
)

// holdEnv makes the test binary a test process that starts a control plane,
// prints its pids and waits to be signalled (TestMain runs holdControlPlane).
const holdEnv = "MESHPROOF_TESTENV_HOLD"

func TestMain(m *testing.M) {
	if os.Getenv(holdEnv) != "" {
		os.Exit(holdControlPlane())
	}
	os.Exit(m.Run())
}

// holdControlPlane starts a control plane the way a test package's TestMain
// does (testsupport.Main) and blocks with it running.
func holdControlPlane() int {
	return testsupport.Main(&blockingTests{}, func(env *testsupport.Env) error {
		etcd, apiServer := env.ProcessIDs()
		fmt.Printf("pids %d %d\n", etcd, apiServer)
		return nil
	})
}

// blockingTests stands for a package's tests that are still running when the
// signal comes.
type blockingTests struct{}

func (*blockingTests) Run() int { select {} }

// The processes of a test's control plane must end with the test process: after
// a Ctrl-C (SIGINT to its process group) and after SIGKILL.
func TestControlPlaneEndsWithItsTestProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signals are Linux only")
	}
	for _, tc := range []struct {
		name string
		send func(pid int) error
	}{
		{"SIGINT to the process group", func(pid int) error { return syscall.Kill(-pid, syscall.SIGINT) }},
		{"SIGKILL", func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testProcess, pids := startHoldingTestProcess(t)
			for _, pid := range pids {
				if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || !isControlPlaneBinary(exe) {
					t.Fatalf("pid %d is not etcd or kube-apiserver: %q %v", pid, exe, err)
				}
			}
			if err := tc.send(testProcess.Process.Pid); err != nil {
				t.Fatal(err)
			}
			_ = testProcess.Wait()
			for _, pid := range pids {
				err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
					return processGone(pid), nil
				})
				if err != nil {
					t.Errorf("process %d of the killed test process's control plane is still running", pid)
				}
			}
		})
	}
}

func isControlPlaneBinary(path string) bool {
	base := filepath.Base(path)
	return base == binaries.Etcd || base == binaries.KubeAPIServer
}

// startHoldingTestProcess re-executes this test binary as a test process that
// holds a control plane, in its own process group as `go test` is at a terminal.
func startHoldingTestProcess(t *testing.T) (*exec.Cmd, []int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(stdout)
	var pids []int
	for lines.Scan() {
		if fields, ok := strings.CutPrefix(lines.Text(), "pids "); ok {
			for _, f := range strings.Fields(fields) {
				pid, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("bad pid line %q", lines.Text())
				}
				pids = append(pids, pid)
			}
			break
		}
	}
	if len(pids) != 2 {
		t.Fatalf("the test process did not report its control plane's pids (%v)", lines.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return cmd, pids
}

// processGone reports whether pid no longer names a live process; a zombie,
// which its new parent has yet to reap, counts as gone.
func processGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}
