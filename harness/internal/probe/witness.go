package probe

import (
	"context"
	"fmt"

	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/results"
)

// StatsPath is the Envoy admin request for the sidecar's statistics in
// Prometheus text, where Istio's standard metrics are. No filter is
// asked: Envoy matches a filter against its internal stat names, not the
// Prometheus names, and the whole of a sidecar's statistics is a few
// hundred KiB.
const StatsPath = "stats/prometheus"

// StatsReader reads the TCP connections a server's sidecar counted. It
// implements engine.ConnectionWitness.
type StatsReader struct {
	execer Execer
}

// NewStatsReader returns a StatsReader that execs through e.
func NewStatsReader(e Execer) *StatsReader { return &StatsReader{execer: e} }

// InboundTCP asks server's sidecar, through pilot-agent in the istio-proxy
// container, for its statistics and returns its inbound TCP connection
// counts by peer (istio_tcp_connections_opened_total, reporter
// "destination"). No such sample at all is not an error: a sidecar that
// has accepted no TCP connection yet has none.
func (r *StatsReader) InboundTCP(ctx context.Context, server results.Pod) (istiostats.Counts, error) {
	ctx, cancel := context.WithTimeout(ctx, certExecTimeout)
	defer cancel()
	cmd := Command{Pod: server, Container: ProxyContainer, Argv: []string{"pilot-agent", "request", "GET", StatsPath}}
	stdout, _, err := r.execer.Exec(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("reading the statistics of %s's sidecar: %w", server, err)
	}
	samples, err := istiostats.Parse(stdout, istiostats.TCPConnectionsOpened)
	if err != nil {
		return nil, fmt.Errorf("reading the statistics of %s's sidecar: %w", server, err)
	}
	counts, err := istiostats.InboundTCP(samples)
	if err != nil {
		return nil, fmt.Errorf("reading the statistics of %s's sidecar: %w", server, err)
	}
	return counts, nil
}
