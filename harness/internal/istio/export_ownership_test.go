package istio

import "k8s.io/client-go/rest"

// HelmGetter is the RESTClientGetter Helm's actions need, for tests that
// install releases the way the Helm CLI would.
func HelmGetter(config *rest.Config, namespace string) *restClientGetter {
	return newRESTClientGetter(config, namespace)
}
