package dataplane_test

import (
	"testing"

	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
)

// Host names read as the cluster's DNS reads them; others name no Service.
func TestServiceName(t *testing.T) {
	for host, want := range map[string][2]string{
		"grpc-b":                              {"grpc-b", "client-ns"},
		"grpc-b.other":                        {"grpc-b", "other"},
		"grpc-b.other.svc":                    {"grpc-b", "other"},
		"grpc-b.other.svc.cluster.local":      {"grpc-b", "other"},
		"grpc-b.other.svc.cluster.local.":     {"grpc-b", "other"},
		"127.0.0.1":                           {"", ""},
		"grpc-b.other.svc.example.com":        {"", ""},
		"grpc-b.other.pod.cluster.local.more": {"", ""},
	} {
		name, ns, ok := dataplane.ServiceName(host, "client-ns")
		if got := [2]string{name, ns}; got != want || ok != (want[0] != "") {
			t.Errorf("ServiceName(%q) = %q, %q, %t; want %q", host, name, ns, ok, want)
		}
	}
}
