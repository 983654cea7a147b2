package diagnose

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/probe"
)

// podRef is what the log and config-dump jobs need of one pod.
type podRef struct {
	namespace, name string
	containers      []containerRef
	inMesh          bool // it has an istio-proxy container
	// node is the node the pod is bound to ("" before scheduling).
	node string
}

type containerRef struct {
	name     string
	kind     string // "init", "" or "ephemeral", for the index
	restarts int32
}

// listPageSize bounds each list response; continue tokens fetch the rest.
const listPageSize = 500

// collectPods lists the pods of ns (only istiod's in the Istio namespace),
// writes them to <ns>-pods.yaml and returns them for the log and config
// dump jobs.
func (c *Collector) collectPods(ctx context.Context, dir, ns string, s *summary) []podRef {
	selector, what := "", "pods"
	if ns == c.istioNS && !slices.Contains(c.namespaces, ns) {
		selector, what = IstiodSelector, "istiod pods"
	}
	rel := ns + "-pods.yaml"
	ictx, cancel := c.itemContext(ctx)
	defer cancel()
	var pods []corev1.Pod
	opts := metav1.ListOptions{LabelSelector: selector, Limit: listPageSize}
	for {
		page, err := c.clientset.CoreV1().Pods(ns).List(ictx, opts)
		if err != nil {
			s.fail(rel, fmt.Sprintf("%s in namespace %s; their logs and config dumps were not collected either", what, ns), err)
			return nil
		}
		pods = append(pods, page.Items...)
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}

	var b strings.Builder
	refs := make([]podRef, 0, len(pods))
	for i := range pods {
		p := &pods[i]
		refs = append(refs, refOf(p))
		p.ManagedFields = nil // who wrote which field is noise here
		p.APIVersion, p.Kind = "v1", "Pod"
		out, err := yaml.Marshal(p)
		if err != nil {
			s.fail(rel, fmt.Sprintf("pod %s/%s as YAML", ns, p.Name), err)
			continue
		}
		b.WriteString("---\n")
		b.Write(out)
	}
	if err := writeFile(dir, rel, []byte(b.String())); err != nil {
		s.fail(rel, what+" in namespace "+ns, err)
	} else {
		s.collected(rel, fmt.Sprintf("%d %s in namespace %s", len(pods), what, ns))
	}
	return refs
}

// refOf lists every container of a pod, init and ephemeral ones included
// (Istio's native sidecar mode runs istio-proxy as an init container),
// with the restart counts the kubelet reported.
func refOf(p *corev1.Pod) podRef {
	restarts := map[string]int32{}
	for _, statuses := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, st := range statuses {
			restarts[st.Name] = st.RestartCount
		}
	}
	ref := podRef{namespace: p.Namespace, name: p.Name, node: p.Spec.NodeName}
	add := func(name, kind string) {
		ref.containers = append(ref.containers, containerRef{name: name, kind: kind, restarts: restarts[name]})
		if name == probe.ProxyContainer {
			ref.inMesh = true
		}
	}
	for _, ct := range p.Spec.InitContainers {
		add(ct.Name, "init")
	}
	for _, ct := range p.Spec.Containers {
		add(ct.Name, "")
	}
	for _, ct := range p.Spec.EphemeralContainers {
		add(ct.Name, "ephemeral")
	}
	return ref
}

// collectLog streams one container's log (its previous instance's if
// previous) into <ns>/<pod>/<container>[.previous].log, bounded in size.
func (c *Collector) collectLog(ctx context.Context, dir string, p podRef, ct containerRef, previous bool, s *summary) {
	rel := filepath.Join(p.namespace, p.name, ct.name+".log")
	what := "log of "
	if previous {
		rel = filepath.Join(p.namespace, p.name, ct.name+".previous.log")
		what = fmt.Sprintf("log of the previous instance (restarted %d times) of ", ct.restarts)
	}
	if ct.kind != "" {
		what += ct.kind + " "
	}
	what += "container " + ct.name
	ictx, cancel := c.itemContext(ctx)
	defer cancel()
	limit, tail := c.limitBytes, c.tailLines
	stream, err := c.clientset.CoreV1().Pods(p.namespace).GetLogs(p.name, &corev1.PodLogOptions{
		Container:  ct.name,
		Previous:   previous,
		LimitBytes: &limit,
		TailLines:  &tail,
		Timestamps: true,
	}).Stream(ictx)
	if err != nil {
		s.fail(rel, what, err)
		return
	}
	defer stream.Close()
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		s.fail(rel, what, err)
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
	if err != nil {
		s.fail(rel, what, err)
		return
	}
	// The server applies LimitBytes; the reader bound keeps a server that
	// ignores it from filling the disk.
	n, copyErr := io.Copy(f, io.LimitReader(stream, limit))
	closeErr := f.Close()
	switch {
	case copyErr != nil:
		s.fail(rel, what, fmt.Errorf("the log is incomplete, reading it stopped after %d bytes: %w", n, copyErr))
	case closeErr != nil:
		s.fail(rel, what, closeErr)
	case n == 0:
		// The API server answers an empty log for a pod not yet scheduled.
		s.collected(rel, what+", empty")
	default:
		s.collected(rel, fmt.Sprintf("%s, %d bytes", what, n))
	}
}

// fakeNodeAnnotation marks the nodes kwok plays the kubelet of (a local
// cluster's): no container runs there, so no container has a log.
const fakeNodeAnnotation = "kwok.x-k8s.io/node"

// fakeNodes are the nodes among pods' nodes that run no containers.
func (c *Collector) fakeNodes(ctx context.Context, pods []podRef) map[string]bool {
	fake := map[string]bool{}
	for _, p := range pods {
		if p.node == "" {
			continue
		}
		if _, seen := fake[p.node]; seen {
			continue
		}
		ictx, cancel := c.itemContext(ctx)
		node, err := c.clientset.CoreV1().Nodes().Get(ictx, p.node, metav1.GetOptions{})
		cancel()
		fake[p.node] = err == nil && node.Annotations[fakeNodeAnnotation] != ""
	}
	return fake
}
