package probe

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
)

func TestInboundTCPReadsTheServerSidecar(t *testing.T) {
	text, err := os.ReadFile("istiostats/testdata/server-sidecar.prom")
	if err != nil {
		t.Fatal(err)
	}
	execer := &scriptedExecer{run: answer(string(text), nil)}
	counts, err := NewStatsReader(execer).InboundTCP(t.Context(), serverPod)
	if err != nil {
		t.Fatal(err)
	}
	mtls := istiostats.Peer{SecurityPolicy: istiostats.PolicyMutualTLS,
		SourcePrincipal:      "spiffe://cluster.local/ns/meshproof/sa/service-a",
		DestinationPrincipal: "spiffe://cluster.local/ns/meshproof/sa/service-b"}
	if counts[mtls] != 3 || counts.Total() != 6 {
		t.Fatalf("counts %v, want 3 %s of 6", counts, mtls)
	}
	calls, deadlines := execer.recorded()
	if len(calls) != 1 || calls[0].Container != ProxyContainer || calls[0].Pod != serverPod ||
		!slices.Equal(calls[0].Argv, []string{"pilot-agent", "request", "GET", "stats/prometheus"}) || calls[0].Stdin != nil {
		t.Fatalf("ran %+v", calls)
	}
	if deadlines[0].IsZero() {
		t.Fatal("the exec was not bounded")
	}
}

func TestInboundTCPErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		stdout string
		err    error
		want   string
	}{
		"exec fails":     {"", errors.New("container istio-proxy is not valid for pod"), "is not valid"},
		"not statistics": {"upstream connect error or disconnect/reset before headers\n", nil, "line 1"},
		"fractional":     {`istio_tcp_connections_opened_total{reporter="destination"} 0.5` + "\n", nil, "not a count"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewStatsReader(&scriptedExecer{run: answer(tc.stdout, tc.err)}).InboundTCP(t.Context(), serverPod)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), serverPod.String()) {
				t.Fatalf("error %v, want one naming %s and %q", err, serverPod, tc.want)
			}
		})
	}
}
