package istio

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meshproof/meshproof/harness/ownership"
)

const (
	readyPollInterval = 2 * time.Second
	// proxyContainer is the sidecar the injector adds: a regular container,
	// or an init container with restartPolicy Always (native sidecars).
	proxyContainer = "istio-proxy"
	// probeImage is never pulled: the probe pod is only created in dry-run.
	probeImage = "registry.k8s.io/pause:3.10"
)

// WaitReady waits, within the ready timeout, until every control plane the
// Installer manages (the current one and a canary) serves: its istiod
// Deployment is Available, and its sidecar injector really injects, which
// is checked by a server-side dry-run create of a pod in a namespace
// labelled for that revision, expecting an istio-proxy container back.
// An Available Deployment alone is not enough: the webhook can still fail
// (no endpoints yet, CA bundle not yet patched), and then pods start
// without sidecars or fail to be created.
func (i *Installer) WaitReady(ctx context.Context) error {
	cs, err := i.clientset()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, i.s.readyTimeout)
	defer cancel()
	planes := []plane{i.current}
	if i.canary != nil {
		planes = append(planes, *i.canary)
	}
	for _, p := range planes {
		name := istiodReleaseName(p.revision) // the Deployment has the release's name
		i.s.logf("istio: waiting for Deployment %s/%s to be Available", i.s.namespace, name)
		if err := poll(ctx, "istiod Deployment "+i.s.namespace+"/"+name+" to be Available", func(ctx context.Context) (bool, string, error) {
			return deploymentAvailable(ctx, cs, i.s.namespace, name)
		}); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
		i.s.logf("istio: waiting for the sidecar injector of revision %q to inject", revisionLabelValue(p.revision))
		if err := i.waitInjection(ctx, cs, p.revision); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
	}
	return nil
}

// poll is the one wait loop of the package: it runs check every
// readyPollInterval until it reports done or ctx ends, and then names what
// it waited for and the last state it saw. Errors from check are treated as
// "not yet" (the API server or a webhook may be briefly unavailable) and
// reported as the last state.
func poll(ctx context.Context, what string, check func(context.Context) (done bool, state string, err error)) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		return fmt.Errorf("waiting for %s: no deadline set (internal error: every wait must be bounded)", what)
	}
	last := "not checked yet"
	err := wait.PollUntilContextTimeout(ctx, readyPollInterval, time.Until(deadline), true, func(ctx context.Context) (bool, error) {
		done, state, err := check(ctx)
		switch {
		case err != nil:
			last = "error: " + err.Error()
		default:
			last = state
		}
		return done && err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("timed out waiting for %s; last observed: %s (%w)", what, last, err)
	}
	return nil
}

// deploymentAvailable reports whether the Deployment has observed its
// latest spec and has the Available condition.
func deploymentAvailable(ctx context.Context, cs kubernetes.Interface, ns, name string) (bool, string, error) {
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	state := fmt.Sprintf("generation %d observed %d, replicas %d ready %d available %d",
		d.Generation, d.Status.ObservedGeneration, d.Status.Replicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas)
	available := false
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			state += fmt.Sprintf(", Available=%s", c.Status)
			if c.Reason != "" {
				state += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
			}
			available = c.Status == corev1.ConditionTrue
		}
	}
	return available && d.Status.ObservedGeneration >= d.Generation, state, nil
}

// injectionLabels are the namespace labels that select revision's injector.
func injectionLabels(revision string) map[string]string {
	l := map[string]string{ownership.ManagedByLabel: ownership.ManagedByValue}
	if revision == "" {
		l["istio-injection"] = "enabled"
	} else {
		l["istio.io/rev"] = revision
	}
	return l
}

// waitInjection creates a throwaway namespace labelled for revision and
// dry-run creates a pod in it until the answer carries istio-proxy.
func (i *Installer) waitInjection(ctx context.Context, cs kubernetes.Interface, revision string) error {
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "meshproof-injection-probe-",
		Labels:       injectionLabels(revision),
	}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the injection probe namespace: %w", err)
	}
	defer func() {
		// Clean up even when ctx has expired, within its own bound.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := cs.CoreV1().Namespaces().Delete(dctx, ns.Name, metav1.DeleteOptions{}); err != nil {
			i.s.logf("istio: could not delete probe namespace %s: %v", ns.Name, err)
		}
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "injection-probe", Namespace: ns.Name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: probeImage}}},
	}
	return poll(ctx, fmt.Sprintf("the sidecar injector of revision %q to inject %s into a pod in namespace %s", revisionLabelValue(revision), proxyContainer, ns.Name),
		func(ctx context.Context) (bool, string, error) {
			got, err := cs.CoreV1().Pods(ns.Name).Create(ctx, pod.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return false, "", err
			}
			if hasProxy(got) {
				return true, "injected", nil
			}
			return false, "pod admitted without " + proxyContainer + "; containers: " + containerNames(got), nil
		})
}

func hasProxy(p *corev1.Pod) bool {
	for _, c := range p.Spec.InitContainers {
		if c.Name == proxyContainer {
			return true
		}
	}
	for _, c := range p.Spec.Containers {
		if c.Name == proxyContainer {
			return true
		}
	}
	return false
}

func containerNames(p *corev1.Pod) string {
	var names []string
	for _, c := range p.Spec.InitContainers {
		names = append(names, "init:"+c.Name)
	}
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	return strings.Join(names, ", ")
}
