//go:build linux

package rehearsal_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	istionetworking "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/policy"
	"github.com/meshproof/meshproof/harness/internal/probe"
	injection "github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/ownership"
	"github.com/meshproof/meshproof/harness/rehearsal"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

const (
	plNamespace = "proxyless-rehearsal"
	plPort      = 7070
	plRunID     = "proxyless-rehearsal"
)

// The rehearsal's transport on a local cluster that runs proxyless gRPC
// pods for real: fixtures rendered as a run renders them (three proxyless
// Deployments, the client grpc-a and the servers grpc-b and grpc-l, with
// the tlsMode label, and legacy out of the mesh) are injected with grpc-agent by the real istiod, their
// pilot-agent and echo run at WorkloadEntries' 127/8 addresses, and probes
// through the rehearsal's transport are answered by the real processes,
// labelled so, agreeing with the oracle's proxyless rules.
func TestProxylessPodsRunForReal(t *testing.T) {
	t.Parallel()
	charts := testsupport.IstioCharts(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := image.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	progress := progressLog(t)
	lc := cluster.New(cluster.WithName("rehearsal-proxyless"), cluster.WithIstiod(),
		cluster.WithLogger(slog.New(slog.NewTextHandler(progress, nil))), cluster.WithBuildLog(progress))
	if _, err := lc.Create(ctx); err != nil {
		t.Fatal(err)
	}
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			lc.Destroy(context.Background())
		}
	})
	if err := lc.LoadImageArchive(ctx, img.TarballPath); err != nil {
		t.Fatal(err)
	}
	env := lc.Env()
	suite, err := scenario.Load("proxyless.yaml", []byte(fmt.Sprintf(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: {version: %[1]s, charts: %[2]q, pluggedCA: true}}]
fixtures:
  namespace: %[3]s
  workloads:
  - {name: grpc-a, proxyless: true}
  - {name: grpc-b, proxyless: true}
  - {name: grpc-l, proxyless: true, tlsModeLabel: true}
  - {name: legacy, mesh: false, ports: [{name: grpc, number: %[4]d}]}
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`, istio.DefaultVersion, filepath.Join(charts, istio.DefaultVersion), plNamespace, plPort)))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Install(ctx, env.Client, lc.KubernetesRestConfig(), &suite.Clusters[0], testsupport.Logger(t), istio.WithPostRenderer(lc.Istiod().PostRenderer()))
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.Istiod().WaitServing(ctx, "", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("local cluster, Istio %s charts, istiod and the echo image ready in %s", istio.DefaultVersion, time.Since(start).Round(100*time.Millisecond))

	// The fixtures as a run renders them.
	start = time.Now()
	grpcPorts := []manifests.Port{{Name: "grpc", Number: plPort, Protocol: manifests.ProtocolGRPC}}
	objs, err := manifests.Render(manifests.Options{
		RunID: plRunID, Image: img.Ref,
		Namespaces: []manifests.Namespace{{Name: plNamespace}},
		Workloads: []manifests.Workload{
			{Name: "grpc-a", Namespace: plNamespace, InMesh: true, Proxyless: true, Ports: grpcPorts},
			{Name: "grpc-b", Namespace: plNamespace, InMesh: true, Proxyless: true, Ports: grpcPorts},
			{Name: "grpc-l", Namespace: plNamespace, InMesh: true, Proxyless: true, TLSModeLabel: true, Ports: grpcPorts},
			{Name: "legacy", Namespace: plNamespace, InMesh: false, Ports: grpcPorts},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"grpc-a", "grpc-b", "grpc-l", "legacy", grpcAClient} {
		waitAvailable(t, env.Client, name)
	}
	t.Logf("three proxyless Deployments and legacy Available (pilot-agent and echo serving with istiod's listeners) in %s", time.Since(start).Round(100*time.Millisecond))

	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"grpc-a", "grpc-b", "grpc-l", "legacy", grpcAClient} {
		pods[name] = podOf(t, env.Client, name)
	}
	prefix := lc.Proxyless().AddressPrefix()
	pids := lc.Pids()
	for _, name := range []string{"grpc-a", "grpc-b", "grpc-l", grpcAClient} {
		pod := pods[name]
		// The grpc-agent template's istio-proxy: pilot-agent without Envoy,
		// asking istiod for gRPC xDS.
		proxy := injection.Proxy(pod)
		if pod.Annotations["sidecar.istio.io/status"] == "" || proxy == nil ||
			!slices.Contains(proxy.Env, corev1.EnvVar{Name: "DISABLE_ENVOY", Value: "true"}) ||
			!slices.Contains(proxy.Env, corev1.EnvVar{Name: "ISTIO_META_GENERATOR", Value: "grpc"}) {
			t.Errorf("%s: istiod did not inject the grpc-agent template (status %q)", pod.Name, pod.Annotations["sidecar.istio.io/status"])
		}
		for _, process := range []string{"pilot-agent", "echo"} {
			if pids[process+"-"+plNamespace+"-"+pod.Name] == 0 {
				t.Errorf("no %s runs for pod %s: %v", process, pod.Name, pids)
			}
		}
		var we istionetworking.WorkloadEntry
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: plNamespace, Name: pod.Name}, &we); err != nil {
			t.Fatalf("WorkloadEntry of %s: %v", pod.Name, err)
		}
		if !strings.HasPrefix(we.Spec.Address, prefix) || !strings.HasPrefix(prefix, "127.") {
			t.Errorf("WorkloadEntry %s at %s, want an address in %s0/24 of 127.0.0.0/8", we.Name, we.Spec.Address, prefix)
		}
		if we.Spec.ServiceAccount != strings.TrimSuffix(name, manifests.ProxylessClientSuffix) || we.Spec.Labels["app"] != name {
			t.Errorf("WorkloadEntry %s: ServiceAccount %q, labels %v", we.Name, we.Spec.ServiceAccount, we.Spec.Labels)
		}
		for _, process := range []string{"pilot-agent", "echo"} {
			pid := pids[process+"-"+plNamespace+"-"+pod.Name]
			for _, addr := range listening(t, pid) {
				if addr != we.Spec.Address {
					t.Errorf("%s of %s (pid %d) listens on %s, not only on its address %s", process, pod.Name, pid, addr, we.Spec.Address)
				}
			}
		}
		t.Logf("%s: injected with grpc-agent, WorkloadEntry at %s, pilot-agent pid %d (listening on %v), echo pid %d (listening on %v)", pod.Name, we.Spec.Address,
			pids["pilot-agent-"+plNamespace+"-"+pod.Name], listening(t, pids["pilot-agent-"+plNamespace+"-"+pod.Name]),
			pids["echo-"+plNamespace+"-"+pod.Name], listening(t, pids["echo-"+plNamespace+"-"+pod.Name]))
	}
	if legacy := pods["legacy"].Name; pids["pilot-agent-"+plNamespace+"-"+legacy] != 0 || pids["echo-"+plNamespace+"-"+legacy] == 0 {
		t.Errorf("the out-of-mesh pod %s runs a pilot-agent or no plain gRPC echo: %v", legacy, pids)
	}

	transport, err := rehearsal.TransportFor(rehearsal.New(), lc)
	if err != nil {
		t.Fatal(err)
	}
	// The cells: no policy, then STRICT for the namespace with
	// DestinationRules ISTIO_MUTUAL towards both servers.
	cells := []struct {
		name     string
		policies *scenario.MTLSStep
	}{
		{"no policy", &scenario.MTLSStep{}},
		{"namespace STRICT, DestinationRules ISTIO_MUTUAL", &scenario.MTLSStep{
			PeerAuthentications: []scenario.PeerAuthentication{{Scope: scenario.ScopeNamespace, Namespace: plNamespace, Mode: scenario.ModeStrict}},
			DestinationRules: []scenario.DestinationRule{
				{Workload: "grpc-b", Mode: scenario.TLSIstioMutual}, {Workload: "grpc-l", Mode: scenario.TLSIstioMutual}},
		}},
	}
	for i, c := range cells {
		applyCell(t, env.Client, suite, c.policies, i)
		preds, err := oracle.PredictPolicies(suite, c.policies)
		if err != nil {
			t.Fatal(err)
		}
		applied := time.Now()
		var observed []oracle.Observed
		var byPair map[string]echoapi.ProbeResult
		var disagreements []oracle.Disagreement
		// istiod pushes a change in a second or two: wait until what the
		// processes answer is what the oracle predicts, at most 45 s.
		err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
			obs, pairs, err := probeRound(ctx, transport, pods)
			if err != nil {
				if ctx.Err() != nil {
					return false, nil // the wait's end: the last round stands
				}
				return false, err
			}
			observed, byPair = obs, pairs
			disagreements = oracle.Conform(c.name, preds, observed)
			return len(disagreements) == 0, nil
		})
		for _, o := range observed {
			p, _ := oracle.Find(preds, o.From, o.To, o.Port)
			t.Logf("%-50s %s -> %s:%d observed %s %s, predicted %s %s", c.name, o.From, o.To, o.Port, o.Result, o.Reason, p.Result, p.Reason)
		}
		if err != nil {
			for _, d := range disagreements {
				t.Error(d)
			}
			t.Fatalf("cell %q: the real processes' answers did not settle to the oracle's within 45 s", c.name)
		}
		t.Logf("cell %q: real answers agree with the oracle %s after the apply", c.name, time.Since(applied).Round(10*time.Millisecond))
		// What issue 12 names, beyond the oracle's agreement.
		switch i {
		case 0:
			for _, to := range []string{"grpc-b", "legacy"} {
				if r := byPair["grpc-a/"+to]; r.Result != echoapi.ResultPlaintext {
					t.Errorf("no policy: grpc-a -> %s over xds:/// gave %s %s, want plaintext", to, r.Result, r.Reason)
				}
			}
		case 1:
			want := "spiffe://cluster.local/ns/" + plNamespace + "/sa/grpc-a"
			for _, to := range []string{"grpc-b", "grpc-l"} {
				if r := byPair["grpc-a/"+to]; r.Result != echoapi.ResultMTLS || r.PeerURI != want {
					t.Errorf("STRICT + ISTIO_MUTUAL: grpc-a -> %s gave %s %s (peer %q), want mtls from %s", to, r.Result, r.Reason, r.PeerURI, want)
				}
				if r := byPair["legacy/"+to]; r.Result != echoapi.ResultFail {
					t.Errorf("STRICT: legacy -> %s over grpc:// gave %s, want fail", to, r.Result)
				}
			}
		}
	}

	// A Deployment deleted takes its processes and WorkloadEntry with it.
	start = time.Now()
	grpcL := pods["grpc-l"]
	if err := env.Client.Delete(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: plNamespace, Name: "grpc-l"}}); err != nil {
		t.Fatal(err)
	}
	var left []string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		left = left[:0]
		for name := range lc.Pids() {
			if strings.HasSuffix(name, "-"+plNamespace+"-"+grpcL.Name) {
				left = append(left, name)
			}
		}
		err := env.Client.Get(ctx, client.ObjectKey{Namespace: plNamespace, Name: grpcL.Name}, &istionetworking.WorkloadEntry{})
		if err == nil {
			left = append(left, "WorkloadEntry "+grpcL.Name)
		} else if !apierrors.IsNotFound(err) {
			return false, err
		}
		return len(left) == 0, nil
	})
	if err != nil {
		t.Fatalf("after deleting Deployment grpc-l, still there: %v: %v", left, err)
	}
	t.Logf("Deployment grpc-l deleted: its pilot-agent, echo and WorkloadEntry gone in %s", time.Since(start).Round(100*time.Millisecond))

	// Destroy leaves no process of any proxyless pod.
	var proxylessPids []int
	for name, pid := range lc.Pids() {
		if strings.HasPrefix(name, "pilot-agent-") || strings.HasPrefix(name, "echo-") {
			proxylessPids = append(proxylessPids, pid)
		}
	}
	if len(proxylessPids) != 11 {
		t.Errorf("processes before Destroy: %v, want the pilot-agent and the echo of grpc-a, grpc-b and the client pods of grpc-a, grpc-b and grpc-l, and legacy's echo", lc.Pids())
	}
	destroyed = true
	if err := lc.Destroy(context.Background()); err != nil {
		t.Error(err)
	}
	for _, pid := range proxylessPids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("process %d of a proxyless pod still runs after Destroy", pid)
		}
	}
}

// applyCell replaces the namespace's policies by the cell's.
func applyCell(t *testing.T, kube client.Client, s *scenario.Suite, m *scenario.MTLSStep, index int) {
	t.Helper()
	ctx := t.Context()
	ours := client.MatchingLabels(ownership.Labels(plRunID))
	if err := kube.DeleteAllOf(ctx, &securityv1.PeerAuthentication{}, client.InNamespace(plNamespace), ours); err != nil {
		t.Fatal(err)
	}
	if err := kube.DeleteAllOf(ctx, &istionetworking.DestinationRule{}, client.InNamespace(plNamespace), ours); err != nil {
		t.Fatal(err)
	}
	objs, err := policy.ForMTLS(s, m, policy.Step{RunID: plRunID, Scenario: "proxyless", Index: index})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := kube.Create(ctx, o.Object); err != nil {
			t.Fatal(err)
		}
	}
}

// probeRound probes grpc-b, grpc-l and legacy from grpc-a (xds:///, as the engine
// targets a proxyless client's gRPC) and from legacy (grpc://) through the
// rehearsal's transport. Every result must come from the real processes.
func probeRound(ctx context.Context, transport probe.Execer, pods map[string]*corev1.Pod) ([]oracle.Observed, map[string]echoapi.ProbeResult, error) {
	var observed []oracle.Observed
	byPair := map[string]echoapi.ProbeResult{}
	for _, from := range []string{"grpc-a", "legacy"} {
		scheme := "grpc://"
		if from == "grpc-a" {
			scheme = "xds:///"
		}
		targets := []string{"grpc-b", "grpc-l"}
		// grpc-a's requests go from its client pod, one xds:/// target per
		// probe, as the engine sends them (manifests.ProxylessClientSuffix).
		pod, batches := pods[from], [][]string{targets}
		if from == "grpc-a" {
			// An out-of-mesh plain gRPC server, which the local cluster
			// runs too, reached through istiod by grpc-go's xDS client.
			pod, batches = pods[grpcAClient], [][]string{{"grpc-b"}, {"grpc-l"}, {"legacy"}}
		}
		var stdout []byte
		for _, batch := range batches {
			spec := echoapi.ProbeSpec{Timeout: echoapi.Duration(3 * time.Second), Deadline: echoapi.Duration(20 * time.Second)}
			for _, to := range batch {
				spec.Targets = append(spec.Targets, echoapi.Target{
					Name: to, URL: fmt.Sprintf("%s%s.%s.svc.cluster.local:%d", scheme, to, plNamespace, plPort), Port: plPort,
				})
			}
			stdin, err := json.Marshal(spec)
			if err != nil {
				return nil, nil, err
			}
			out, _, err := transport.Exec(ctx, probe.Command{
				Pod: results.Pod{Namespace: plNamespace, Name: pod.Name}, Container: manifests.ContainerName,
				Argv: []string{image.BinaryPath, "probe"}, Stdin: stdin,
			})
			if err != nil {
				return nil, nil, fmt.Errorf("probe from %s: %w", from, err)
			}
			stdout = append(stdout, out...)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(stdout)), "\n") {
			var r echoapi.ProbeResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				return nil, nil, fmt.Errorf("probe from %s printed %q: %w", from, line, err)
			}
			if r.DataPlane != rehearsal.ProxylessLabel() {
				return nil, nil, fmt.Errorf("probe %s -> %s: dataPlane %q, want %q (answered by the real processes)", from, r.Target, r.DataPlane, rehearsal.ProxylessLabel())
			}
			if !strings.HasPrefix(r.URL, scheme) || !strings.Contains(r.URL, ".svc.cluster.local") {
				return nil, nil, fmt.Errorf("probe %s -> %s: URL %q is not the batch's", from, r.Target, r.URL)
			}
			byPair[from+"/"+r.Target] = r
			observed = append(observed, oracle.Observed{From: from, To: r.Target, Port: plPort, Result: scenario.Result(r.Result), Reason: r.Reason, Detail: r.Error})
		}
	}
	if len(observed) != 5 {
		return nil, nil, fmt.Errorf("%d results, want 5: %v", len(observed), observed)
	}
	return observed, byPair, nil
}

// waitAvailable waits until Deployment name is Available.
func waitAvailable(t *testing.T, kube client.Client, name string) {
	t.Helper()
	var d appsv1.Deployment
	err := wait.PollUntilContextTimeout(t.Context(), 250*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := kube.Get(ctx, client.ObjectKey{Namespace: plNamespace, Name: name}, &d); err != nil {
			return false, nil
		}
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("Deployment %s not Available: %v (status %+v)", name, err, d.Status)
	}
}

// grpcAClient is grpc-a's client Deployment, which its requests go from.
const grpcAClient = "grpc-a" + manifests.ProxylessClientSuffix

// podOf is the one running pod of Deployment name.
func podOf(t *testing.T, kube client.Client, name string) *corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := kube.List(t.Context(), &pods, client.InNamespace(plNamespace), client.MatchingLabels{manifests.AppLabel: name}); err != nil {
		t.Fatal(err)
	}
	var running []*corev1.Pod
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running = append(running, p)
		}
	}
	if len(running) != 1 {
		t.Fatalf("Deployment %s has %d running pods, want 1", name, len(running))
	}
	return running[0]
}

// listening are the IP addresses pid's TCP sockets listen on: its socket
// inodes (/proc/<pid>/fd) looked up in the kernel's tables, whose
// local_address is the IP as 32-bit words in host (little-endian) order.
func listening(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var addrs []string
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			// local_address f[1], st f[3] (0A is LISTEN), inode f[9].
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			ipHex, _, _ := strings.Cut(f[1], ":")
			raw, err := hex.DecodeString(ipHex)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i+4 <= len(raw); i += 4 {
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			addrs = append(addrs, net.IP(raw).String())
		}
	}
	return addrs
}

// A whole rehearsal of a file with proxyless workloads, through the run
// library as meshproof run --rehearse: the pairs with a proxyless side or a
// gRPC call towards one are observed from the real processes and say so,
// the rest stay simulated, every step passes, and nothing of the run's
// proxyless pods is left running.
func TestProxylessRehearsal(t *testing.T) {
	t.Parallel()
	c := takeCluster(t)
	r := newRun(t, c, "testdata/proxyless.yaml")
	sum := execute(t, c, r)
	f := readFolder(t, r.Dir())
	if !sum.OK() || sum.Passed == 0 {
		t.Errorf("summary %+v, want every step passed; failed: %q", sum, f.failedCases())
	}
	f.proxylessLabelled(t, plPort, "grpc-a", "grpc-b", "grpc-l")
	f.wireVerdicts(t)
	for name := range c.Pids() {
		if strings.HasPrefix(name, "pilot-agent-") || strings.HasPrefix(name, "echo-") {
			t.Errorf("%s still runs after the run", name)
		}
	}
}
