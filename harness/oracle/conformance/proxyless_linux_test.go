//go:build linux

package conformance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	networkingapi "istio.io/api/networking/v1"
	istionetworking "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/scenario"
)

const (
	namespace = "proxyless"
	grpcPort  = 7070
)

// workloadSpec is one fixture of the matrix: a proxyless workload runs a
// pilot-agent and, when it serves, the echo binary's gRPC server.
type workloadSpec struct {
	name string
	ip   string // its own loopback address, its WorkloadEntry's address
	// tlsModeLabel labels it security.istio.io/tlsMode=istio, which Istio's
	// grpc-agent template leaves to the user.
	tlsModeLabel bool
}

// The workloads' addresses are set by useAddresses.
var (
	grpcA = workloadSpec{name: "grpc-a"}
	grpcB = workloadSpec{name: "grpc-b"}
	grpcL = workloadSpec{name: "grpc-l", tlsModeLabel: true}
	// servers are probed from the proxyless client grpc-a and from legacy.
	servers []workloadSpec
)

// useAddresses gives the workloads addresses in a /24 of 127.0.0.0/8 chosen
// at random, so that two runs of the test on one machine (two checkouts'
// make test) do not fight over the servers' gRPC port.
func useAddresses() {
	prefix := fmt.Sprintf("127.%d.%d.", 2+rand.IntN(250), 1+rand.IntN(250))
	grpcA.ip, grpcB.ip, grpcL.ip = prefix+"11", prefix+"10", prefix+"12"
	servers = []workloadSpec{grpcB, grpcL}
}

// labels are a workload's labels, on its WorkloadEntry and as its
// pilot-agent reports them.
func (w workloadSpec) labels() map[string]string {
	l := map[string]string{"app": w.name}
	if w.tlsModeLabel {
		l["security.istio.io/tlsMode"] = "istio"
	}
	return l
}

// The fixtures as the oracle sees them: grpc-a, grpc-b and grpc-l
// proxyless (grpc-l with the tlsMode label), and legacy, a plain gRPC
// client outside the mesh.
func conformanceSuite() (*scenario.Suite, map[string]oracle.ProxylessWorkload) {
	outOfMesh := false
	ports := []scenario.Port{{Name: "grpc", Number: grpcPort}}
	s := &scenario.Suite{Fixtures: scenario.Fixtures{Namespace: namespace}}
	proxyless := map[string]oracle.ProxylessWorkload{}
	for _, w := range []workloadSpec{grpcA, grpcB, grpcL} {
		s.Fixtures.Workloads = append(s.Fixtures.Workloads, scenario.Workload{Name: w.name, Namespace: namespace, ServiceAccount: w.name, Ports: ports})
		proxyless[w.name] = oracle.ProxylessWorkload{TLSModeLabel: w.tlsModeLabel}
	}
	s.Fixtures.Workloads = append(s.Fixtures.Workloads, scenario.Workload{Name: "legacy", Namespace: namespace, ServiceAccount: "legacy", Mesh: &outOfMesh, Ports: ports})
	return s, proxyless
}

// cell is one policy combination of the matrix.
type cell struct {
	name     string
	policies *scenario.MTLSStep
}

// peerAuthentications is one PeerAuthentication setting of the matrix.
type peerAuthentications struct {
	name string
	pas  []scenario.PeerAuthentication
}

// paSettings are issue 12's PeerAuthentication axis: none, then mesh-wide
// (in istio-system), namespace-wide and workload (one per server, by
// selector) × UNSET/DISABLE/PERMISSIVE/STRICT, and two port-level
// overrides of a workload mode.
func paSettings() []peerAuthentications {
	out := []peerAuthentications{{name: "no PeerAuthentication"}}
	modes := []scenario.MTLSMode{scenario.ModeUnset, scenario.ModeDisable, scenario.ModePermissive, scenario.ModeStrict}
	for _, mode := range modes {
		out = append(out, peerAuthentications{name: "mesh " + string(mode), pas: []scenario.PeerAuthentication{
			{Scope: scenario.ScopeMesh, Namespace: scenario.IstioRootNamespace, Mode: mode}}})
	}
	for _, mode := range modes {
		out = append(out, peerAuthentications{name: "namespace " + string(mode), pas: []scenario.PeerAuthentication{
			{Scope: scenario.ScopeNamespace, Namespace: namespace, Mode: mode}}})
	}
	workload := func(mode, portMode scenario.MTLSMode) []scenario.PeerAuthentication {
		var pas []scenario.PeerAuthentication
		for _, w := range servers {
			pa := scenario.PeerAuthentication{Scope: scenario.ScopeWorkload, Namespace: namespace, Workload: w.name, Mode: mode}
			if portMode != "" {
				pa.Ports = []scenario.PortMode{{Port: grpcPort, Mode: portMode}}
			}
			pas = append(pas, pa)
		}
		return pas
	}
	for _, mode := range modes {
		out = append(out, peerAuthentications{name: "workload " + string(mode), pas: workload(mode, "")})
	}
	out = append(out,
		peerAuthentications{name: "workload STRICT, port PERMISSIVE", pas: workload(scenario.ModeStrict, scenario.ModePermissive)},
		peerAuthentications{name: "workload PERMISSIVE, port STRICT", pas: workload(scenario.ModePermissive, scenario.ModeStrict)})
	return out
}

// matrixCells is paSettings × DestinationRule for both servers
// none/DISABLE/ISTIO_MUTUAL.
func matrixCells() []cell {
	var cells []cell
	for _, pa := range paSettings() {
		for _, dr := range []scenario.TLSMode{"", scenario.TLSDisable, scenario.TLSIstioMutual} {
			m := &scenario.MTLSStep{PeerAuthentications: pa.pas}
			name := pa.name + ", no DestinationRule"
			if dr != "" {
				for _, w := range servers {
					m.DestinationRules = append(m.DestinationRules, scenario.DestinationRule{Workload: w.name, Mode: dr})
				}
				name = pa.name + ", DestinationRule " + string(dr)
			}
			cells = append(cells, cell{name: name, policies: m})
		}
	}
	return cells
}

// The oracle's proxyless predictions against real istiod, pilot-agent and
// grpc-go, cell by cell.
func TestProxylessConformance(t *testing.T) {
	charts := testsupport.IstioCharts(t)
	t.Setenv(mesh.ChartsEnv, charts)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()

	agentBinary, err := binaries.EnsureTool(ctx, binaries.PilotAgent, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	echoBinary := testsupport.EchoBinary(t)
	useAddresses()

	start := time.Now()
	lc := cluster.New(cluster.WithName("lc-proxyless"), cluster.WithIstiod())
	if _, err := lc.Create(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Destroy(context.Background()) })
	is := lc.Istiod()
	env := lc.Env()
	kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
	if err != nil {
		t.Fatal(err)
	}
	suite, err := scenario.Load("proxyless.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: `+istio.DefaultVersion+`, pluggedCA: true}}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Install(ctx, env.Client, lc.KubernetesRestConfig(), &suite.Clusters[0], testsupport.Logger(t), istio.WithPostRenderer(is.PostRenderer()))
	if err != nil {
		t.Fatal(err)
	}
	if err := is.WaitServing(ctx, "", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	xdsAddr, err := is.CAAddress("")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("local cluster, Istio %s charts and istiod (module %s) ready in %s", istio.DefaultVersion, is.Module(), time.Since(start).Round(100*time.Millisecond))

	start = time.Now()
	register(t, kube, env.Istio, grpcA, grpcB, grpcL)
	rootPEM := ca.EncodeCertificatesPEM(m.CA.Root)
	clientAgent := startAgent(t, kube, agentBinary, xdsAddr, rootPEM, grpcA)
	for _, w := range servers {
		startEcho(t, echoBinary, startAgent(t, kube, agentBinary, xdsAddr, rootPEM, w), w)
	}
	t.Logf("proxyless workloads (pilot-agent, echo's xDS gRPC server) serving in %s", time.Since(start).Round(100*time.Millisecond))

	s, proxyless := conformanceSuite()
	start = time.Now()
	var slowest time.Duration
	slowestCell := ""
	for i, c := range matrixCells() {
		applyPolicies(t, env.Client, s, c, i)
		observed, took := observeSettled(t, echoBinary, clientAgent)
		if took > slowest {
			slowest, slowestCell = took, c.name
		}
		preds, err := oracle.PredictProxyless(s, c.policies, proxyless)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range observed {
			p, _ := oracle.Find(preds, o.From, o.To, o.Port)
			t.Logf("%-55s %s -> %s:%d observed %s %s, predicted %s %s", c.name, o.From, o.To, o.Port, o.Result, o.Reason, p.Result, p.Reason)
		}
		for _, d := range oracle.Conform(c.name, preds, observed) {
			t.Error(d)
		}
	}
	t.Logf("conformance matrix: %d cells x 2 clients x %d servers in %s; slowest change seen %s after the apply (%s)",
		len(matrixCells()), len(servers), time.Since(start).Round(100*time.Millisecond), slowest.Round(10*time.Millisecond), slowestCell)
}

// register creates the namespace, the ServiceAccounts, and for each
// workload a Service that selects a WorkloadEntry at the workload's loopback
// address: EndpointSlices refuse loopback addresses, WorkloadEntries do not.
func register(t *testing.T, kube kubernetes.Interface, istioClient istioclient.Interface, ws ...workloadSpec) {
	t.Helper()
	ctx := t.Context()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		labels := w.labels()
		if _, err := kube.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: w.name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: namespace},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": w.name}, Ports: []corev1.ServicePort{{
				Name: "grpc", Port: grpcPort, TargetPort: intstr.FromInt32(grpcPort), AppProtocol: ptr.To("grpc"),
			}}},
		}
		if _, err := kube.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		we := &istionetworking.WorkloadEntry{
			ObjectMeta: metav1.ObjectMeta{Name: w.name, Namespace: namespace},
			Spec:       networkingapi.WorkloadEntry{Address: w.ip, Labels: labels, ServiceAccount: w.name},
		}
		if _, err := istioClient.NetworkingV1().WorkloadEntries(namespace).Create(ctx, we, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// agent is a running pilot-agent in grpc-agent mode.
type agent struct {
	dir       string // its working directory
	bootstrap string // the xDS bootstrap it wrote for grpc-go
}

// startAgent runs pilot-agent for w as Istio's grpc-agent template runs it
// in a pod (issue 12's recipe): no Envoy, a gRPC xDS bootstrap and the
// workload's certificates written to files, istiod at xdsAddr verified
// against the mesh's root, a ServiceAccount token for audience istio-ca.
// Every default path of pilot-agent is relative to its working directory,
// so each agent has its own. It waits for the bootstrap and the
// certificates.
func startAgent(t *testing.T, kube kubernetes.Interface, binary, xdsAddr string, rootPEM []byte, w workloadSpec) agent {
	t.Helper()
	dir := t.TempDir()
	tok, err := kube.CoreV1().ServiceAccounts(namespace).CreateToken(t.Context(), w.name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "var/run/secrets/tokens/istio-token"), []byte(tok.Status.Token))
	writeFile(t, filepath.Join(dir, "var/run/secrets/istio/root-cert.pem"), rootPEM)
	a := agent{dir: dir, bootstrap: filepath.Join(dir, "etc/istio/proxy/grpc-bootstrap.json")}
	certs := filepath.Join(dir, "var/lib/istio/data")
	// A pod has these as emptyDir volumes; pilot-agent does not create them.
	for _, d := range []string{certs, filepath.Dir(a.bootstrap)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	proxyConfig, err := json.Marshal(map[string]any{
		"discoveryAddress": xdsAddr,
		"statusPort":       freePort(t),
		"configPath":       filepath.Join(dir, "etc/istio/proxy"),
	})
	if err != nil {
		t.Fatal(err)
	}
	labels, err := json.Marshal(w.labels())
	if err != nil {
		t.Fatal(err)
	}
	env := []string{
		"ISTIO_META_GENERATOR=grpc", "DISABLE_ENVOY=true", "ISTIO_META_DNS_CAPTURE=false",
		"OUTPUT_CERTS=" + certs, "GRPC_XDS_BOOTSTRAP=" + a.bootstrap,
		"JWT_POLICY=third-party-jwt", "PILOT_CERT_PROVIDER=istiod", "ISTIOD_SAN=istiod.istio-system.svc",
		"POD_NAME=" + w.name, "POD_NAMESPACE=" + namespace, "INSTANCE_IP=" + w.ip, "SERVICE_ACCOUNT=" + w.name, "HOST_IP=" + w.ip,
		"ISTIO_META_CLUSTER_ID=Kubernetes", "TRUST_DOMAIN=cluster.local", "ISTIO_METAJSON_LABELS=" + string(labels),
		"PROXY_CONFIG=" + string(proxyConfig),
	}
	log := openLog(t, "pilot-agent-"+w.name)
	p, err := proc.Start("pilot-agent-"+w.name, binary, []string{"proxy", "sidecar", "--domain", namespace + ".svc.cluster.local"},
		proc.WithEnv(env...), proc.WithDir(dir), proc.WithOutput(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(t, p) })
	untilOr(t, time.Minute, "pilot-agent of "+w.name+" to write its xDS bootstrap and certificates", p.Tail, func(context.Context) (bool, error) {
		if err := p.ExitError(); err != nil {
			return false, fmt.Errorf("pilot-agent of %s exited: %w\n%s", w.name, err, p.Tail())
		}
		for _, f := range []string{a.bootstrap, filepath.Join(certs, "cert-chain.pem"), filepath.Join(certs, "root-cert.pem")} {
			if _, err := os.Stat(f); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
	return a
}

// startEcho runs the echo binary's gRPC server for w with its agent's
// bootstrap, and waits for grpc-go to report the listener SERVING, which it
// does once istiod's listener for the port has arrived.
func startEcho(t *testing.T, binary string, a agent, w workloadSpec) {
	t.Helper()
	out := &lineLog{log: openLog(t, "echo-"+w.name)}
	p, err := proc.Start("echo-"+w.name, binary, []string{"serve", "--host", w.ip, "--ports", "0", "--grpc-ports", strconv.Itoa(grpcPort)},
		proc.WithEnv("GRPC_XDS_BOOTSTRAP="+a.bootstrap, "POD_NAME="+w.name, "POD_NAMESPACE="+namespace, "SERVICE_ACCOUNT="+w.name),
		proc.WithDir(a.dir), proc.WithOutput(out))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProcess(t, p) })
	serving := fmt.Sprintf("grpc serving %s", net.JoinHostPort(w.ip, strconv.Itoa(grpcPort)))
	untilOr(t, time.Minute, "the echo of "+w.name+" to serve gRPC with istiod's listener", p.Tail, func(context.Context) (bool, error) {
		if err := p.ExitError(); err != nil {
			return false, fmt.Errorf("echo of %s exited: %w\n%s", w.name, err, p.Tail())
		}
		return out.contains(serving), nil
	})
}

// applyPolicies replaces the namespace's policies by the cell's.
func applyPolicies(t *testing.T, kube client.Client, s *scenario.Suite, c cell, index int) {
	t.Helper()
	ctx := t.Context()
	step := policy.Step{RunID: "conformance", Scenario: "proxyless", Index: index}
	ours := client.MatchingLabels(ownership.Labels(step.RunID))
	for _, ns := range []string{namespace, scenario.IstioRootNamespace} {
		if err := kube.DeleteAllOf(ctx, &securityv1.PeerAuthentication{}, client.InNamespace(ns), ours); err != nil {
			t.Fatal(err)
		}
	}
	if err := kube.DeleteAllOf(ctx, &istionetworking.DestinationRule{}, client.InNamespace(namespace), ours); err != nil {
		t.Fatal(err)
	}
	objs, err := policy.ForMTLS(s, c.policies, step)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := kube.Create(ctx, o.Object); err != nil {
			t.Fatalf("cell %q: %v", c.name, err)
		}
	}
}

// observeSettled probes the servers from the proxyless client (xds:///,
// xDS credentials, grpc-a's bootstrap) and from a plain client (grpc://, no
// TLS) until what they see has settled: the same outcome in settleRounds
// consecutive rounds, the first of them at least settleAfter after the
// policies were applied (istiod pushes them in 0.3-1.5 s). It also returns
// how long after the apply the settled outcome was first seen, when the
// first round saw another (0 when nothing changed).
func observeSettled(t *testing.T, echoBinary string, from agent) ([]oracle.Observed, time.Duration) {
	t.Helper()
	const (
		settleAfter  = 2 * time.Second
		settleRounds = 3
	)
	applied := time.Now()
	type round struct {
		at  time.Duration
		obs []oracle.Observed
	}
	var rounds []round
	same := 0
	until(t, 45*time.Second, "the probes' outcome to settle", func(ctx context.Context) (bool, error) {
		obs, err := probe(ctx, echoBinary, from)
		if err != nil {
			return false, err
		}
		at := time.Since(applied)
		if len(rounds) > 0 && sameOutcome(obs, rounds[len(rounds)-1].obs) {
			same++
		} else {
			same = 1
		}
		rounds = append(rounds, round{at, obs})
		// Rounds before settleAfter count only when the ones after it
		// agree with them.
		return at >= settleAfter && same >= settleRounds && rounds[len(rounds)-settleRounds].at >= settleAfter, nil
	})
	final := rounds[len(rounds)-1].obs
	first := len(rounds) - 1
	for first > 0 && sameOutcome(rounds[first-1].obs, final) {
		first--
	}
	if first == 0 {
		return final, 0
	}
	return final, rounds[first].at
}

func sameOutcome(a, b []oracle.Observed) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].From != b[i].From || a[i].To != b[i].To || a[i].Result != b[i].Result || closure(a[i].Reason) != closure(b[i].Reason) {
			return false
		}
	}
	return true
}

// closure folds the two ways a server's close reaches the client: grpc-go
// closing a failed handshake sends FIN, or RST when part of the client's
// preface is still unread, so a settled cell may alternate between them.
func closure(reason string) string {
	if reason == "reset" {
		return "eof"
	}
	return reason
}

// probe runs one round of `echo probe`: each server from both clients.
// Target names are <client>/<server>.
func probe(ctx context.Context, echoBinary string, from agent) ([]oracle.Observed, error) {
	var out bytes.Buffer
	args := []string{"probe", "--timeout", "3s"}
	for _, w := range servers {
		args = append(args,
			"--target", fmt.Sprintf("%s/%s=xds:///%s.%s.svc.cluster.local:%d", grpcA.name, w.name, w.name, namespace, grpcPort),
			"--target", fmt.Sprintf("legacy/%s=grpc://%s", w.name, net.JoinHostPort(w.ip, strconv.Itoa(grpcPort))))
	}
	p, err := proc.Start("echo-probe", echoBinary, args,
		proc.WithEnv("GRPC_XDS_BOOTSTRAP="+from.bootstrap, "GRPC_GO_LOG_SEVERITY_LEVEL=error"), proc.WithDir(from.dir), proc.WithOutput(&syncBuffer{b: &out}))
	if err != nil {
		return nil, err
	}
	select {
	case <-p.Done():
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
	var obs []oracle.Observed
	for _, line := range strings.Split(out.String(), "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r echoapi.ProbeResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("probe output %q: %w", line, err)
		}
		from, to, _ := strings.Cut(r.Target, "/")
		// mtls means grpc-go's server saw a client certificate; it must be
		// the proxyless client's own identity, issued by istiod.
		if want := "spiffe://cluster.local/ns/" + namespace + "/sa/" + from; r.Result == echoapi.ResultMTLS && r.PeerURI != want {
			return nil, fmt.Errorf("%s got mtls with the peer identity %q, want %q", r.Target, r.PeerURI, want)
		}
		obs = append(obs, oracle.Observed{From: from, To: to, Port: grpcPort,
			Result: scenario.Result(r.Result), Reason: r.Reason, Detail: r.Error})
	}
	if len(obs) != 2*len(servers) {
		return nil, fmt.Errorf("probe printed %d results, want %d (exit %v):\n%s", len(obs), 2*len(servers), p.ExitError(), out.String())
	}
	return obs, nil
}

// until waits, at most timeout, for cond; an error from cond ends the wait.
func until(t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 250*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// untilOr is until, adding what detail says to a failure.
func untilOr(t *testing.T, timeout time.Duration, what string, detail func() string, cond func(context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(t.Context(), 250*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("waiting for %s: %v; its output ends:\n%s", what, err, detail())
	}
}

func stopProcess(t *testing.T, p *proc.Process) {
	if err := p.Stop(); err != nil {
		t.Errorf("stopping %s: %v", p.Name(), err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// openLog is a file for a process's output in the test's temporary
// directory, kept for a failure's diagnosis while the test runs.
func openLog(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// lineLog copies output to log and remembers it for contains.
type lineLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
	log *os.File
}

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(b)
	return l.log.Write(b)
}

func (l *lineLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Contains(l.buf.Bytes(), []byte(s))
}

type syncBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// testWriter sends a build's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
