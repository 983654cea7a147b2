package istiostats

import (
	"os"
	"strings"
	"testing"
)

const (
	clientA = "spiffe://cluster.local/ns/meshproof/sa/service-a"
	serverB = "spiffe://cluster.local/ns/meshproof/sa/service-b"
)

func TestInboundTCPFromSidecarStatistics(t *testing.T) {
	text, err := os.ReadFile("testdata/server-sidecar.prom")
	if err != nil {
		t.Fatal(err)
	}
	samples, err := Parse(text, TCPConnectionsOpened)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 4 {
		t.Fatalf("kept %d samples, want the 4 of %s", len(samples), TCPConnectionsOpened)
	}
	counts, err := InboundTCP(samples)
	if err != nil {
		t.Fatal(err)
	}
	want := Counts{
		{PolicyMutualTLS, clientA, serverB}: 3,
		// Two samples differing in response_flags only are one peer.
		{PolicyNone, Unknown, Unknown}: 3,
	}
	if len(counts) != len(want) {
		t.Fatalf("counts %v, want %v (the reporter=source sample is the client side and must not count)", counts, want)
	}
	for p, n := range want {
		if counts[p] != n {
			t.Errorf("%s: %d, want %d", p, counts[p], n)
		}
	}
}

func TestSince(t *testing.T) {
	mtls := Peer{PolicyMutualTLS, clientA, serverB}
	none := Peer{PolicyNone, Unknown, Unknown}
	before := Counts{mtls: 3, none: 1}
	delta, err := Counts{mtls: 5, none: 1}.Since(before)
	if err != nil || len(delta) != 1 || delta[mtls] != 2 || delta.Total() != 2 {
		t.Fatalf("delta %v, %v; want 2 %s", delta, err, mtls)
	}
	if delta, err := (Counts{mtls: 3, none: 1, {PolicyNone, Unknown, serverB}: 4}).Since(Counts{}); err != nil || delta.Total() != 8 {
		t.Fatalf("from nothing: %v, %v", delta, err)
	}
	if _, err := (Counts{mtls: 1}).Since(before); err == nil || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("a counter going down: %v, want the sidecar restarted", err)
	}
	if _, err := (Counts{mtls: 3}).Since(before); err == nil || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("a counter disappearing: %v, want the sidecar restarted", err)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, text := range []string{
		"upstream connect error or disconnect/reset before headers",
		`istio_tcp_connections_opened_total{reporter="destination"`,
		`istio_tcp_connections_opened_total{reporter="destination"} many`,
		`istio_tcp_connections_opened_total{reporter=destination} 1`,
		`istio_tcp_connections_opened_total{reporter="a",reporter="b"} 1`,
		`istio_tcp_connections_opened_total{reporter="a\x"} 1`,
		`istio_tcp_connections_opened_total{reporter="a"}1`,
		`istio_tcp_connections_opened_total 1 2 3`,
		`{reporter="a"} 1`,
	} {
		if s, err := Parse([]byte("# TYPE x counter\n" + text + "\n")); err == nil {
			t.Errorf("%q parsed as %+v", text, s)
		} else if !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: error %q does not name line 2", text, err)
		}
	}
	if _, err := InboundTCP([]Sample{{Name: TCPConnectionsOpened, Labels: map[string]string{LabelReporter: ReporterDestination}, Value: 1.5}}); err == nil {
		t.Error("a fractional connection count was accepted")
	}
}

func TestFormatParses(t *testing.T) {
	in := []Sample{
		{Name: TCPConnectionsOpened, Labels: map[string]string{LabelReporter: ReporterDestination, LabelSourcePrincipal: `odd "quoted" \ value` + "\n", LabelSecurityPolicy: PolicyNone}, Value: 7},
		{Name: TCPConnectionsOpened, Labels: map[string]string{LabelReporter: ReporterDestination}, Value: 1},
	}
	text := Format(in, "counter")
	if !strings.HasPrefix(string(text), "# TYPE istio_tcp_connections_opened_total counter\n") || strings.Count(string(text), "# TYPE") != 1 {
		t.Fatalf("formatted:\n%s", text)
	}
	out, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Labels[LabelSourcePrincipal] != in[0].Labels[LabelSourcePrincipal] || out[0].Value != 7 {
		t.Fatalf("round trip: %+v", out)
	}
}
