package meshtest

import (
	"time"
)

// DefaultGracePeriod is what a run leaves before the test's deadline for
// diagnostics of a step cut short and for teardown.
const DefaultGracePeriod = time.Minute

// Option configures Run and Feature.
type Option func(*settings)

type settings struct {
	rehearse     bool
	kubeconfig   string
	kubeContext  string
	existing     bool
	envCluster   string
	istioVersion string
	reports      string
	labelFilter  string
	gracePeriod  time.Duration
}

func newSettings(opts []Option) settings {
	s := settings{gracePeriod: DefaultGracePeriod}
	for _, o := range opts {
		o(&s)
	}
	return s
}

// Rehearse runs the file on a local cluster of real parts (kube-apiserver,
// etcd, controllers, kwok nodes and a real istiod, built from source on
// first use and cached) with the data plane simulated: no Docker needed,
// and every report says so (see harness/rehearsal). With Feature, the
// environment's cluster must be a rehearsal.Cluster (WithEnvCluster).
func Rehearse() Option { return func(s *settings) { s.rehearse = true } }

// WithKubeconfig runs the file on an existing cluster instead of the
// clusters it names: the kubeconfig at path ("": $KUBECONFIG, then
// ~/.kube/config) and its context ("": the current one). meshproof holds
// the cluster's Lease, removes at teardown only what its ledger lists, and
// never deletes the cluster. The file's istio.mode holds (a kind cluster's
// default is install: meshproof installs Istio and removes it after; write
// mode: use-existing to test the Istio already there), and the echo image
// comes from the file's existing.image. The file must use one cluster.
func WithKubeconfig(path, context string) Option {
	return func(s *settings) { s.existing, s.kubeconfig, s.kubeContext = true, path, context }
}

// WithEnvCluster makes Feature run on the cluster the e2e-framework
// environment created under name (envfuncs.CreateCluster(provider, name)):
// a rehearsal.Cluster is rehearsed on, any other provider is used as an
// existing cluster (its kubeconfig, its image loading where it has one,
// never destroyed). Without it Feature uses the environment's kubeconfig
// (envconf.Config.KubeconfigFile) as an existing cluster.
func WithEnvCluster(name string) Option { return func(s *settings) { s.envCluster = name } }

// WithIstioVersion installs this Istio version on every cluster instead of
// the file's.
func WithIstioVersion(v string) Option { return func(s *settings) { s.istioVersion = v } }

// WithReports writes the run folder under dir, where it stays after the
// test (default: under the test's t.TempDir(), removed with it; "" keeps
// the default). The test logs the folder's path.
func WithReports(dir string) Option { return func(s *settings) { s.reports = dir } }

// WithLabelFilter runs only the scenarios whose labels match a Ginkgo label
// filter expression, e.g. "strict && !slow", as meshproof run
// --label-filter does; the others get no subtest.
func WithLabelFilter(expr string) Option { return func(s *settings) { s.labelFilter = expr } }

// WithGracePeriod is how long before the test's deadline (go test
// -timeout) the steps stop, leaving the rest to diagnostics and teardown
// (default DefaultGracePeriod); it also bounds diagnostics after Ctrl-C.
func WithGracePeriod(d time.Duration) Option { return func(s *settings) { s.gracePeriod = d } }
