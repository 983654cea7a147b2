package cluster

import (
	"slices"
	"testing"
)

func TestExpandAll(t *testing.T) {
	env := []string{"POD_NAMESPACE=ns", "EMPTY="}
	got := expandAll([]string{"--domain", "$(POD_NAMESPACE).svc.cluster.local", "$(EMPTY)x", "$$(POD_NAMESPACE)", "$(UNKNOWN)", "$(unclosed", "a$"}, env)
	want := []string{"--domain", "ns.svc.cluster.local", "x", "$(POD_NAMESPACE)", "$(UNKNOWN)", "$(unclosed", "a$"}
	if !slices.Equal(got, want) {
		t.Errorf("expandAll = %q, want %q", got, want)
	}
}

func TestGRPCPorts(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"serve", "--ports=", "--grpc-ports=7070,7071"}, []string{"7070", "7071"}},
		{[]string{"serve", "-grpc-ports", "7070"}, []string{"7070"}},
		{[]string{"serve", "--ports=8080"}, nil},
		{[]string{"serve", "--grpc-ports="}, nil},
	} {
		if got := grpcPorts(c.args); !slices.Equal(got, c.want) {
			t.Errorf("grpcPorts(%q) = %q, want %q", c.args, got, c.want)
		}
	}
}

func TestDownwardAPIFile(t *testing.T) {
	got := string(downwardAPIFile(map[string]string{"b": `say "hi"`, "a": "1"}))
	if want := "a=\"1\"\nb=\"say \\\"hi\\\"\"\n"; got != want {
		t.Errorf("downwardAPIFile = %q, want %q", got, want)
	}
}
