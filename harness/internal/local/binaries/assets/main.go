// Command assets builds the local stack's binaries from source, once, and
// prints where they are cached: the directory holding the kube-apiserver and
// etcd binaries that meshproof's tests use, then (on request) the local
// cluster's tools.
//
//	KUBEBUILDER_ASSETS=$(go run ./harness/internal/local/binaries/assets) go test ./...
//
// The directory goes to stdout, build progress to stderr. When KUBEBUILDER_ASSETS is
// already set it is checked and printed, and nothing is built. The versions are pinned
// by the wrapper modules in this directory (kube-apiserver/go.mod, etcd/go.mod).
//
// With the argument local-cluster it also builds the other parts of the local
// cluster (kube-controller-manager, kube-scheduler, kwok), with istiod the Istio
// control plane (pilot-discovery, pilot-agent), so that a CI cache can hold them;
// their paths follow the directory on stdout.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var tools []binaries.Tool
	for _, arg := range os.Args[1:] {
		switch arg {
		case "local-cluster":
			tools = append(tools, binaries.KubeControllerManager, binaries.KubeScheduler, binaries.Kwok, binaries.KwokStages)
		case "istiod":
			tools = append(tools, binaries.PilotDiscovery, binaries.PilotAgent)
		default:
			fmt.Fprintf(os.Stderr, "assets: unknown argument %q (want local-cluster or istiod)\n", arg)
			os.Exit(2)
		}
	}
	dir, paths, err := binaries.EnsureAll(ctx, os.Stderr, tools...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "assets:", err)
		os.Exit(1)
	}
	fmt.Println(dir)
	for _, path := range paths {
		fmt.Println(path)
	}
}
