package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/e2e-framework/klient/wait"
)

// waitUntilReady polls until every node is Ready and every kube-system pod
// is Ready, within one bound of timeout. e2e-framework's kind provider only
// waits for the control-plane pods to exist, which lets a test start while
// CoreDNS or the CNI still fail; Istio's install then fails in ways that look
// like meshproof bugs. On timeout the error names every node and pod that
// was not ready at the last check, with the reason.
func waitUntilReady(ctx context.Context, cs kubernetes.Interface, clusterName string, timeout, interval time.Duration) error {
	var (
		notReady []string
		apiErr   error
	)
	condition := func(ctx context.Context) (bool, error) {
		notReady, apiErr = readinessProblems(ctx, cs)
		// API errors are expected while the control plane settles; they
		// are reported only if the wait runs out.
		return apiErr == nil && len(notReady) == 0, nil
	}
	err := wait.For(condition,
		wait.WithContext(ctx),
		wait.WithTimeout(timeout),
		wait.WithInterval(interval),
		wait.WithImmediate(),
	)
	if err == nil {
		return nil
	}
	why := "the wait was cancelled"
	if ctx.Err() == nil {
		why = fmt.Sprintf("not ready after %s", timeout)
	}
	var detail []string
	if len(notReady) > 0 {
		detail = append(detail, "not ready: "+strings.Join(notReady, ", "))
	}
	if apiErr != nil {
		detail = append(detail, "last API error: "+apiErr.Error())
	}
	if len(detail) == 0 {
		detail = append(detail, "no check completed")
	}
	return fmt.Errorf("cluster %q %s: %s: %w", clusterName, why, strings.Join(detail, "; "), errors.Join(err, ctx.Err()))
}

// readinessProblems lists, as "node/<name> (...)" and "pod kube-system/<name>
// (...)", everything that keeps the cluster from being ready. An empty list
// means ready. An empty node or kube-system pod list is itself a problem, so
// that a cluster that has not registered anything yet is not called ready.
func readinessProblems(ctx context.Context, cs kubernetes.Interface) ([]string, error) {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	pods, err := cs.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list kube-system pods: %w", err)
	}
	var problems []string
	if len(nodes.Items) == 0 {
		problems = append(problems, "no nodes registered yet")
	}
	for _, n := range nodes.Items {
		if why := nodeNotReady(&n); why != "" {
			problems = append(problems, fmt.Sprintf("node/%s (%s)", n.Name, why))
		}
	}
	if len(pods.Items) == 0 {
		problems = append(problems, "no kube-system pods yet")
	}
	for _, p := range pods.Items {
		if why := podNotReady(&p); why != "" {
			problems = append(problems, fmt.Sprintf("pod %s/%s (%s)", p.Namespace, p.Name, why))
		}
	}
	sort.Strings(problems)
	return problems, nil
}

// nodeNotReady returns why the node is not Ready, or "" if it is.
func nodeNotReady(n *corev1.Node) string {
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return ""
		}
		return conditionText("Ready", c.Status, c.Reason, c.Message)
	}
	return "no Ready condition reported"
}

// podNotReady returns why the pod is not Ready, or "" if it is. A pod that
// ran to completion is fine: it will never be Ready and need not be.
func podNotReady(p *corev1.Pod) string {
	if p.Status.Phase == corev1.PodSucceeded {
		return ""
	}
	if p.DeletionTimestamp != nil {
		return "terminating"
	}
	for _, c := range p.Status.Conditions {
		if c.Type != corev1.PodReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return ""
		}
		text := conditionText("Ready", c.Status, c.Reason, c.Message)
		if w := waitingReason(p); w != "" {
			text += ", " + w
		}
		return "phase " + string(p.Status.Phase) + ", " + text
	}
	return "phase " + string(p.Status.Phase) + ", no Ready condition reported"
}

// waitingReason names the first container stuck waiting (e.g.
// "coredns: CrashLoopBackOff"), which is usually the actual problem.
func waitingReason(p *corev1.Pod) string {
	statuses := append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, s := range statuses {
		if s.State.Waiting != nil && s.State.Waiting.Reason != "" {
			return s.Name + ": " + s.State.Waiting.Reason
		}
	}
	return ""
}

func conditionText(name string, status corev1.ConditionStatus, reason, message string) string {
	text := name + "=" + string(status)
	if reason != "" {
		text += ": " + reason
	}
	if message != "" {
		text += ": " + message
	}
	return text
}
