package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/results"
)

// The witness pods (fixtures/manifests.WireWitness) hold their capture
// behind a unix socket; the harness asks them through exec.
const (
	// socketPath is where the witness listens inside its pod.
	socketPath = manifests.WitnessSocket
	// sessionBytes is what one batch's session may hold.
	sessionBytes = 8 << 20
	// sessionDuration bounds one batch's capture: a batch ends well within.
	sessionDuration = 5 * time.Minute
	// Namespace, DaemonSetName and Container name the witness's objects.
	Namespace     = manifests.WitnessNamespace
	DaemonSetName = manifests.WitnessDaemonSet
	Container     = manifests.WitnessContainer
	appLabel      = manifests.AppLabel
)

// Admitted asks the API server, with a dry run, whether it would admit a
// witness pod in the witness namespace (which must exist): nil, or the
// admission's refusal (Pod Security, a policy engine's webhook) as the API
// server words it.
func Admitted(ctx context.Context, c client.Client, runID, echoImage string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: DaemonSetName + "-", Namespace: Namespace,
			Labels: ownership.Labels(runID)},
		Spec: manifests.WitnessPodSpec(echoImage),
	}
	if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
		return fmt.Errorf("the wire witness's pod (host network, NET_RAW, NET_ADMIN) is refused: %w", err)
	}
	return nil
}

// Nodes is the witness of a cluster's nodes: it asks the witness pods on
// the nodes of a batch's client and servers, through exec.
type Nodes struct {
	kube client.Reader
	exec probe.Execer
	// refused, when set, is why no witness runs (admission refused its
	// pod): every request is answered not-captured (unavailable) with it.
	refused string
}

// NewNodes returns the witness that asks the witness pods through exec.
func NewNodes(kube client.Reader, exec probe.Execer) *Nodes { return &Nodes{kube: kube, exec: exec} }

// Refused is the witness of a cluster where the witness pods could not
// run: it answers every request not-captured, saying why.
func Refused(why string) *Nodes { return &Nodes{refused: why} }

// session is one witness pod's capture.
type session struct {
	pod results.Pod
	id  string
}

// Watch starts a capture between client and servers on the nodes they run
// on, and returns the judge that ends it and stamps the results.
func (n *Nodes) Watch(ctx context.Context, client results.Pod, servers []results.Pod) (func(context.Context, []echoapi.ProbeResult), error) {
	if n.refused != "" {
		return func(_ context.Context, rs []echoapi.ProbeResult) { StampUnavailable(rs, n.refused) }, nil
	}
	clients, serverAddrs := addrs([]results.Pod{client}), addrs(servers)
	if len(clients) == 0 || len(serverAddrs) == 0 {
		return nil, fmt.Errorf("no addresses to capture between (client %s, %d servers)", client, len(servers))
	}
	witnesses, err := n.witnesses(ctx, append([]results.Pod{client}, servers...))
	if err != nil {
		return nil, err
	}
	start := echoapi.WitnessStart{Pairs: pairs(clients, serverAddrs), MaxDuration: echoapi.Duration(sessionDuration), MaxBytes: sessionBytes}
	var sessions []session
	for _, w := range witnesses {
		var s echoapi.WitnessSession
		if err := n.ask(ctx, w, "start", start, &s); err != nil {
			n.end(ctx, sessions)
			return nil, err
		}
		sessions = append(sessions, session{pod: w, id: s.ID})
	}
	return func(ctx context.Context, rs []echoapi.ProbeResult) {
		if rs == nil {
			n.end(ctx, sessions)
			return
		}
		var reqs []echoapi.WitnessRequest
		for i, r := range rs {
			reqs = append(reqs, requests(fmt.Sprint(i), r, clients, serverAddrs)...)
		}
		var answers []echoapi.WitnessAnswer
		var errs []error
		for _, s := range sessions {
			var rep echoapi.WitnessReport
			if err := n.ask(ctx, s.pod, "report", echoapi.WitnessQuery{Session: s.id, Requests: reqs}, &rep); err != nil {
				errs = append(errs, err)
				continue
			}
			answers = append(answers, rep.Answers...)
		}
		if len(errs) > 0 {
			// A node that did not answer may have seen the cleartext:
			// nothing can be judged encrypted.
			StampUnavailable(rs, "the wire witness did not answer: "+errors.Join(errs...).Error())
			return
		}
		Stamp(rs, merge(len(rs), answers))
	}, nil
}

// end drops sessions without judging (a batch that did not run).
func (n *Nodes) end(ctx context.Context, sessions []session) {
	for _, s := range sessions {
		var rep echoapi.WitnessReport
		n.ask(ctx, s.pod, "report", echoapi.WitnessQuery{Session: s.id}, &rep)
	}
}

// witnesses are the ready witness pods of the nodes pods run on.
func (n *Nodes) witnesses(ctx context.Context, pods []results.Pod) ([]results.Pod, error) {
	nodes := map[string]bool{}
	for _, p := range pods {
		var pod corev1.Pod
		if err := n.kube.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Name}, &pod); err != nil {
			return nil, fmt.Errorf("the node of %s: %w", p, err)
		}
		if pod.Spec.NodeName != "" {
			nodes[pod.Spec.NodeName] = true
		}
	}
	var list corev1.PodList
	if err := n.kube.List(ctx, &list, client.InNamespace(Namespace), client.MatchingLabels{appLabel: DaemonSetName}); err != nil {
		return nil, fmt.Errorf("listing the wire witness's pods: %w", err)
	}
	byNode := map[string]results.Pod{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && isReady(&p) {
			byNode[p.Spec.NodeName] = results.Pod{Namespace: p.Namespace, Name: p.Name, IP: p.Status.PodIP}
		}
	}
	var out []results.Pod
	for _, node := range slices.Sorted(maps.Keys(nodes)) {
		w, ok := byNode[node]
		if !ok {
			return nil, fmt.Errorf("no ready wire witness pod on node %s", node)
		}
		out = append(out, w)
	}
	return out, nil
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ask runs `echo witness <what>` in a witness pod with in on stdin.
func (n *Nodes) ask(ctx context.Context, pod results.Pod, what string, in, out any) error {
	stdin, err := json.Marshal(in)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stdout, stderr, err := n.exec.Exec(ctx, probe.Command{Pod: pod, Container: Container,
		Argv: []string{image.BinaryPath, "witness", what, "--socket", socketPath}, Stdin: stdin})
	if err != nil {
		return fmt.Errorf("wire witness %s on %s: %w (%s)", what, pod, err, strings.TrimSpace(string(stderr)))
	}
	if err := json.NewDecoder(bytes.NewReader(stdout)).Decode(out); err != nil {
		return fmt.Errorf("wire witness %s on %s answered %.200q: %w", what, pod, stdout, err)
	}
	return nil
}

// addrs are the pods' addresses.
func addrs(pods []results.Pod) []netip.Addr {
	var out []netip.Addr
	for _, p := range pods {
		if a, err := netip.ParseAddr(p.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// WaitReady waits, bounded by ctx and at most timeout, until the witness
// DaemonSet has a ready pod on every node it schedules to; the error says
// how many are not, and why the first of them is not.
func WaitReady(ctx context.Context, c client.Client, timeout time.Duration) error {
	var pending string
	err := wait.For(func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: DaemonSetName}, &ds); err != nil {
			pending = err.Error()
			return false, nil
		}
		s := ds.Status
		if s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled > 0 && s.NumberReady == s.DesiredNumberScheduled && s.UpdatedNumberScheduled == s.DesiredNumberScheduled {
			return true, nil
		}
		pending = fmt.Sprintf("%d of %d witness pods ready%s", s.NumberReady, s.DesiredNumberScheduled, notReadyWhy(ctx, c))
		return false, nil
	}, wait.WithContext(ctx), wait.WithInterval(time.Second), wait.WithTimeout(timeout), wait.WithImmediate())
	if err != nil {
		return fmt.Errorf("waiting for the wire witness's pods: %s: %w", pending, err)
	}
	return nil
}

// notReadyWhy says why the first witness pod that is not ready is not, as
// its containers' states say (", pod x: CrashLoopBackOff: ..."), or "".
func notReadyWhy(ctx context.Context, c client.Client) string {
	var list corev1.PodList
	if err := c.List(ctx, &list, client.InNamespace(Namespace), client.MatchingLabels{appLabel: DaemonSetName}); err != nil {
		return ""
	}
	for _, p := range list.Items {
		if isReady(&p) {
			continue
		}
		for _, cs := range p.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				return fmt.Sprintf("; pod %s: %s: %s", p.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			case cs.LastTerminationState.Terminated != nil:
				return fmt.Sprintf("; pod %s exited: %s", p.Name, cs.LastTerminationState.Terminated.Message)
			}
		}
		return fmt.Sprintf("; pod %s: %s", p.Name, p.Status.Phase)
	}
	return ""
}
