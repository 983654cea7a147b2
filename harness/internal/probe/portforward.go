package probe

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/meshproof/meshproof/harness/results"
)

// PodPortGetter reads an HTTP path from a port of a pod, as `kubectl
// port-forward` and then a GET to the forwarded port would: the request
// reaches the port inside the pod's network namespace, so a port bound to
// localhost there (ztunnel's admin port) answers too. The transports that
// implement it are the API server's (NewKubeExecer's) and a rehearsal's.
type PodPortGetter interface {
	GetPodPort(ctx context.Context, pod results.Pod, port int, path string) ([]byte, error)
}

// maxPodPortBody bounds what GetPodPort reads: a ztunnel's metrics and
// config dump are kilobytes to a few megabytes.
const maxPodPortBody = 64 << 20

var _ PodPortGetter = (*kubeExecer)(nil)

// GetPodPort forwards one connection to the pod's port through the API
// server's pods/portforward subresource (WebSocket tunneling SPDY, falling
// back to SPDY as kubectl does), sends GET path on it and returns the
// body of a 200 answer. No local port is opened: the request is written
// on the forwarded stream itself.
func (k *kubeExecer) GetPodPort(ctx context.Context, pod results.Pod, port int, path string) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		return nil, fmt.Errorf("GET %s on port %d of pod %s (port-forward): %w", path, port, pod, err)
	}
	u := k.core.Post().Namespace(pod.Namespace).Resource("pods").Name(pod.Name).SubResource("portforward").URL()
	rt, upgrader, err := spdy.RoundTripperFor(k.config)
	if err != nil {
		return fail(err)
	}
	spdyDialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	wsDialer, err := portforward.NewSPDYOverWebsocketDialer(u, k.config)
	if err != nil {
		return fail(err)
	}
	dialer := portforward.NewFallbackDialer(wsDialer, spdyDialer, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})

	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	var conn httpstream.Connection
	connected := make(chan struct{})
	go func() {
		c, proto, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		if err == nil && proto != portforward.PortForwardProtocolV1Name {
			c.Close()
			err = fmt.Errorf("the API server speaks port-forward protocol %q, not %q", proto, portforward.PortForwardProtocolV1Name)
		}
		if err != nil {
			done <- result{err: err}
			return
		}
		conn = c
		close(connected)
		body, err := getOnStreams(c, port, path)
		done <- result{body, err}
	}()
	select {
	case r := <-done:
		if conn != nil {
			conn.Close()
		}
		if r.err != nil {
			return fail(r.err)
		}
		return r.body, nil
	case <-ctx.Done():
		select {
		case <-connected:
			conn.Close() // ends the streams, so the goroutine returns
		default:
		}
		return fail(ctx.Err())
	}
}

// getOnStreams opens the error and data streams of one forwarded
// connection, as client-go's PortForwarder.handleConnection does, and
// speaks one HTTP/1.1 GET on the data stream.
func getOnStreams(conn httpstream.Connection, port int, path string) ([]byte, error) {
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(port))
	headers.Set(corev1.PortForwardRequestIDHeader, "0")
	errorStream, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating the error stream: %w", err)
	}
	errorStream.Close() // nothing is written on it
	remoteErr := make(chan string, 1)
	go func() {
		msg, _ := io.ReadAll(errorStream)
		remoteErr <- string(msg)
	}()
	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating the data stream: %w", err)
	}
	defer data.Reset()
	req, err := http.NewRequest(http.MethodGet, "http://localhost:"+strconv.Itoa(port)+path, nil)
	if err != nil {
		return nil, err
	}
	req.Close = true
	if err := req.Write(data); err != nil {
		return nil, fmt.Errorf("writing the request: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(data), req)
	if err != nil {
		// The kubelet reports a refused connection on the error stream.
		select {
		case msg := <-remoteErr:
			if msg != "" {
				return nil, fmt.Errorf("%s (%w)", msg, err)
			}
		case <-time.After(time.Second):
		}
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPodPortBody))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("answered %s: %.200s", resp.Status, body)
	}
	return body, nil
}
