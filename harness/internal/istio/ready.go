package istio

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/meshproof/meshproof/harness/ownership"

	"github.com/meshproof/meshproof/harness/internal/sidecar"
)

const (
	// readyPollInterval is how often the readiness waits look: a few
	// times a second, since they are on the path to a run's first step.
	readyPollInterval = 500 * time.Millisecond
	// probeImage is never pulled: the probe pod is only created in dry-run.
	probeImage = "registry.k8s.io/pause:3.10"
)

// WaitReady waits, within the ready timeout, until every control plane the
// Installer manages (the current one and a canary) serves: its istiod
// Deployment has rolled out, and its sidecar injector really injects the
// proxy of its version, which is checked by a server-side dry-run create
// of a pod in a namespace labelled for that revision, expecting an
// istio-proxy container of the plane's image tag back.
//
// An Available Deployment alone is not enough. During an in-place upgrade
// the old istiod stays Available while the new one starts, so "Available
// and the latest generation observed" holds at once; the rollout is over
// only when the ReplicaSet of the current pod template has every replica
// available and no pod of an older ReplicaSet is left (a terminating old
// istiod still counts: until it is gone, proxies can still be connected
// to it). And the webhook can still fail (no endpoints yet, CA bundle not
// yet patched) or be answered by the old injector, and then pods start
// without sidecars or with the old proxy.
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
		i.s.log.Info("waiting for a rollout", "namespace", i.s.namespace, "deployment", name)
		if err := poll(ctx, "istiod Deployment "+i.s.namespace+"/"+name+" to roll out", func(ctx context.Context) (bool, string, error) {
			return deploymentRolledOut(ctx, cs, i.s.namespace, name)
		}); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
		tag := i.proxyTag(p)
		i.s.log.Info("waiting for the sidecar injector", "revision", revisionLabelValue(p.revision), "proxyTag", tag)
		if err := i.waitInjection(ctx, cs, p.revision, tag); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
	}
	if !i.s.ambient {
		return nil
	}
	// Ambient's node agents, in install order: istio-cni ready on every
	// node (its readiness probe passes once it has installed the CNI
	// plugin and serves ztunnel's socket), then ztunnel Ready on every node.
	for _, ds := range []string{CNIDaemonSet, ZtunnelDaemonSet} {
		i.s.log.Info("waiting for a DaemonSet on every node", "namespace", i.s.namespace, "daemonset", ds)
		if err := poll(ctx, "DaemonSet "+i.s.namespace+"/"+ds+" to be ready on every node", func(ctx context.Context) (bool, string, error) {
			return daemonSetRolledOut(ctx, cs, i.s.namespace, ds)
		}); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
	}
	return nil
}

// daemonSetRolledOut reports whether a DaemonSet has observed its latest
// spec and has an updated, ready pod on every node that should run one
// (as `kubectl rollout status daemonset` decides), and at least one node.
func daemonSetRolledOut(ctx context.Context, cs kubernetes.Interface, ns, name string) (bool, string, error) {
	d, err := cs.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	st := d.Status
	state := fmt.Sprintf("generation %d observed %d, desired %d scheduled %d updated %d ready %d available %d",
		d.Generation, st.ObservedGeneration, st.DesiredNumberScheduled, st.CurrentNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady, st.NumberAvailable)
	switch {
	case st.ObservedGeneration < d.Generation:
		return false, state + "; its latest spec is not observed yet", nil
	case st.DesiredNumberScheduled == 0:
		return false, state + "; no node runs it", nil
	case st.UpdatedNumberScheduled < st.DesiredNumberScheduled:
		return false, fmt.Sprintf("%s; rollout in progress: %d of %d nodes updated", state, st.UpdatedNumberScheduled, st.DesiredNumberScheduled), nil
	case st.NumberAvailable < st.DesiredNumberScheduled || st.NumberReady < st.DesiredNumberScheduled:
		return false, fmt.Sprintf("%s; %d of %d nodes have a ready pod", state, st.NumberReady, st.DesiredNumberScheduled), nil
	}
	return true, state + "; ready on every node", nil
}

// poll is the one wait loop of the package: it runs check every
// readyPollInterval until it reports done or ctx ends, and then names what
// it waited for and the last state it saw. Errors from check are treated as
// "not yet" (the API server or a webhook may be briefly unavailable) and
// reported after the last state, never instead of it: the last read of a
// wait often fails only because the wait is ending (client-go's rate
// limiter refuses to wait past the deadline), which says nothing of what
// was waited for.
func poll(ctx context.Context, what string, check func(context.Context) (done bool, state string, err error)) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		return fmt.Errorf("waiting for %s: no deadline set (internal error: every wait must be bounded)", what)
	}
	var last string
	var lastErr error // a failed check after last
	err := wait.PollUntilContextTimeout(ctx, readyPollInterval, time.Until(deadline), true, func(ctx context.Context) (bool, error) {
		done, state, err := check(ctx)
		if err != nil {
			lastErr = err
			return false, nil
		}
		last, lastErr = state, nil
		return done, nil
	})
	if err == nil {
		return nil
	}
	observed := last
	switch {
	case last == "" && lastErr == nil:
		observed = "not checked yet"
	case last == "":
		observed = "error: " + lastErr.Error()
	case lastErr != nil:
		observed += "; then error: " + lastErr.Error()
	}
	return fmt.Errorf("timed out waiting for %s; last observed: %s (%w)", what, observed, err)
}

// deploymentAvailable reports whether the Deployment has observed its
// latest spec and has the Available condition.
func deploymentAvailable(ctx context.Context, cs kubernetes.Interface, ns, name string) (bool, string, error) {
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	ok, state := available(d)
	return ok, state, nil
}

func available(d *appsv1.Deployment) (bool, string) {
	state := fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d",
		d.Generation, d.Status.ObservedGeneration, d.Status.Replicas, d.Status.UpdatedReplicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas)
	ok := false
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			state += fmt.Sprintf(", Available=%s", c.Status)
			switch {
			case c.Reason != "" && c.Message != "":
				state += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
			case c.Reason != "":
				state += fmt.Sprintf(" (%s)", c.Reason)
			}
			ok = c.Status == corev1.ConditionTrue
		}
	}
	return ok && d.Status.ObservedGeneration >= d.Generation, state
}

// deploymentRolledOut reports whether the Deployment is Available with its
// latest spec observed and its rollout finished: every replica updated,
// the ReplicaSet of the current pod template (the Deployment controller's
// "new" one: its template equals the Deployment's, apart from the
// pod-template-hash label) has them all available, and no pod of an older
// ReplicaSet is left.
func deploymentRolledOut(ctx context.Context, cs kubernetes.Interface, ns, name string) (bool, string, error) {
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, "", err
	}
	ok, state := available(d)
	if !ok {
		return false, state, nil
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	if d.Status.UpdatedReplicas != want || d.Status.Replicas != want {
		return false, fmt.Sprintf("%s; rollout in progress: %d of %d replicas updated, %d in all", state, d.Status.UpdatedReplicas, want, d.Status.Replicas), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return false, "", fmt.Errorf("Deployment %s/%s: selector: %w", ns, name, err)
	}
	rsList, err := cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return false, "", err
	}
	var current *appsv1.ReplicaSet
	old := map[types.UID]string{}
	for i := range rsList.Items {
		rs := &rsList.Items[i]
		if !metav1.IsControlledBy(rs, d) {
			continue
		}
		if current == nil && sameTemplate(&rs.Spec.Template, &d.Spec.Template) {
			current = rs
			continue
		}
		old[rs.UID] = rs.Name
	}
	if current == nil {
		return false, state + "; no ReplicaSet of the current pod template yet", nil
	}
	if current.Status.AvailableReplicas < want {
		return false, fmt.Sprintf("%s; ReplicaSet %s (current template, hash %s): %d of %d replicas available",
			state, current.Name, current.Labels[appsv1.DefaultDeploymentUniqueLabelKey], current.Status.AvailableReplicas, want), nil
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return false, "", err
	}
	var left []string
	for _, p := range pods.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && old[ref.UID] != "" {
			left = append(left, fmt.Sprintf("%s (ReplicaSet %s)", p.Name, old[ref.UID]))
		}
	}
	if len(left) > 0 {
		return false, fmt.Sprintf("%s; %d pod(s) of older ReplicaSets still there: %s", state, len(left), strings.Join(left, ", ")), nil
	}
	return true, fmt.Sprintf("%s; ReplicaSet %s has rolled out", state, current.Name), nil
}

// sameTemplate compares pod templates as the Deployment controller does to
// find a Deployment's current ReplicaSet: equal apart from the
// pod-template-hash label, which the ReplicaSet's template carries and the
// Deployment's does not.
func sameTemplate(a, b *corev1.PodTemplateSpec) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	delete(a.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	delete(b.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	return equality.Semantic.DeepEqual(a, b)
}

// proxyTag is the image tag plane p's injector gives proxies: global.tag
// of the release's values (WithValues may override the plane's tag).
func (i *Installer) proxyTag(p plane) string {
	if g, ok := i.istiodValues(p)["global"].(map[string]any); ok {
		if t, ok := g["tag"]; ok && t != nil && fmt.Sprint(t) != "" {
			return fmt.Sprint(t)
		}
	}
	return p.tag
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
// dry-run creates a pod in it until the answer carries an istio-proxy of
// image tag (or tag-<variant>, e.g. 1.30.3-distroless); another tag means
// the old injector still answers.
func (i *Installer) waitInjection(ctx context.Context, cs kubernetes.Interface, revision, tag string) error {
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
			i.s.log.Info("could not delete the injection probe's namespace", "namespace", ns.Name, "error", err)
		}
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "injection-probe", Namespace: ns.Name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: probeImage}}},
	}
	return poll(ctx, fmt.Sprintf("the sidecar injector of revision %q to inject %s of tag %s into a pod in namespace %s", revisionLabelValue(revision), sidecar.ContainerName, tag, ns.Name),
		func(ctx context.Context) (bool, string, error) {
			got, err := cs.CoreV1().Pods(ns.Name).Create(ctx, pod.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return false, "", err
			}
			proxy := sidecar.Proxy(got)
			switch {
			case proxy == nil:
				return false, "pod admitted without " + sidecar.ContainerName + "; containers: " + containerNames(got), nil
			case !sidecar.TagIsVersion(sidecar.ImageTag(proxy.Image), tag):
				return false, fmt.Sprintf("injected %s %s, not tag %s: the injector of another version answers", sidecar.ContainerName, proxy.Image, tag), nil
			}
			return true, "injected " + proxy.Image, nil
		})
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
