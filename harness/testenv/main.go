package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Main is a test package's TestMain around one shared control plane:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m, func(e *testenv.Env) error { env = e; return nil })) }
//
// It starts the control plane (a package whose tests need it fails, never
// skips, when it cannot start), hands it to use, runs the tests and stops
// it, also when they fail. The exit code is non-zero if anything failed.
func Main(m *testing.M, use func(*Env) error) int {
	// envtest logs through controller-runtime; without a logger it prints a
	// warning with a stack trace. Failures reach the tests as errors anyway.
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	env, stop, err := StartEnv(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "these tests need a real API server: %v\n", err)
		return 1
	}
	fmt.Printf("testenv: kube-apiserver %s with %d Istio CRDs\n", env.ServerVersion.GitVersion, len(env.IstioCRDs))
	code := 1
	if err := use(env); err != nil {
		fmt.Fprintf(os.Stderr, "preparing the tests: %v\n", err)
	} else {
		code = m.Run()
	}
	if err := stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the API server: %v\n", err)
		code = 1
	}
	return code
}
