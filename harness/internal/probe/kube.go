package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
)

// kubeExecer execs through the API server's pods/exec subresource.
type kubeExecer struct {
	config *rest.Config
	core   rest.Interface
}

// NewKubeExecer returns an Execer that runs commands the way kubectl exec
// does: over WebSocket (the v5.channel.k8s.io protocol), falling back to
// SPDY when the API server or a proxy in between cannot upgrade to
// WebSocket. The config's credentials need the pods/exec create permission.
func NewKubeExecer(cfg *rest.Config) (Execer, error) {
	if cfg == nil {
		return nil, errors.New("probe: NewKubeExecer needs a rest.Config")
	}
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("probe: client for the pods/exec subresource: %w", err)
	}
	return &kubeExecer{config: rest.CopyConfig(cfg), core: core.RESTClient()}, nil
}

// execURL is the pods/exec request for cmd. Stdout and stderr are always
// streamed; stdin only when the command has input, so that a command
// reading stdin sees EOF instead of waiting on a stream nobody writes.
func (k *kubeExecer) execURL(cmd Command) *url.URL {
	return k.core.Post().
		Namespace(cmd.Pod.Namespace).
		Resource("pods").
		Name(cmd.Pod.Name).
		SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: cmd.Container,
			Command:   cmd.Argv,
			Stdin:     cmd.Stdin != nil,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec).
		URL()
}

// newExecutor builds the WebSocket-then-SPDY executor for one exec. An
// executor keeps per-connection state and is not safe for concurrent use,
// so every exec gets its own.
func (k *kubeExecer) newExecutor(u *url.URL) (remotecommand.Executor, error) {
	// SPDY upgrades a POST; WebSocket must be a GET (RFC 6455 section 4.1).
	spdyExec, err := remotecommand.NewSPDYExecutor(k.config, http.MethodPost, u)
	if err != nil {
		return nil, fmt.Errorf("SPDY executor: %w", err)
	}
	wsExec, err := remotecommand.NewWebSocketExecutor(k.config, http.MethodGet, u.String())
	if err != nil {
		return nil, fmt.Errorf("WebSocket executor: %w", err)
	}
	// Fall back only when the WebSocket upgrade itself was refused (an
	// older API server, or a proxy that does not pass the upgrade through),
	// or when an HTTPS proxy is in the way, which the WebSocket dialer
	// cannot use. Any other error happened after the command may have
	// started, and running it twice would be wrong.
	return remotecommand.NewFallbackExecutor(wsExec, spdyExec, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

func (k *kubeExecer) Exec(ctx context.Context, cmd Command) (stdout, stderr []byte, err error) {
	if err := cmd.validate(); err != nil {
		return nil, nil, err
	}
	executor, err := k.newExecutor(k.execURL(cmd))
	if err != nil {
		return nil, nil, newExecError(cmd, nil, err)
	}
	outBuf := &cappedBuffer{limit: maxOutput}
	errBuf := &cappedBuffer{limit: maxOutput}
	opts := remotecommand.StreamOptions{Stdout: outBuf, Stderr: errBuf}
	if cmd.Stdin != nil {
		opts.Stdin = bytes.NewReader(cmd.Stdin)
	}
	err = executor.StreamWithContext(ctx, opts)
	stdout, stderr = outBuf.Bytes(), errBuf.Bytes()
	if err != nil {
		return stdout, stderr, newExecError(cmd, stderr, err)
	}
	return stdout, stderr, nil
}
