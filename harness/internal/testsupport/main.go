package testsupport

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// Main is a test package's TestMain around one shared control plane:
//
//	func TestMain(m *testing.M) { os.Exit(testsupport.Main(m, func(e *testsupport.Env) error { env = e; return nil })) }
//
// It starts the control plane (a package whose tests need it fails, never
// skips, when it cannot start), hands it to use, runs the tests and stops
// it, also when they fail. The exit code is non-zero if anything failed.
func Main(m Tests, use func(*Env) error) int {
	// envtest logs through controller-runtime; without a logger it prints a
	// warning with a stack trace. Failures reach the tests as errors anyway.
	ctrllog.SetLogger(logr.Discard())
	proc.StopOnSignal(stopTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	env, stop, err := controlplane.StartEnv(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "these tests need a real API server: %v\n", err)
		return 1
	}
	fmt.Printf("testsupport: kube-apiserver %s with %d Istio CRDs\n", env.ServerVersion.GitVersion, len(env.IstioCRDs))
	code := 1
	if err := use(&Env{env}); err != nil {
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

// Tests are a package's tests: *testing.M.
type Tests interface{ Run() int }

// Shared is a control plane started on first use and stopped by its Main,
// for packages whose unit tests run without one:
//
//	var kube testsupport.Shared
//	func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }
//	func TestX(t *testing.T) { env := kube.Get(t) ... }
type Shared struct {
	once sync.Once
	env  *Env
	err  error
	stop func() error
}

// Get returns the control plane, starting it the first time; it fails t
// (never skips it) when the control plane cannot start.
func (s *Shared) Get(t testing.TB) *Env {
	t.Helper()
	s.once.Do(func() {
		ctrllog.SetLogger(logr.Discard())
		proc.StopOnSignal(stopTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		var env *controlplane.Env
		env, s.stop, s.err = controlplane.StartEnv(ctx)
		s.env = &Env{env}
	})
	if s.err != nil {
		t.Fatalf("this test needs a real API server: %v", s.err)
	}
	return s.env
}

// Main runs the tests and stops the control plane if one was started.
func (s *Shared) Main(m *testing.M) int {
	code := m.Run()
	if s.stop != nil {
		if err := s.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the API server: %v\n", err)
			code = 1
		}
	}
	return code
}
