package istio

import "testing"

func TestVersionFromImage(t *testing.T) {
	for image, want := range map[string]string{
		"docker.io/istio/pilot:1.30.3":                 "1.30.3",
		"gcr.io/istio-release/pilot:1.29.6-distroless": "1.29.6",
		"registry.local:5000/istio/pilot:1.30.3-debug": "1.30.3",
		"registry.local:5000/istio/pilot":              "",
		"docker.io/istio/pilot:latest":                 "",
		"docker.io/istio/pilot@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": "",
	} {
		if got := versionFromImage(image); got != want {
			t.Errorf("versionFromImage(%q) = %q, want %q", image, got, want)
		}
	}
}
