package rehearsal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/probe"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/internal/wire"
)

// ProxylessLabel is what every probe result answered by real processes of a
// proxyless gRPC pair says (echoapi.ProbeResult.DataPlane, then
// results.Observation.DataPlane): the local cluster ran the pods injected
// with Istio's grpc-agent template for real (see cluster.Proxyless),
// so the real pilot-agent, grpc-go's xDS client and server and the echo
// binary of the delivered image decided the outcome, with the listeners and
// clusters this istiod build computed.
func ProxylessLabel() string {
	return "rehearsal: data plane real (proxyless gRPC): pilot-agent and grpc-go, istiod " + binaries.IstioVersion
}

// proxylessRouter is the rehearsal's pod transport when the local cluster
// runs proxyless gRPC pods: what real processes can answer goes to them,
// the rest to the simulated data plane, unchanged.
//
//   - A command in a proxyless pod the local cluster runs runs there, as
//     an exec would (cluster.Proxyless.Exec); but the targets of an
//     `echo probe` that are not gRPC towards a proxyless server (HTTP, TCP,
//     gRPC towards a simulated sidecar) are answered by the simulation,
//     since no Envoy or pod network exists to reach.
//   - An `echo probe` from a pod without a sidecar (out of the mesh) runs
//     the real probe locally for its grpc:// targets towards a proxyless
//     server, each rewritten from the Service's name to one of its
//     endpoints (a WorkloadEntry's loopback address and the Service port's
//     targetPort): only what the cluster's DNS and kube-proxy would do is
//     stood in for. Its other targets go to the simulation.
//
// A batch with both kinds is split, and the results are put back in the
// batch's target order; every result a real process produced carries
// ProxylessLabel.
type proxylessRouter struct {
	simulated probe.Execer
	local     *cluster.Proxyless
	kube      client.Reader
	witness   *wire.Loopback
}

var _ probe.Execer = (*proxylessRouter)(nil)

func (r *proxylessRouter) Exec(ctx context.Context, cmd probe.Command) (stdout, stderr []byte, err error) {
	inProxyless := r.local.Runs(cmd.Pod.Namespace, cmd.Pod.Name)
	probing := isProbe(cmd)
	switch {
	case inProxyless && probing:
		return r.probe(ctx, cmd, true)
	case inProxyless:
		stdout, stderr, _, err := r.local.Exec(ctx, cmd.Pod.Namespace, cmd.Pod.Name, cmd.Container, cmd.Argv, cmd.Stdin)
		return stdout, stderr, execError(cmd, stderr, err)
	case probing:
		return r.probe(ctx, cmd, false)
	}
	return r.simulated.Exec(ctx, cmd)
}

func execError(cmd probe.Command, stderr []byte, err error) error {
	if err == nil {
		return nil
	}
	return &probe.ExecError{Command: cmd, Stderr: strings.TrimSpace(string(stderr)), Err: err}
}

// localTarget is a target the real processes answer: sent is what the
// probe is given, original what the batch asked.
type localTarget struct {
	index          int
	sent, original echoapi.Target
}

// probe answers an `echo probe` batch, splitting it between the real
// processes and the simulation (see proxylessRouter).
func (r *proxylessRouter) probe(ctx context.Context, cmd probe.Command, fromProxyless bool) ([]byte, []byte, error) {
	var spec echoapi.ProbeSpec
	dec := json.NewDecoder(bytes.NewReader(cmd.Stdin))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil || len(spec.Targets) == 0 {
		// The simulation says what is wrong with it, as the echo would.
		return r.simulated.Exec(ctx, cmd)
	}
	var client corev1.Pod
	if err := r.kube.Get(ctx, clientKey(cmd), &client); err != nil {
		return nil, nil, execError(cmd, nil, fmt.Errorf("reading the pod: %w", err))
	}
	if !fromProxyless && (injection.Proxy(&client) != nil || client.Annotations[manifests.AmbientRedirectionAnnotation] == manifests.AmbientRedirectionEnabled) {
		// A simulated sidecar's client: Envoy would carry the call; an
		// ambient client's: its simulated ztunnel would.
		return r.simulated.Exec(ctx, cmd)
	}
	var local []localTarget
	var simulated []echoapi.Target
	var servers []netip.Addr // the real targets' endpoints, for the witness
	for i, t := range spec.Targets {
		sent, endpoints, ok, err := r.localTarget(ctx, client.Namespace, t, fromProxyless)
		if err != nil {
			return nil, nil, execError(cmd, nil, err)
		}
		if ok {
			local = append(local, localTarget{index: i, sent: sent, original: t})
			for _, ep := range endpoints {
				if a, err := netip.ParseAddr(ep.Address); err == nil {
					servers = append(servers, a)
				}
			}
		} else {
			simulated = append(simulated, t)
		}
	}
	if len(local) == 0 {
		return r.simulated.Exec(ctx, cmd)
	}
	var (
		wg                     sync.WaitGroup
		simOut, simErr         []byte
		simExecErr             error
		localOut, localErr     []byte
		localExecErr           error
		simulatedCmd, localCmd = cmd, cmd
	)
	if len(simulated) > 0 {
		part := spec
		part.Targets = simulated
		stdin, err := json.Marshal(part)
		if err != nil {
			return nil, nil, err
		}
		simulatedCmd.Stdin = stdin
		wg.Add(1)
		go func() {
			defer wg.Done()
			simOut, simErr, simExecErr = r.simulated.Exec(ctx, simulatedCmd)
		}()
	}
	part := spec
	part.Targets = nil
	for _, l := range local {
		part.Targets = append(part.Targets, l.sent)
	}
	stdin, err := json.Marshal(part)
	if err != nil {
		return nil, nil, err
	}
	localCmd.Stdin = stdin
	// The real processes talk over loopback: the witness captures there,
	// between the probe's address and the targets' endpoints.
	watch := r.witness.Watch(loopbackClients, servers)
	if fromProxyless {
		localOut, localErr, _, localExecErr = r.local.Exec(ctx, cmd.Pod.Namespace, cmd.Pod.Name, cmd.Container, cmd.Argv, stdin)
	} else {
		localOut, localErr, localExecErr = r.local.ExecApp(ctx, &client, cmd.Container, cmd.Argv, stdin)
	}
	if localExecErr == nil {
		localOut, localExecErr = judged(watch, localOut)
	} else {
		watch.Stop()
	}
	wg.Wait()
	stderr := append(append([]byte(nil), localErr...), simErr...)
	if localExecErr != nil {
		return nil, stderr, execError(localCmd, localErr, localExecErr)
	}
	if simExecErr != nil {
		return nil, stderr, simExecErr
	}
	out, err := mergeResults(spec.Targets, local, localOut, simOut)
	if err != nil {
		return nil, stderr, execError(cmd, stderr, err)
	}
	return out, stderr, nil
}

func clientKey(cmd probe.Command) client.ObjectKey {
	return client.ObjectKey{Namespace: cmd.Pod.Namespace, Name: cmd.Pod.Name}
}

// localTarget decides whether t goes to the real processes: a gRPC target
// (grpc://, or xds:/// from a proxyless client, whose bootstrap it needs)
// whose Service the local cluster's proxyless pods serve. A grpc:// target
// is rewritten to one of them, as DNS and kube-proxy would route it.
func (r *proxylessRouter) localTarget(ctx context.Context, clientNS string, t echoapi.Target, fromProxyless bool) (echoapi.Target, []cluster.Endpoint, bool, error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return t, nil, false, nil
	}
	var hostPort string
	switch {
	case u.Scheme == echoapi.SchemeGRPC:
		hostPort = u.Host
	case u.Scheme == echoapi.SchemeXDS && fromProxyless:
		hostPort = strings.TrimPrefix(u.Path, "/")
	default:
		return t, nil, false, nil
	}
	host, portText, err := net.SplitHostPort(hostPort)
	if err != nil {
		return t, nil, false, nil
	}
	port, _ := strconv.Atoi(portText)
	if t.Port != 0 {
		port = t.Port
	}
	name, ns, ok := dataplane.ServiceName(host, clientNS)
	if !ok {
		return t, nil, false, nil
	}
	var svc corev1.Service
	if err := r.kube.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		return t, nil, false, client.IgnoreNotFound(err)
	}
	var svcPort *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if int(svc.Spec.Ports[i].Port) == port {
			svcPort = &svc.Spec.Ports[i]
		}
	}
	endpoints := r.local.Endpoints(ns, svc.Spec.Selector)
	if svcPort == nil || len(endpoints) == 0 {
		return t, nil, false, nil
	}
	if u.Scheme == echoapi.SchemeXDS {
		return t, endpoints, true, nil
	}
	// kube-proxy picks an endpoint at random.
	ep := endpoints[rand.IntN(len(endpoints))]
	target, err := r.targetPort(ctx, ep, svcPort)
	if err != nil {
		return t, nil, false, err
	}
	sent := t
	sent.URL = "grpc://" + net.JoinHostPort(ep.Address, strconv.Itoa(target))
	sent.Port = 0
	return sent, endpoints, true, nil
}

// targetPort is the container port behind svcPort on ep's pod: its number,
// or the pod's container port of its name.
func (r *proxylessRouter) targetPort(ctx context.Context, ep cluster.Endpoint, svcPort *corev1.ServicePort) (int, error) {
	tp := svcPort.TargetPort
	switch {
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return int(tp.IntVal), nil
	case tp.Type == intstr.Int || tp.StrVal == "":
		return int(svcPort.Port), nil
	}
	var pod corev1.Pod
	if err := r.kube.Get(ctx, client.ObjectKey{Namespace: ep.Namespace, Name: ep.Pod}, &pod); err != nil {
		return 0, fmt.Errorf("the pod behind %s: %w", ep.Address, err)
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == tp.StrVal {
				return int(p.ContainerPort), nil
			}
		}
	}
	return 0, fmt.Errorf("pod %s/%s has no container port named %s", ep.Namespace, ep.Pod, tp.StrVal)
}

// mergeResults puts the result lines of both parts back in the batch's
// target order; the real ones get the batch's URL back and ProxylessLabel.
func mergeResults(targets []echoapi.Target, local []localTarget, localOut, simOut []byte) ([]byte, error) {
	isLocal := map[int]localTarget{}
	for _, l := range local {
		isLocal[l.index] = l
	}
	localLines, err := resultsByTarget(localOut)
	if err != nil {
		return nil, fmt.Errorf("the real echo probe's output: %w", err)
	}
	simLines, err := resultsByTarget(simOut)
	if err != nil {
		return nil, fmt.Errorf("the simulated data plane's output: %w", err)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	done := map[string]bool{}
	for i, t := range targets {
		if done[t.Name] {
			continue // a name given twice: its results went out with the first
		}
		done[t.Name] = true
		l, real := isLocal[i]
		lines := simLines[t.Name]
		if real {
			lines = localLines[t.Name]
		}
		if len(lines) == 0 {
			return nil, fmt.Errorf("no result for target %s", t.Name)
		}
		for _, res := range lines {
			if real {
				res.URL, res.DataPlane = l.original.URL, ProxylessLabel()
			}
			if err := enc.Encode(res); err != nil {
				return nil, err
			}
		}
	}
	return out.Bytes(), nil
}

// resultsByTarget parses `echo probe` output (one ProbeResult per line) by
// target name, in output order.
func resultsByTarget(out []byte) (map[string][]echoapi.ProbeResult, error) {
	byTarget := map[string][]echoapi.ProbeResult{}
	for _, line := range bytes.Split(out, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var res echoapi.ProbeResult
		if err := json.Unmarshal(line, &res); err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		byTarget[res.Target] = append(byTarget[res.Target], res)
	}
	if len(byTarget) == 0 && len(bytes.TrimSpace(out)) > 0 {
		return nil, errors.New("no result lines")
	}
	return byTarget, nil
}
