package cluster

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/kube"
)

// world is an informer cache of the cluster's objects, for readers that
// look the whole cluster up on every request: the simulated data plane
// lists every pod, Service, WorkloadEntry and policy to decide one
// request, as a real proxy decides from the state it was pushed rather
// than by asking the API server each time. Served from the API server,
// those lists were the rehearsal's largest CPU cost (the API server's
// more than istiod's, measured on make rehearse).
type world struct {
	cache  cache.Cache
	cancel context.CancelFunc
	done   chan struct{}
}

// startWorld starts the cache; it lives until Destroy. An object type's
// informer starts on its first read, which waits for it to sync.
func (c *Cluster) startWorld(ctx context.Context) error {
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	ca, err := cache.New(c.env.Config, cache.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("local cluster %s: an informer cache: %w", c.name, err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &world{cache: ca, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		if err := ca.Start(runCtx); err != nil {
			c.logger.Error("the informer cache stopped", "cluster", c.name, "error", err)
		}
	}()
	if !ca.WaitForCacheSync(ctx) {
		w.stop()
		return fmt.Errorf("local cluster %s: the informer cache did not start: %w", c.name, ctx.Err())
	}
	c.world = w
	return nil
}

func (w *world) stop() {
	w.cancel()
	<-w.done
}

// World reads the cluster from an informer cache that follows it (nil
// without WithIstiod or before Create): what it returns may lag the API
// server by the watch's delivery, as istiod's view does. Reads that must
// see a write just made go to the API server.
func (c *Cluster) World() client.Reader {
	if c.world == nil {
		return nil
	}
	return c.world.cache
}
