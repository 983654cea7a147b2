package binaries

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The releases the local cluster's other parts are built from. Each must match
// the require line of its wrapper module (TestConstantsMatchWrapperModules).
const (
	// KwokVersion is the sigs.k8s.io/kwok release (harness/internal/local/binaries/assets/kwok).
	KwokVersion = "v0.8.0"
	// IstioVersion is the istio.io/istio module version istiod and pilot-agent
	// are built from (harness/internal/local/binaries/assets/istiod): a pseudo-version of an
	// Istio 1.30 development commit, since Istio publishes no tagged Go modules.
	IstioVersion = "v0.0.0-20260423205519-b01690e6db7d"

	// ToolsEnv names a directory of already available local-cluster binaries
	// (kube-controller-manager, kube-scheduler, kwok, pilot-discovery,
	// pilot-agent); a binary found there is used as is and never built.
	ToolsEnv = "MESHPROOF_TOOLS"
)

// Tool is one binary of the local cluster beyond kube-apiserver and etcd. Tools
// are built only when a caller asks for one (EnsureTool), so test packages
// that do not run a local cluster never pay for their builds.
type Tool struct {
	binary
	// release names the cache directory the tool shares with the other
	// binaries of its wrapper module.
	release string
}

// The local cluster's tools. kube-controller-manager and kube-scheduler come
// from kube-apiserver's wrapper module (same k8s.io/kubernetes, same staging
// pins); kwok and Istio need other client-go releases, so each has its own.
var (
	KubeControllerManager = Tool{binary{name: "kube-controller-manager", module: "kube-apiserver", pkg: "k8s.io/kubernetes/cmd/kube-controller-manager", ldflags: kubeVersionLDFlags}, "kubernetes-" + KubernetesVersion}
	KubeScheduler         = Tool{binary{name: "kube-scheduler", module: "kube-apiserver", pkg: "k8s.io/kubernetes/cmd/kube-scheduler", ldflags: kubeVersionLDFlags}, "kubernetes-" + KubernetesVersion}
	Kwok                  = Tool{binary{name: "kwok", module: "kwok", pkg: "sigs.k8s.io/kwok/cmd/kwok"}, "kwok-" + KwokVersion}
	// KwokStages prints the Stage objects of the same kwok release (kwok does
	// nothing without them), from meshproof's small program in kwok's module.
	KwokStages     = Tool{binary{name: "kwok-stages", module: "kwok", pkg: "github.com/meshproof/meshproof/harness/internal/local/binaries/assets/kwok/stages"}, "kwok-" + KwokVersion}
	PilotDiscovery = Tool{binary{name: "pilot-discovery", module: "istiod", pkg: "istio.io/istio/pilot/cmd/pilot-discovery", ldflags: istioVersionLDFlags}, "istio-" + IstioVersion}
	PilotAgent     = Tool{binary{name: "pilot-agent", module: "istiod", pkg: "istio.io/istio/pilot/cmd/pilot-agent", ldflags: istioVersionLDFlags}, "istio-" + IstioVersion}
)

// EnsureTool returns the path of t's binary, building it from source through
// the Go module proxy first when neither $MESHPROOF_TOOLS nor the cache
// (<cache>/tools/<release>/) holds it. Builds take minutes on a cold machine;
// ctx bounds them. Progress goes to log.
func EnsureTool(ctx context.Context, t Tool, log io.Writer) (string, error) {
	if dir := os.Getenv(ToolsEnv); dir != "" {
		path := filepath.Join(dir, t.name)
		if err := checkExecutable(path); err == nil {
			return path, nil
		}
	}
	dir, err := ToolDir(t)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, t.name)
	if checkExecutable(path) == nil {
		return path, nil
	}
	root, err := mainModuleRoot(ctx)
	if err != nil {
		return "", fmt.Errorf("%s is not built yet: %w (or set %s to a directory holding it)", t.name, err, ToolsEnv)
	}
	if err := buildInto(ctx, root, dir, []binary{t.binary}, log, nil); err != nil {
		return "", fmt.Errorf("building %s from source into %s: %w (alternatively set %s to a directory holding it)", t.name, dir, err, ToolsEnv)
	}
	return path, checkExecutable(path)
}

// ToolDir is where t's binary is cached, whether or not it is built yet.
func ToolDir(t Tool) (string, error) {
	root, err := CacheRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "tools", t.release), nil
}

// istioVersionLDFlags stamps the module version into what istiod reports (its
// /version and the version label of its proxies' configuration), as Istio's
// release builds stamp theirs.
func istioVersionLDFlags(context.Context, string) (string, error) {
	return "-X istio.io/istio/pkg/version.buildVersion=" + IstioVersion + " -X istio.io/istio/pkg/version.buildStatus=Clean", nil
}
