package probe

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/rest"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"
	"k8s.io/streaming/pkg/httpstream/wsstream"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/results"
)

// fakeExecAPI serves the pods/exec subresource the way the API server and
// kubelet do together, over WebSocket (v5.channel.k8s.io) and SPDY
// (v4.channel.k8s.io), running each command with runLocalProcess. With
// webSocket false it refuses the WebSocket upgrade as an API server that
// predates it would, which is what makes the client fall back to SPDY.
type fakeExecAPI struct {
	t         testing.TB
	webSocket bool
	// ctx ends the commands still running when the test ends.
	ctx context.Context

	mu   sync.Mutex
	seen []seenExec
}

// seenExec is one exec request as the server received it.
type seenExec struct {
	method    string
	webSocket bool
	cmd       Command
	stdin     bool
}

func startFakeExecAPI(t testing.TB, webSocket bool) (*fakeExecAPI, *rest.Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeExecAPI{t: t, webSocket: webSocket, ctx: ctx}
	srv := httptest.NewServer(f)
	t.Cleanup(func() {
		cancel()
		srv.Close()
	})
	return f, &rest.Config{Host: srv.URL}
}

func (f *fakeExecAPI) requests() []seenExec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenExec(nil), f.seen...)
}

func (f *fakeExecAPI) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	// /api/v1/namespaces/{namespace}/pods/{name}/exec
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	if len(parts) != 7 || parts[0] != "api" || parts[1] != "v1" || parts[2] != "namespaces" || parts[4] != "pods" || parts[6] != "exec" {
		http.NotFound(w, req)
		return
	}
	q := req.URL.Query()
	cmd := Command{Pod: results.Pod{Namespace: parts[3], Name: parts[5]}, Container: q.Get("container"), Argv: q["command"]}
	isWS := wsstream.IsWebSocketRequest(req)
	f.mu.Lock()
	f.seen = append(f.seen, seenExec{method: req.Method, webSocket: isWS, cmd: cmd, stdin: q.Get("stdin") == "true"})
	f.mu.Unlock()
	switch {
	case isWS && f.webSocket:
		f.serveWebSocket(w, req, cmd, q.Get("stdin") == "true")
	case isWS:
		http.Error(w, "WebSocket exec is not supported by this server", http.StatusBadRequest)
	case req.Method == http.MethodPost && httpstream.IsUpgradeRequest(req):
		f.serveSPDY(w, req, cmd, q.Get("stdin") == "true")
	default:
		http.Error(w, "exec needs an upgrade", http.StatusBadRequest)
	}
}

// status is what the kubelet reports on the error stream when a command
// ends: success, a non-zero exit code, or why it could not be run.
func status(code int, err error) []byte {
	var s metav1.Status
	switch {
	case err != nil:
		s = metav1.Status{Status: metav1.StatusFailure, Message: err.Error()}
	case code != 0:
		s = metav1.Status{
			Status:  metav1.StatusFailure,
			Reason:  remotecommandconsts.NonZeroExitCodeReason,
			Message: "command terminated with non-zero exit code: exit status " + strconv.Itoa(code),
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{
				Type:    remotecommandconsts.ExitCodeCauseType,
				Message: strconv.Itoa(code),
			}}},
		}
	default:
		s = metav1.Status{Status: metav1.StatusSuccess}
	}
	b, _ := json.Marshal(s)
	return b
}

func (f *fakeExecAPI) serveWebSocket(w http.ResponseWriter, req *http.Request, cmd Command, withStdin bool) {
	stdinChannel := wsstream.IgnoreChannel
	if withStdin {
		stdinChannel = wsstream.ReadChannel
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		remotecommandconsts.StreamProtocolV5Name: {
			Binary: true,
			Channels: []wsstream.ChannelType{
				stdinChannel,            // 0 stdin
				wsstream.WriteChannel,   // 1 stdout
				wsstream.WriteChannel,   // 2 stderr
				wsstream.WriteChannel,   // 3 error (exit status)
				wsstream.IgnoreChannel}, // 4 resize
		},
	})
	conn.SetIdleTimeout(time.Minute)
	_, streams, err := conn.Open(w, req)
	if err != nil {
		f.t.Errorf("opening the WebSocket exec streams: %v", err)
		return
	}
	defer conn.Close()
	// An empty frame on stdout tells the client the streams are up.
	streams[1].Write(nil)
	var stdin io.Reader
	if withStdin {
		stdin = streams[0]
	}
	code, runErr := runLocalProcess(f.ctx, cmd, stdin, streams[1], streams[2])
	streams[3].Write(status(code, runErr))
}

func (f *fakeExecAPI) serveSPDY(w http.ResponseWriter, req *http.Request, cmd Command, withStdin bool) {
	if _, err := httpstream.Handshake(req, w, []string{remotecommandconsts.StreamProtocolV4Name}); err != nil {
		return // Handshake has answered the client
	}
	created := make(chan httpstream.Stream, 4)
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, req, func(s httpstream.Stream, _ <-chan struct{}) error {
		created <- s
		return nil
	})
	if conn == nil {
		return // UpgradeResponse has answered the client
	}
	defer conn.Close()
	want := 3 // error, stdout, stderr
	if withStdin {
		want++
	}
	streams := map[string]httpstream.Stream{}
	for len(streams) < want {
		select {
		case s := <-created:
			streams[s.Headers().Get(corev1.StreamType)] = s
		case <-f.ctx.Done():
			return
		case <-time.After(30 * time.Second):
			f.t.Errorf("SPDY exec: only %d of %d streams were opened", len(streams), want)
			return
		}
	}
	var stdin io.Reader
	if withStdin {
		stdin = streams[corev1.StreamTypeStdin]
	}
	code, runErr := runLocalProcess(f.ctx, cmd, stdin, streams[corev1.StreamTypeStdout], streams[corev1.StreamTypeStderr])
	streams[corev1.StreamTypeStdout].Close()
	streams[corev1.StreamTypeStderr].Close()
	streams[corev1.StreamTypeError].Write(status(code, runErr))
	streams[corev1.StreamTypeError].Close()
}

func TestNewKubeExecerNeedsConfig(t *testing.T) {
	if _, err := NewKubeExecer(nil); err == nil {
		t.Fatal("want an error for a nil rest.Config")
	}
}

func TestExecURL(t *testing.T) {
	e, err := NewKubeExecer(&rest.Config{Host: "https://203.0.113.7:6443", BearerToken: "t"})
	if err != nil {
		t.Fatal(err)
	}
	k := e.(*kubeExecer)
	for _, tc := range []struct {
		stdin     []byte
		wantStdin bool
	}{{[]byte("{}"), true}, {[]byte{}, true}, {nil, false}} {
		u := k.execURL(Command{Pod: clientPod, Container: "app", Argv: []string{"/echo", "peercert", "--addr", "10.0.0.1:80"}, Stdin: tc.stdin})
		if u.Scheme != "https" || u.Host != "203.0.113.7:6443" || u.Path != "/api/v1/namespaces/meshproof/pods/service-a-7d9c-abcde/exec" {
			t.Errorf("exec URL %s", u)
		}
		q := u.Query()
		if q.Get("container") != "app" || !reflect.DeepEqual(q["command"], []string{"/echo", "peercert", "--addr", "10.0.0.1:80"}) ||
			q.Get("stdout") != "true" || q.Get("stderr") != "true" || q.Get("tty") == "true" {
			t.Errorf("exec query %v", q)
		}
		if got := q.Get("stdin") == "true"; got != tc.wantStdin {
			t.Errorf("stdin %v for input %q, want %v", got, tc.stdin, tc.wantStdin)
		}
	}
}

func TestKubeExecerRejectsIncompleteCommands(t *testing.T) {
	e, err := NewKubeExecer(&rest.Config{Host: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []Command{
		{Pod: results.Pod{Name: "x"}, Container: "app", Argv: []string{"/echo"}},
		{Pod: clientPod, Argv: []string{"/echo"}},
		{Pod: clientPod, Container: "app"},
	} {
		if _, _, err := e.Exec(t.Context(), cmd); err == nil {
			t.Errorf("Exec(%s) succeeded", cmd)
		}
	}
}

// TestKubeExecerRunsEchoProbe drives the Prober through the real transport
// against the fake API server, on each protocol: the echo probe runs for
// real against a real echo server, with the spec on stdin.
func TestKubeExecerRunsEchoProbe(t *testing.T) {
	targets := probeTargets(t)
	for _, tc := range []struct {
		name      string
		webSocket bool
		want      []seenExec
	}{
		{"websocket", true, []seenExec{{method: http.MethodGet, webSocket: true}}},
		{"spdy fallback", false, []seenExec{{method: http.MethodGet, webSocket: true}, {method: http.MethodPost}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api, cfg := startFakeExecAPI(t, tc.webSocket)
			execer, err := NewKubeExecer(cfg)
			if err != nil {
				t.Fatal(err)
			}
			spec := echoapi.ProbeSpec{Targets: targets, RequestsPerTarget: 2, Deadline: echoapi.Duration(30 * time.Second)}
			results, err := NewProber(execer).Probe(t.Context(), clientPod, spec)
			if err != nil {
				t.Fatal(err)
			}
			checkProbeResults(t, results)
			seen := api.requests()
			if len(seen) != len(tc.want) {
				t.Fatalf("server saw %+v, want %d requests", seen, len(tc.want))
			}
			for i, s := range seen {
				if s.method != tc.want[i].method || s.webSocket != tc.want[i].webSocket {
					t.Errorf("request %d: %s (websocket %v), want %s (websocket %v)", i, s.method, s.webSocket, tc.want[i].method, tc.want[i].webSocket)
				}
				if s.cmd.Pod.String() != clientPod.String() || s.cmd.Container != "app" || !reflect.DeepEqual(s.cmd.Argv, []string{"/echo", "probe"}) || !s.stdin {
					t.Errorf("request %d ran %s (stdin %v), want /echo probe with stdin in the client pod", i, s.cmd, s.stdin)
				}
			}
		})
	}
}

func TestKubeExecerErrors(t *testing.T) {
	for _, webSocket := range []bool{true, false} {
		name := map[bool]string{true: "websocket", false: "spdy"}[webSocket]
		t.Run(name, func(t *testing.T) {
			_, cfg := startFakeExecAPI(t, webSocket)
			execer, err := NewKubeExecer(cfg)
			if err != nil {
				t.Fatal(err)
			}

			t.Run("non-zero exit", func(t *testing.T) {
				cmd := Command{Pod: clientPod, Container: "app", Argv: []string{"/echo", "probe"}, Stdin: []byte(`{"targets":[],"bogus":1}`)}
				_, stderr, err := execer.Exec(t.Context(), cmd)
				code, exited := ExitCode(err)
				if !exited || code != 2 {
					t.Fatalf("error %v: exit %d (exited %v), want echo's usage exit 2", err, code, exited)
				}
				var execErr *ExecError
				if !errors.As(err, &execErr) || !strings.Contains(string(stderr), "bogus") {
					t.Fatalf("error %T, stderr %q: want an ExecError and echo's complaint", err, stderr)
				}
				for _, want := range []string{clientPod.String(), "container app", `"/echo probe"`, "exit code 2", "bogus"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
			})

			t.Run("command cannot start", func(t *testing.T) {
				_, _, err := execer.Exec(t.Context(), Command{Pod: legacyPod, Container: "istio-proxy", Argv: []string{"pilot-agent", "request", "GET", "config_dump"}})
				if err == nil {
					t.Fatal("want an error")
				}
				if _, exited := ExitCode(err); exited {
					t.Errorf("error %v reads as an exit", err)
				}
				for _, want := range []string{legacyPod.String(), "container istio-proxy", "pilot-agent request GET config_dump", "executable file not found"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
			})

			t.Run("deadline", func(t *testing.T) {
				// echo serve runs until it is stopped, so only the deadline
				// ends this exec; the server stops it when the test ends.
				ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
				defer cancel()
				_, _, err := execer.Exec(ctx, Command{Pod: clientPod, Container: "app", Argv: []string{"/echo", "serve", "--host", "127.0.0.1", "--ports", "0"}})
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("error %v, want the deadline", err)
				}
				if !strings.Contains(err.Error(), clientPod.String()) {
					t.Errorf("error %q does not name the pod", err)
				}
			})
		})
	}
}

func TestKubeExecerRefusedByServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"kind":"Status","status":"Failure","message":"pods \"service-a\" is forbidden","reason":"Forbidden","code":403}`, http.StatusForbidden)
	}))
	defer srv.Close()
	execer, err := NewKubeExecer(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = execer.Exec(t.Context(), Command{Pod: clientPod, Container: "app", Argv: []string{"/echo", "probe"}, Stdin: []byte("{}")})
	if err == nil {
		t.Fatal("want an error from a server that forbids exec")
	}
	if _, exited := ExitCode(err); exited {
		t.Errorf("error %v reads as an exit", err)
	}
	if !strings.Contains(err.Error(), clientPod.String()) || !strings.Contains(err.Error(), "/echo probe") {
		t.Errorf("error %q does not name the pod and command", err)
	}
}
