package run

import (
	"github.com/meshproof/meshproof/harness/internal/engine"
	"github.com/meshproof/meshproof/harness/internal/probe"
)

// The pod transport's readers are the engine's seams; the composition root
// is where the two meet, so it says so here and not in either package.
var (
	_ engine.Prober            = (*probe.Prober)(nil)
	_ engine.CertReader        = (*probe.CertReader)(nil)
	_ engine.ConnectionWitness = (*probe.StatsReader)(nil)
	_ engine.ZtunnelWitness    = (*probe.ZtunnelReader)(nil)
)
