// Command assets prints the directory holding the kube-apiserver and etcd binaries
// that meshproof's tests use, building them from source first if they are not cached:
//
//	KUBEBUILDER_ASSETS=$(go run ./harness/testenv/assets) go test ./...
//
// The directory goes to stdout, build progress to stderr. When KUBEBUILDER_ASSETS is
// already set it is checked and printed, and nothing is built. The versions are pinned
// by the wrapper modules in this directory (kube-apiserver/go.mod, etcd/go.mod).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshproof/meshproof/harness/testenv/binaries"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	dir, err := binaries.Ensure(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "assets:", err)
		os.Exit(1)
	}
	fmt.Println(dir)
}
