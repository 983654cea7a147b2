// Package controlplane runs a real Kubernetes control plane as local
// processes: etcd and kube-apiserver (no nodes), with Istio's real
// CustomResourceDefinitions installed. It is the base of the local cluster
// (harness/internal/local/cluster) and, through harness/internal/testsupport,
// of the tests of meshproof's Kubernetes-facing packages. Both processes end
// with the program that started them, also when it is killed (package proc).
//
// The binaries come from package binaries (built from source and cached; see
// `go run ./harness/internal/local/binaries/assets`). The CRDs are read from
// the istio.io/api module that meshproof's go.mod pins, so the schemas are
// exactly the ones Istio ships for that release.
package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/kube"
	"github.com/meshproof/meshproof/harness/internal/local/binaries"
)

const (
	// IstioCRDsEnv overrides where Istio's CRD file is read from.
	IstioCRDsEnv = "MESHPROOF_ISTIO_CRDS"

	istioAPIModule = "istio.io/api"
	// istioCRDFile is the file, inside the istio.io/api module, that holds every Istio CRD.
	istioCRDFile = "kubernetes/customresourcedefinitions.gen.yaml"

	// establishTimeout bounds the wait for the installed CRDs to be Established.
	establishTimeout = time.Minute
	// startTimeout bounds how long each control-plane process may take to come up;
	// generous because CI machines are shared and slow.
	startTimeout = 90 * time.Second
	stopTimeout  = 30 * time.Second
)

// Env is a running control plane and clients for it.
type Env struct {
	// Config authenticates as a cluster admin (system:masters).
	Config *rest.Config
	// Kubeconfig is a kubeconfig file holding Config, for other processes.
	Kubeconfig string
	// ServingCAFile holds the CA certificate that signed the API server's
	// serving certificate (kube-controller-manager's --root-ca-file).
	ServingCAFile string
	// ServiceAccountKeyFile holds the key the API server signs ServiceAccount
	// tokens with (kube-controller-manager's --service-account-private-key-file).
	ServiceAccountKeyFile string
	// Scheme knows the built-in Kubernetes types, apiextensions/v1 and Istio's
	// security/v1 and networking/v1 types.
	Scheme *runtime.Scheme
	// Client is an uncached controller-runtime client using Scheme.
	Client client.Client
	// Discovery talks to the API server's discovery endpoints.
	Discovery *discovery.DiscoveryClient
	// Istio is Istio's typed clientset, which also serves Istio's apply configurations.
	Istio istioclient.Interface
	// Metadata lists and gets any resource as PartialObjectMetadata.
	Metadata metadata.Interface
	// ServerVersion is what the API server answered on /version.
	ServerVersion *version.Info
	// IstioCRDs are the installed Istio CRDs, all Established (none with
	// WithoutIstioCRDs).
	IstioCRDs []*apiextensionsv1.CustomResourceDefinition

	plane *controlPlane
}

// StartEnv starts a control plane and returns it with the function that stops it;
// it suits TestMain, where no testing.TB exists. The caller must call stop once the
// Env is no longer needed, also when the tests fail. etcd and kube-apiserver are
// children that end with this program even if it is killed (package proc); the
// test entry points (Main, Shared, Start) also stop them in order on SIGINT.
//
// When KUBEBUILDER_ASSETS is unset the binaries are built first if they are not
// cached, which takes minutes on a cold machine; ctx bounds that and the start.
func StartEnv(ctx context.Context, opts ...Option) (*Env, func() error, error) {
	o := options{istioCRDs: true}
	for _, opt := range opts {
		opt(&o)
	}
	assets, err := binaries.Ensure(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("no kube-apiserver/etcd binaries: %w\n"+
			"Fix: run `go run ./harness/internal/local/binaries/assets` from the meshproof checkout (it builds them through the Go module proxy and prints their directory), "+
			"or set %s to a directory holding kube-apiserver and etcd", err, binaries.AssetsEnv)
	}
	var crdFile string
	if o.istioCRDs {
		if crdFile, err = IstioCRDFile(ctx); err != nil {
			return nil, nil, err
		}
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return nil, nil, err
	}
	plane, err := startControlPlane(ctx, assets, &o)
	if err != nil {
		return nil, nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	env, err := newEnv(ctx, plane, scheme, crdFile)
	if err != nil {
		return nil, nil, errors.Join(err, stopError(plane.stop()))
	}
	return env, plane.stop, nil
}

type options struct {
	istioCRDs               bool
	serviceAccountAdmission bool
}

// Option configures StartEnv.
type Option func(*options)

// WithoutIstioCRDs leaves Istio's CRDs out, for a cluster whose Istio charts
// install their own.
func WithoutIstioCRDs() Option { return func(o *options) { o.istioCRDs = false } }

// WithServiceAccountAdmission enables the ServiceAccount admission plugin, which
// the bare control plane disables because nothing creates the namespaces'
// default ServiceAccounts there; a cluster running kube-controller-manager has
// the controller that does.
func WithServiceAccountAdmission() Option {
	return func(o *options) { o.serviceAccountAdmission = true }
}

func stopError(err error) error {
	if err != nil {
		return fmt.Errorf("and stopping the control plane failed too: %w", err)
	}
	return nil
}

func newEnv(ctx context.Context, plane *controlPlane, scheme *runtime.Scheme, crdFile string) (*Env, error) {
	cfg := plane.config
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("creating a client: %w", err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating a discovery client: %w", err)
	}
	istio, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating an Istio client: %w", err)
	}
	// Listing every type, as deploy.Find does, touches deprecated ones
	// (ComponentStatus, Endpoints) whose warnings are only noise in test output.
	quiet := rest.CopyConfig(cfg)
	quiet.WarningHandler = rest.NoWarnings{}
	meta, err := metadata.NewForConfig(quiet)
	if err != nil {
		return nil, fmt.Errorf("creating a metadata client: %w", err)
	}
	serverVersion, err := disco.ServerVersionWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("asking the API server for /version: %w", err)
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	if crdFile != "" {
		installed, err := installCRDs(ctx, c, crdFile)
		if err != nil {
			return nil, fmt.Errorf("installing Istio's CRDs from %s: %w", crdFile, err)
		}
		if crds, err = waitEstablished(ctx, c, installed); err != nil {
			return nil, err
		}
	}
	return &Env{
		Config:                cfg,
		Kubeconfig:            plane.kubeconfig,
		ServingCAFile:         plane.servingCAFile,
		ServiceAccountKeyFile: plane.saKeyFile,
		Scheme:                scheme,
		Client:                c,
		Discovery:             disco,
		Istio:                 istio,
		Metadata:              meta,
		ServerVersion:         serverVersion,
		IstioCRDs:             crds,
		plane:                 plane,
	}, nil
}

// waitEstablished waits until every installed CRD reports Established=True:
// a CRD that appears in discovery may not be ready to serve yet.
func waitEstablished(ctx context.Context, c client.Client, installed []*apiextensionsv1.CustomResourceDefinition) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	if len(installed) == 0 {
		return nil, errors.New("no Istio CRDs were installed: the CRD file held none")
	}
	current := make([]*apiextensionsv1.CustomResourceDefinition, len(installed))
	var pending []string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, establishTimeout, true, func(ctx context.Context) (bool, error) {
		pending = pending[:0]
		for i, crd := range installed {
			got := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.Get(ctx, types.NamespacedName{Name: crd.Name}, got); err != nil {
				return false, fmt.Errorf("reading CRD %s: %w", crd.Name, err)
			}
			current[i] = got
			if !isEstablished(got) {
				pending = append(pending, crd.Name)
			}
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("Istio CRDs not Established within %s (still pending: %s): %w", establishTimeout, strings.Join(pending, ", "), err)
	}
	return current, nil
}

func isEstablished(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, cond := range crd.Status.Conditions {
		if cond.Type == apiextensionsv1.Established {
			return cond.Status == apiextensionsv1.ConditionTrue
		}
	}
	return false
}

// IstioCRDFile locates Istio's CRD file in the istio.io/api module of the current
// module graph (the version meshproof's go.mod pins), or returns $MESHPROOF_ISTIO_CRDS.
func IstioCRDFile(ctx context.Context) (string, error) {
	if path := os.Getenv(IstioCRDsEnv); path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("%s: %w", IstioCRDsEnv, err)
		}
		return path, nil
	}
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", istioAPIModule)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("locating module %s to read Istio's CRDs (go list -m in %s): %v %s\n"+
			"Fix: run the tests from the meshproof checkout with its modules downloaded (`go mod download %s`), or set %s to the CRD file",
			istioAPIModule, workingDir(), err, strings.TrimSpace(stderr.String()), istioAPIModule, IstioCRDsEnv)
	}
	path := filepath.Join(dir, filepath.FromSlash(istioCRDFile))
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("Istio's CRD file is missing from module %s: %w", istioAPIModule, err)
	}
	return path, nil
}

func workingDir() string {
	wd, err := os.Getwd()
	if err != nil {
		return "the working directory"
	}
	return wd
}

// installCRDs creates every CustomResourceDefinition of a multi-document
// YAML file (one that exists already is left as it is) and returns them as
// created.
func installCRDs(ctx context.Context, c client.Client, path string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var crds []*apiextensionsv1.CustomResourceDefinition
	for {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := dec.Decode(crd); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		if crd.Kind != "CustomResourceDefinition" {
			continue // an empty document between separators
		}
		if err := c.Create(ctx, crd); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating CRD %s: %w", crd.Name, err)
		}
		crds = append(crds, crd)
	}
	return crds, nil
}
