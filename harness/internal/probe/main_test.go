package probe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/klog/v2"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/internal/leakcheck"
)

// echoBinary is the real echo program, built once for the package's tests:
// the scripted transports run it where a pod would.
var echoBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "probe-test-echo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	echoBinary = filepath.Join(dir, "echo")
	build := exec.Command("go", "build", "-trimpath", "-o", echoBinary, "../../../fixtures/echo")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building echo: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	// client-go and the fake server's stream libraries log every torn-down
	// connection (the deadline tests tear some down on purpose); the tests
	// assert on errors, not on that noise.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	code := leakcheck.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// Pods of the tests. The out-of-mesh pod is the one peercert runs in.
var (
	clientPod = results.Pod{Namespace: "meshproof", Name: "service-a-7d9c-abcde", IP: "10.244.0.11"}
	legacyPod = results.Pod{Namespace: "legacy", Name: "legacy-5f6b-fghij", IP: "10.244.0.12"}
)

// runLocalProcess runs cmd on this machine the way the pod would: the
// fixtures' app container has the echo program at image.BinaryPath and
// nothing else. It returns the exit code of a process that ran and exited,
// or err when there was no such process or it did not exit by itself.
func runLocalProcess(ctx context.Context, cmd Command, stdin io.Reader, stdout, stderr io.Writer) (code int, err error) {
	if cmd.Container != manifests.ContainerName || len(cmd.Argv) == 0 || cmd.Argv[0] != image.BinaryPath {
		return 0, fmt.Errorf("exec: %q: executable file not found in $PATH of container %s", strings.Join(cmd.Argv, " "), cmd.Container)
	}
	c := exec.CommandContext(ctx, echoBinary, cmd.Argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	c.Env = []string{"POD_NAME=" + cmd.Pod.Name, "POD_NAMESPACE=" + cmd.Pod.Namespace, "SERVICE_ACCOUNT=test"}
	c.WaitDelay = 5 * time.Second
	err = c.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exitErr) && exitErr.Exited():
		return exitErr.ExitCode(), nil
	default:
		return 0, err
	}
}

// runLocal is an Execer's Exec over runLocalProcess, with errors in the
// shape the real transport gives them.
func runLocal(ctx context.Context, cmd Command) (stdout, stderr []byte, err error) {
	var outBuf, errBuf bytes.Buffer
	var stdin io.Reader
	if cmd.Stdin != nil {
		stdin = bytes.NewReader(cmd.Stdin)
	}
	code, err := runLocalProcess(ctx, cmd, stdin, &outBuf, &errBuf)
	if err == nil && code != 0 {
		err = utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	if err != nil {
		return outBuf.Bytes(), errBuf.Bytes(), newExecError(cmd, errBuf.Bytes(), err)
	}
	return outBuf.Bytes(), errBuf.Bytes(), nil
}

// scriptedExecer is the in-pod transport of the unit tests: it records
// every command with its context's deadline and answers with run, which
// defaults to running the real echo program locally.
type scriptedExecer struct {
	run func(ctx context.Context, cmd Command) (stdout, stderr []byte, err error)

	mu        sync.Mutex
	calls     []Command
	deadlines []time.Time
}

func (s *scriptedExecer) Exec(ctx context.Context, cmd Command) ([]byte, []byte, error) {
	deadline, _ := ctx.Deadline()
	s.mu.Lock()
	s.calls = append(s.calls, cmd)
	s.deadlines = append(s.deadlines, deadline)
	s.mu.Unlock()
	if s.run == nil {
		return runLocal(ctx, cmd)
	}
	return s.run(ctx, cmd)
}

func (s *scriptedExecer) recorded() ([]Command, []time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.calls...), append([]time.Time(nil), s.deadlines...)
}

// answer scripts a fixed reply.
func answer(stdout string, err error) func(context.Context, Command) ([]byte, []byte, error) {
	return func(_ context.Context, cmd Command) ([]byte, []byte, error) {
		if err != nil {
			return []byte(stdout), nil, newExecError(cmd, nil, err)
		}
		return []byte(stdout), nil, nil
	}
}

// startEchoServe runs the real `echo serve` on a free loopback port as the
// pod podName would, and returns its address.
func startEchoServe(t testing.TB, podName string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, echoBinary, "serve", "--host", "127.0.0.1", "--ports", "0")
	cmd.Env = []string{"POD_NAME=" + podName, "POD_NAMESPACE=meshproof", "SERVICE_ACCOUNT=service-b"}
	// SIGTERM is how the kubelet stops it, and it drains on it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("echo serve printed no address: %v", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening on ")
	if !ok {
		t.Fatalf("echo serve printed %q, want its address", line)
	}
	return addr
}

// startXFCCProxy stands in for the server's sidecar after it terminated
// mutual TLS: it forwards to backend and adds the XFCC element Envoy would,
// naming the client's SPIFFE ID.
func startXFCCProxy(t testing.TB, backend, proxyID, clientID string) string {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: backend}
	transport := &http.Transport{DisableKeepAlives: true}
	proxy := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Header.Set(echoapi.XFCCHeader, echoapi.FormatXFCC([]echoapi.XFCCElement{{By: proxyID, Hash: "00ff", URI: clientID}}))
		},
		Transport: transport,
	})
	t.Cleanup(func() {
		proxy.Close()
		transport.CloseIdleConnections()
	})
	return proxy.Listener.Addr().String()
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
