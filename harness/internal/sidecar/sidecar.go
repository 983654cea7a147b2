// Package sidecar reads what Istio's injection put into a pod: the
// istio-proxy container, as a native sidecar (an init container that keeps
// running, restartPolicy Always: Istio ≥1.30 on Kubernetes ≥1.33) or as a
// regular container, and the Istio version its image is tagged with. The
// engine, the Istio installer's readiness check and the simulated data
// plane all ask it, so "is this pod in the mesh" has one answer.
package sidecar

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ContainerName is the container Istio injects the sidecar as.
const ContainerName = "istio-proxy"

// Proxy returns the pod's injected sidecar container, or nil when the pod
// has none.
func Proxy(pod *corev1.Pod) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == ContainerName {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.Name == ContainerName && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return c
		}
	}
	return nil
}

// ImageTag is the tag of an image reference ("" when it has none).
func ImageTag(ref string) string {
	ref, _, _ = strings.Cut(ref, "@") // a digest follows the tag
	slash, colon := strings.LastIndex(ref, "/"), strings.LastIndex(ref, ":")
	if colon > slash {
		return ref[colon+1:]
	}
	return ""
}

// TagIsVersion reports whether an Istio image tag is version, or version
// with the variant suffix the charts append (1.30.3-distroless).
func TagIsVersion(tag, version string) bool {
	return tag == version || strings.HasPrefix(tag, version+"-")
}
