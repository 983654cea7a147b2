// Package kube holds what every Kubernetes-facing package of meshproof
// shares and nothing else: the one scheme its clients read and write
// objects with. It is a leaf: it imports no meshproof package.
package kube

import (
	"fmt"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
)

// NewScheme returns the scheme meshproof's clients use: the built-in
// Kubernetes types, apiextensions/v1 (a run's ledger deletes the CRDs
// Istio's base chart installed; the control plane installs Istio's CRDs)
// and Istio's security/v1 and networking/v1 policies.
func NewScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		apiextensionsv1.AddToScheme,
		securityv1.AddToScheme,
		networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("building the client scheme: %w", err)
		}
	}
	return scheme, nil
}
