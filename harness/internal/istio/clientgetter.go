package istio

import (
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// restClientGetter adapts a bare *rest.Config to the
// genericclioptions.RESTClientGetter that Helm's action.Configuration and
// kube.Client expect. Helm's own implementation (genericclioptions.ConfigFlags)
// insists on a kubeconfig file; callers such as a test apiserver only have a
// *rest.Config, so meshproof provides the four methods itself.
//
// The discovery client and REST mapper are created once and shared: Helm
// invalidates/resets them after it creates CRDs, which only helps if every
// caller sees the same instances.
type restClientGetter struct {
	config    *rest.Config
	namespace string

	once      sync.Once
	discovery discovery.CachedDiscoveryInterface
	mapper    meta.RESTMapper
	initErr   error
}

func newRESTClientGetter(config *rest.Config, namespace string) *restClientGetter {
	return &restClientGetter{config: config, namespace: namespace}
}

// ToRESTConfig returns a copy so that Helm's tweaks (it sets rate limits and
// warning handlers on the configs it receives) never leak back to the caller.
func (g *restClientGetter) ToRESTConfig() (*rest.Config, error) {
	return rest.CopyConfig(g.config), nil
}

func (g *restClientGetter) init() {
	g.once.Do(func() {
		dc, err := discovery.NewDiscoveryClientForConfig(rest.CopyConfig(g.config))
		if err != nil {
			g.initErr = fmt.Errorf("creating discovery client: %w", err)
			return
		}
		g.discovery = memory.NewMemCacheClient(dc)
		deferred := restmapper.NewDeferredDiscoveryRESTMapper(g.discovery)
		g.mapper = restmapper.NewShortcutExpander(deferred, g.discovery, nil)
	})
}

// ToDiscoveryClient returns a discovery client cached in memory; Helm calls
// Invalidate on it when it needs fresh data.
func (g *restClientGetter) ToDiscoveryClient() (discovery.CachedDiscoveryInterface, error) {
	g.init()
	return g.discovery, g.initErr
}

// ToRESTMapper returns a deferred discovery mapper, which is resettable
// (meta.ResettableRESTMapper) so that newly created CRDs become mappable.
func (g *restClientGetter) ToRESTMapper() (meta.RESTMapper, error) {
	g.init()
	return g.mapper, g.initErr
}

// ToRawKubeConfigLoader returns a loader whose only meaningful answers are the
// rest config and the namespace: Helm's kube.Client uses Namespace() as the
// default namespace of the objects it builds.
func (g *restClientGetter) ToRawKubeConfigLoader() clientcmd.ClientConfig {
	return fixedClientConfig{getter: g}
}

// resetMapper forgets cached discovery data so that kinds created since (the
// Istio CRDs) become mappable.
func (g *restClientGetter) resetMapper() {
	g.init()
	if g.initErr != nil {
		return
	}
	g.discovery.Invalidate()
	if r, ok := g.mapper.(meta.ResettableRESTMapper); ok {
		r.Reset()
	}
}

// fixedClientConfig is a clientcmd.ClientConfig over a fixed rest config and
// namespace, with no kubeconfig file behind it.
type fixedClientConfig struct{ getter *restClientGetter }

func (c fixedClientConfig) RawConfig() (clientcmdapi.Config, error) {
	return *clientcmdapi.NewConfig(), nil
}

func (c fixedClientConfig) ClientConfig() (*rest.Config, error) { return c.getter.ToRESTConfig() }

func (c fixedClientConfig) Namespace() (string, bool, error) {
	return c.getter.namespace, true, nil
}

// ConfigAccess is part of the interface but meaningless without a kubeconfig
// file; it returns the default loading rules, which nothing in meshproof's use
// of Helm writes through.
func (c fixedClientConfig) ConfigAccess() clientcmd.ConfigAccess {
	return clientcmd.NewDefaultClientConfigLoadingRules()
}
