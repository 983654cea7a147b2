package sidecar

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestProxy(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	for name, tc := range map[string]struct {
		pod   corev1.PodSpec
		image string
	}{
		"native sidecar": {corev1.PodSpec{InitContainers: []corev1.Container{{Name: "istio-init"}, {Name: ContainerName, Image: "docker.io/istio/proxyv2:1.30.3", RestartPolicy: &always}},
			Containers: []corev1.Container{{Name: "app"}}}, "docker.io/istio/proxyv2:1.30.3"},
		"regular container": {corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: ContainerName, Image: "proxyv2:1.29.6"}}}, "proxyv2:1.29.6"},
		// An init container that ends is not a sidecar, whatever its name.
		"init container that ends": {corev1.PodSpec{InitContainers: []corev1.Container{{Name: ContainerName, Image: "x:1"}}}, ""},
		"not injected":             {corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}, ""},
	} {
		c := Proxy(&corev1.Pod{Spec: tc.pod})
		got := ""
		if c != nil {
			got = c.Image
		}
		if got != tc.image {
			t.Errorf("%s: proxy image %q, want %q", name, got, tc.image)
		}
	}
}

func TestImageTagAndVersion(t *testing.T) {
	for ref, tag := range map[string]string{
		"docker.io/istio/proxyv2:1.30.3":                   "1.30.3",
		"localhost:5000/istio/proxyv2:1.30.3-distroless":   "1.30.3-distroless",
		"localhost:5000/istio/proxyv2":                     "",
		"gcr.io/istio/proxyv2:1.30.3@sha256:0123456789abc": "1.30.3",
	} {
		if got := ImageTag(ref); got != tag {
			t.Errorf("ImageTag(%q) = %q, want %q", ref, got, tag)
		}
	}
	for tag, want := range map[string]bool{"1.30.3": true, "1.30.3-distroless": true, "1.30.30": false, "1.29.6": false, "": false} {
		if TagIsVersion(tag, "1.30.3") != want {
			t.Errorf("TagIsVersion(%q, 1.30.3) = %v", tag, !want)
		}
	}
}
