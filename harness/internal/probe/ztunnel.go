package probe

import (
	"context"
	"fmt"

	"github.com/meshproof/meshproof/harness/internal/probe/configdump"
	"github.com/meshproof/meshproof/harness/internal/probe/istiostats"
	"github.com/meshproof/meshproof/harness/results"
)

// ztunnel's admin and metrics ports (the ztunnel chart and src/config.rs):
// metrics on 15020 on every address (Prometheus scrapes it), the admin
// API with the config dump on 15000 bound to localhost in the pod, which
// only a port-forward reaches. ztunnel's image has no shell to exec into.
const (
	ZtunnelMetricsPort = 15020
	ZtunnelMetricsPath = "/stats/prometheus"
	ZtunnelAdminPort   = 15000
	ZtunnelDumpPath    = "/config_dump"
)

// ZtunnelReader reads a ztunnel pod's metrics and config dump through a
// PodPortGetter.
type ZtunnelReader struct{ pods PodPortGetter }

// NewZtunnelReader reads through pods.
func NewZtunnelReader(pods PodPortGetter) *ZtunnelReader { return &ZtunnelReader{pods: pods} }

// ZtunnelMetrics reads and parses the ztunnel's TCP counters (connections opened
// and bytes received).
func (r *ZtunnelReader) ZtunnelMetrics(ctx context.Context, ztunnel results.Pod) ([]istiostats.Sample, error) {
	body, err := r.pods.GetPodPort(ctx, ztunnel, ZtunnelMetricsPort, ZtunnelMetricsPath)
	if err != nil {
		return nil, err
	}
	samples, err := istiostats.Parse(body, istiostats.TCPConnectionsOpened, istiostats.TCPReceivedBytes)
	if err != nil {
		return nil, fmt.Errorf("the metrics of ztunnel %s: %w", ztunnel, err)
	}
	return samples, nil
}

// ZtunnelCertificates reads the ztunnel's config dump and returns the
// certificates it holds, by identity.
func (r *ZtunnelReader) ZtunnelCertificates(ctx context.Context, ztunnel results.Pod) (map[string]configdump.ZtunnelCerts, error) {
	body, err := r.pods.GetPodPort(ctx, ztunnel, ZtunnelAdminPort, ZtunnelDumpPath)
	if err != nil {
		return nil, err
	}
	out, err := configdump.ParseZtunnel(body)
	if err != nil {
		return nil, fmt.Errorf("the config dump of ztunnel %s: %w", ztunnel, err)
	}
	return out, nil
}
