package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilexec "k8s.io/utils/exec"

	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
)

// Endpoint is a proxyless pod the supervisor runs: its address is its
// WorkloadEntry's.
type Endpoint struct {
	Namespace, Pod string
	Address        string
}

// Endpoints are the serving pods of namespace the supervisor runs (proxyless
// ones and out-of-mesh plain gRPC servers) whose labels match selector (a
// Service's selector): what the Service's WorkloadEntries give istiod, in
// no particular order.
func (p *Proxyless) Endpoints(namespace string, selector map[string]string) []Endpoint {
	if len(selector) == 0 {
		return nil
	}
	sel := labels.SelectorFromSet(selector)
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Endpoint
	for _, pp := range p.pods {
		if pp.namespace == namespace && pp.serving && !pp.stopped && sel.Matches(labels.Set(pp.labels)) {
			out = append(out, Endpoint{Namespace: pp.namespace, Pod: pp.name, Address: pp.addr})
		}
	}
	return out
}

// Runs reports whether the supervisor runs proxyless pod namespace/name (it
// was injected with grpc-agent and is scheduled), serving or not yet; not
// for an out-of-mesh pod whose plain gRPC server it runs.
func (p *Proxyless) Runs(namespace, name string) bool {
	pp := p.find(namespace, name)
	return pp != nil && !pp.plain
}

func (p *Proxyless) find(namespace, name string) *proxylessPod {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.pods {
		if pp.namespace == namespace && pp.name == name && !pp.stopped {
			return pp
		}
	}
	return nil
}

// Exec runs argv in container of the proxyless pod namespace/name as an
// exec into it would, when the supervisor runs that pod (handled false
// otherwise, and nothing ran): the app container's argv[0] must be the echo
// image's binary (image.BinaryPath), which runs as the pod's local echo
// binary with the rest of argv, stdin and the app container's environment
// (GRPC_XDS_BOOTSTRAP the pod's pilot-agent's, see Proxyless), in the pod's
// directory. Commands for the istio-proxy container are refused:
// pilot-agent runs without Envoy, so there is no admin API for
// `pilot-agent request`. A non-zero exit is a k8s.io/utils/exec ExitError,
// as from a real exec.
func (p *Proxyless) Exec(ctx context.Context, namespace, name, container string, argv []string, stdin []byte) (stdout, stderr []byte, handled bool, err error) {
	pp := p.find(namespace, name)
	if pp == nil || pp.plain {
		return nil, nil, false, nil
	}
	p.mu.Lock()
	serving, startErr, app, echoPath, env, dir := pp.serving, pp.err, pp.app, pp.echoPath, pp.execEnv, pp.execDir
	p.mu.Unlock()
	switch {
	case container == injection.ContainerName:
		return nil, nil, true, fmt.Errorf("pod %s/%s is proxyless gRPC: its %s runs pilot-agent without Envoy, so the local cluster runs no command in it (%q)", namespace, name, container, argv)
	case startErr != nil:
		return nil, nil, true, fmt.Errorf("pod %s/%s did not start: %w", namespace, name, startErr)
	case !serving:
		return nil, nil, true, fmt.Errorf("pod %s/%s is not running yet: its echo does not serve", namespace, name)
	case container != app:
		return nil, nil, true, fmt.Errorf("container %s is not valid for pod %s", container, name)
	}
	stdout, stderr, err = runLocal(ctx, "exec-"+namespace+"-"+name, echoPath, argv, stdin, env, dir)
	return stdout, stderr, true, err
}

// ExecApp runs argv as container of pod would, as a local process with no
// mesh around it: argv[0] must be the echo image's binary, which runs as the
// local echo binary of the container's image, with the container's
// environment, in a fresh directory. It is for pods without a sidecar, whose
// app reaches the network directly; a caller stands in for what the
// cluster's DNS and kube-proxy would do (addresses in argv or stdin).
func (p *Proxyless) ExecApp(ctx context.Context, pod *corev1.Pod, container string, argv []string, stdin []byte) (stdout, stderr []byte, err error) {
	var c *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == container {
			c = &pod.Spec.Containers[i]
		}
	}
	if c == nil {
		return nil, nil, fmt.Errorf("container %s is not valid for pod %s", container, pod.Name)
	}
	echoPath, err := p.echoBinary(c.Image)
	if err != nil {
		return nil, nil, fmt.Errorf("container %s: %w", container, err)
	}
	env, err := p.istiod.containerEnv(ctx, pod, c)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(filepath.Join(p.dir, "exec"), 0o755); err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp(filepath.Join(p.dir, "exec"), pod.Namespace+"-"+pod.Name+"-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	return runLocal(ctx, "exec-"+pod.Namespace+"-"+pod.Name, echoPath, argv, stdin, env, dir)
}

// runLocal runs the echo binary at path with argv[1:] (argv[0] must be
// image.BinaryPath) until it exits or ctx ends.
func runLocal(ctx context.Context, name, path string, argv []string, stdin []byte, env []string, dir string) (stdout, stderr []byte, err error) {
	if len(argv) == 0 || argv[0] != image.BinaryPath {
		return nil, nil, fmt.Errorf("only the echo image's %s runs in a local pod, not %q", image.BinaryPath, argv)
	}
	var out, errOut syncBuffer
	opts := []proc.Option{proc.WithEnv(env...), proc.WithDir(dir), proc.WithOutput(&out), proc.WithStderr(&errOut)}
	if stdin != nil {
		opts = append(opts, proc.WithStdin(bytes.NewReader(stdin)))
	}
	pr, err := proc.Start(name, path, argv[1:], opts...)
	if err != nil {
		return nil, nil, err
	}
	// Stop also drops an exited child from proc's registry.
	defer pr.Stop()
	select {
	case <-pr.Done():
	case <-ctx.Done():
		_ = pr.Stop()
		return out.Bytes(), errOut.Bytes(), ctx.Err()
	}
	// proc reports every end as an error, status 0 too.
	var exit *exec.ExitError
	if errors.As(pr.ExitError(), &exit) {
		return out.Bytes(), errOut.Bytes(), utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", exit.ExitCode()), Code: exit.ExitCode()}
	}
	return out.Bytes(), errOut.Bytes(), nil
}

// syncBuffer is a bytes.Buffer safe for the writes of a process's output
// copier and a reader after the process ended.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
