//go:build linux

package cluster_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	networkingv1 "istio.io/api/networking/v1"
	istionetworking "istio.io/client-go/pkg/apis/networking/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/istio"
	"github.com/meshproof/meshproof/harness/internal/local/cluster"
	"github.com/meshproof/meshproof/harness/internal/local/controlplane"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
	"github.com/meshproof/meshproof/harness/internal/mesh"
	"github.com/meshproof/meshproof/harness/internal/sidecar"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/scenario"
)

// The real istiod serves a local cluster of its own: Istio's charts are
// installed as a run installs them (harness/internal/mesh: cacerts, then the releases
// with the supervisor's post-renderer, then the installer's readiness), and
// then istiod injects, validates and signs; a rollout restart restarts it, a
// canary revision gets its own, and Destroy leaves none running.
func TestIstiodServesTheLocalCluster(t *testing.T) {
	// Each istiod test has a local cluster of its own.
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()
	lc, m, destroyed := meshCluster(ctx, t, "lc-istiod", istio.DefaultVersion)
	charts := testsupport.IstioCharts(t)
	is, env := lc.Istiod(), lc.Env()
	kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
	if err != nil {
		t.Fatal(err)
	}
	defaultPid := is.Pid("")
	checkIstiodProcess(t, kube, defaultPid, "default")

	t.Run("webhooks call istiod on 127.0.0.1 and trust the plugged root", func(t *testing.T) {
		rootPEM := ca.EncodeCertificatesPEM(m.CA.Root)
		// istiod's patchers set the caBundle; its validation controller
		// turns the chart's failurePolicy Ignore into Fail once a dry run
		// through the API server reached its webhook.
		until(t, time.Minute, "istiod to set every webhook's caBundle and make validation fail closed", func(ctx context.Context) (bool, error) {
			for _, hook := range webhooks(t, kube) {
				if !bytes.Contains(hook.CABundle, bytes.TrimSpace(rootPEM)) {
					return false, nil
				}
			}
			validating, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range validating.Items {
				for _, w := range c.Webhooks {
					if w.FailurePolicy == nil || *w.FailurePolicy != admissionv1.Fail {
						return false, nil
					}
				}
			}
			return len(validating.Items) > 0, nil
		})
		checkWebhooksCall(t, kube, defaultPid)
	})

	ns, sa := injectedNamespace(t, kube, map[string]string{"istio-injection": "enabled"})
	var pod corev1.Pod
	t.Run("a Deployment's pods are stored injected with a native sidecar", func(t *testing.T) {
		pod = injectedPod(t, kube, ns, sa)
	})

	t.Run("an injected pod turns Ready only once its Envoy's configuration is complete and its certificates are issued", func(t *testing.T) {
		var mu sync.Mutex
		issued, asked := false, 0
		lc.Sidecars().CertifyWith(func(_ context.Context, p *corev1.Pod) error {
			mu.Lock()
			defer mu.Unlock()
			asked++
			if !issued {
				return errors.New("istiod's CA does not answer (this test's certifier)")
			}
			return nil
		})
		defer lc.Sidecars().CertifyWith(nil)
		gated, gatedSA := injectedNamespace(t, kube, map[string]string{"istio-injection": "enabled"})
		p := injectedPod(t, kube, gated, gatedSA)
		until(t, time.Minute, "the sidecar to ask for its certificates", func(context.Context) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return asked > 1, nil // asked, refused and asked again
		})
		got, err := kube.CoreV1().Pods(gated).Get(t.Context(), p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != corev1.PodRunning || got.Status.PodIP == "" || podReady(got) {
			t.Fatalf("without certificates: pod %s phase %s, IP %q, Ready %v; want Running with an IP and not Ready", got.Name, got.Status.Phase, got.Status.PodIP, podReady(got))
		}
		c, err := lc.Sidecars().Client(got)
		if err != nil {
			t.Fatal(err)
		}
		if snap := c.Snapshot(); snap == nil || !snap.Warm() {
			t.Fatalf("the pod's Envoy holds no complete configuration though the certificates were asked for")
		}
		ip := got.Status.PodIP
		mu.Lock()
		issued = true
		mu.Unlock()
		until(t, 30*time.Second, "the pod to turn Ready once its certificates are issued", func(ctx context.Context) (bool, error) {
			got, err = kube.CoreV1().Pods(gated).Get(ctx, p.Name, metav1.GetOptions{})
			return err == nil && podReady(got), err
		})
		if got.Status.PodIP != ip {
			t.Errorf("the pod's IP changed from %s to %s when it turned Ready", ip, got.Status.PodIP)
		}
	})

	t.Run("the World cache follows the API server: the injected pod, Running with its IP", func(t *testing.T) {
		w := lc.World()
		if w == nil {
			t.Fatal("a local cluster with istiod has no World cache")
		}
		until(t, 30*time.Second, "the cache to hold the pod as the API server does", func(ctx context.Context) (bool, error) {
			var cached corev1.Pod
			if err := w.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: pod.Name}, &cached); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			stored, err := kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return cached.ResourceVersion == stored.ResourceVersion && cached.Status.PodIP != "" && cached.Status.Phase == corev1.PodRunning, nil
		})
	})

	t.Run("Istio's validation webhook refuses an invalid object and admits a valid one", func(t *testing.T) {
		dr := func(name string, mode networkingv1.ClientTLSSettings_TLSmode) *istionetworking.DestinationRule {
			return &istionetworking.DestinationRule{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
				Spec: networkingv1.DestinationRule{
					Host:          "echo." + ns + ".svc.cluster.local",
					TrafficPolicy: &networkingv1.TrafficPolicy{Tls: &networkingv1.ClientTLSSettings{Mode: mode}},
				},
			}
		}
		var refusal error
		until(t, time.Minute, "the validation webhook to refuse MUTUAL without a client certificate", func(ctx context.Context) (bool, error) {
			_, refusal = env.Istio.NetworkingV1().DestinationRules(ns).Create(ctx, dr("mutual", networkingv1.ClientTLSSettings_MUTUAL), metav1.CreateOptions{})
			if refusal == nil {
				return false, fmt.Errorf("an invalid DestinationRule (MUTUAL without a client certificate) was admitted")
			}
			return strings.Contains(refusal.Error(), "denied the request") && strings.Contains(refusal.Error(), "client certificate required for mutual tls"), nil
		})
		t.Logf("refused: %v", refusal)
		if _, err := env.Istio.NetworkingV1().DestinationRules(ns).Create(t.Context(), dr("istio-mutual", networkingv1.ClientTLSSettings_ISTIO_MUTUAL), metav1.CreateOptions{}); err != nil {
			t.Errorf("a valid DestinationRule (ISTIO_MUTUAL) was refused: %v", err)
		}
	})

	t.Run("istiod's CA signs the ServiceAccount's identity with the plugged root", func(t *testing.T) {
		issueCert(t, is, env, m.CA, "", &pod)
	})

	t.Run("a rollout restart of the istiod Deployment restarts istiod", func(t *testing.T) {
		defaultPid = restartedIstiod(ctx, t, kube, is, defaultPid, "a rollout restart", m.Istio.RestartControlPlane)
		issueCert(t, is, env, m.CA, "", &pod)
	})

	// rotateRoot's mechanism: a new cacerts (the new CA's intermediate,
	// both roots trusted) takes effect when istiod restarts.
	signer := m.CA
	t.Run("after a root rotation's cacerts, the restarted istiod signs with the new CA", func(t *testing.T) {
		next, err := ca.Generate()
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := next.SecretTrusting(cluster.IstioNamespace, nil, m.CA.Root, next.Root)
		if err != nil {
			t.Fatal(err)
		}
		secret, err := kube.CoreV1().Secrets(cluster.IstioNamespace).Get(ctx, ca.SecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		secret.Data = rotated.Data
		if _, err := kube.CoreV1().Secrets(cluster.IstioNamespace).Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		defaultPid = restartedIstiod(ctx, t, kube, is, defaultPid, "a restart after the new cacerts", m.Istio.RestartControlPlane)
		issueCert(t, is, env, next, "", &pod)
		signer = next
	})

	t.Run("a canary revision gets its own istiod and webhook URL", func(t *testing.T) {
		start := time.Now()
		if err := m.Istio.InstallCanary(ctx, "canary", istio.DefaultVersion, filepath.Join(charts, istio.DefaultVersion)); err != nil {
			t.Fatal(err)
		}
		if err := is.WaitServing(ctx, "canary", 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := m.Istio.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("canary istiod serving and injecting %s after its install began", time.Since(start).Round(100*time.Millisecond))
		canaryPid := is.Pid("canary")
		if canaryPid == defaultPid || is.Pid("") != defaultPid {
			t.Fatalf("canary pid %d, default pid %d (was %d): want two processes, the default one untouched", canaryPid, is.Pid(""), defaultPid)
		}
		checkIstiodProcess(t, kube, canaryPid, "canary")
		defaultAddr, _ := is.CAAddress("")
		canaryAddr, err := is.CAAddress("canary")
		if err != nil || canaryAddr == defaultAddr {
			t.Errorf("canary CA address %q (%v), default %q: want its own", canaryAddr, err, defaultAddr)
		}
		hooks := webhooks(t, kube)
		injector, ok := hooks["mutating/istio-sidecar-injector-canary/0"]
		if !ok {
			t.Fatalf("no canary injector webhook among %v", slices.Sorted(maps.Keys(hooks)))
		}
		if port := webhookPort(t, "canary injector", injector); !ports(t, canaryPid)[port] || ports(t, defaultPid)[port] {
			t.Errorf("the canary injector calls port %d: want one only the canary istiod listens on", port)
		}
		canaryNS, canarySA := injectedNamespace(t, kube, map[string]string{"istio.io/rev": "canary"})
		canaryPod := injectedPod(t, kube, canaryNS, canarySA)
		issueCert(t, is, env, signer, "canary", &canaryPod)
	})

	t.Run("nothing of istiod listens beyond 127.0.0.1", func(t *testing.T) {
		if len(lc.Pids()) != 7 {
			t.Fatalf("Pids() = %v, want the five parts, istiod-default and istiod-canary", lc.Pids())
		}
		for name, pid := range lc.Pids() {
			if !strings.HasPrefix(name, "istiod-") {
				continue
			}
			addrs, err := listeningAddresses(pid)
			if err != nil {
				t.Fatal(err)
			}
			if len(addrs) == 0 {
				t.Errorf("%s (pid %d) listens nowhere", name, pid)
			}
			for _, a := range addrs {
				if !a.IP.IsLoopback() {
					t.Errorf("%s (pid %d) listens on %s", name, pid, a)
				}
			}
			t.Logf("%s listens on %v", name, addrs)
		}
	})

	t.Run("completing the canary stops the old revision's istiod; the canary serves every webhook", func(t *testing.T) {
		canaryPid := is.Pid("canary")
		start := time.Now()
		if err := m.Istio.RemoveRevision(ctx, ""); err != nil {
			t.Fatal(err)
		}
		until(t, 2*time.Minute, "the default revision's istiod to stop once its pods are gone", func(context.Context) (bool, error) {
			return is.Pid("") == 0, nil
		})
		t.Logf("the default revision's istiod stopped %s after its release was removed", time.Since(start).Round(100*time.Millisecond))
		if syscall.Kill(defaultPid, 0) == nil {
			t.Errorf("the default revision's istiod (pid %d) still runs", defaultPid)
		}
		if _, err := is.CAAddress(""); err == nil {
			t.Error("CAAddress of the removed revision still answers")
		}
		if is.Pid("canary") != canaryPid {
			t.Fatalf("the canary's istiod changed (pid %d -> %d)", canaryPid, is.Pid("canary"))
		}
		// The base release's default validator now names istiod-canary:
		// the post-renderer pointed it at the canary on the upgrade.
		checkWebhooksCall(t, kube, canaryPid)
		until(t, time.Minute, "validation through the canary to refuse MUTUAL without a client certificate", func(ctx context.Context) (bool, error) {
			_, err := env.Istio.NetworkingV1().DestinationRules(ns).Create(ctx, &istionetworking.DestinationRule{
				ObjectMeta: metav1.ObjectMeta{Name: "mutual-after-canary", Namespace: ns},
				Spec: networkingv1.DestinationRule{
					Host:          "echo." + ns + ".svc.cluster.local",
					TrafficPolicy: &networkingv1.TrafficPolicy{Tls: &networkingv1.ClientTLSSettings{Mode: networkingv1.ClientTLSSettings_MUTUAL}},
				},
			}, metav1.CreateOptions{})
			if err == nil {
				return false, fmt.Errorf("an invalid DestinationRule was admitted after the canary completed")
			}
			return strings.Contains(err.Error(), "client certificate required for mutual tls"), nil
		})
	})

	logs := t.TempDir()
	if err := lc.ExportLogs(ctx, logs); err != nil {
		t.Fatal(err)
	}
	for _, rev := range []string{"default", "canary"} {
		data, err := os.ReadFile(filepath.Join(logs, "istiod-"+rev+".log"))
		if err != nil || !bytes.Contains(data, []byte("meshproof: istiod start")) {
			t.Errorf("exported logs lack istiod-%s.log with its starts (%v)", rev, err)
		}
	}

	pids := lc.Pids()
	if pids["istiod-canary"] == 0 {
		t.Fatalf("Pids() = %v, want istiod-canary among them", pids)
	}
	start := time.Now()
	*destroyed = true
	if err := lc.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("destroyed in %s", time.Since(start).Round(100*time.Millisecond))
	for name, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("%s (pid %d) still runs after Destroy", name, pid)
		}
	}
}

// restartedIstiod runs restart, which makes a new istiod pod, and waits
// until a new process plays that pod and serves; it checks the new process
// and returns its id.
func restartedIstiod(ctx context.Context, t *testing.T, kube kubernetes.Interface, is *cluster.Istiod, oldPid int, what string, restart func(context.Context) error) int {
	t.Helper()
	oldRootCADir := processEnv(t, oldPid)["ROOT_CA_DIR"]
	start := time.Now()
	if err := restart(ctx); err != nil {
		t.Fatal(err)
	}
	// restart waits for the rollout, and the new pod is Ready only once its
	// istiod serves: no waiting for the process here.
	pid := is.Pid("")
	if pid == 0 || pid == oldPid {
		t.Fatalf("%s completed with istiod pid %d (before: %d): the rollout did not wait for the new istiod", what, pid, oldPid)
	}
	if err := is.WaitServing(ctx, "", time.Second); err != nil {
		t.Fatalf("%s completed before the new istiod served: %v", what, err)
	}
	t.Logf("%s: istiod restarted (pid %d -> %d) and serving %s after it began", what, oldPid, pid, time.Since(start).Round(100*time.Millisecond))
	if syscall.Kill(oldPid, 0) == nil {
		t.Errorf("the old istiod (pid %d) still runs", oldPid)
	}
	checkIstiodProcess(t, kube, pid, "default")
	if dir := processEnv(t, pid)["ROOT_CA_DIR"]; dir == oldRootCADir {
		t.Errorf("the new istiod reuses ROOT_CA_DIR %s of the old one", dir)
	}
	return pid
}

// checkWebhooksCall checks that every webhook calls a URL on 127.0.0.1 (no
// Service) at a port where istiod pid listens.
func checkWebhooksCall(t *testing.T, kube kubernetes.Interface, pid int) {
	t.Helper()
	listening := ports(t, pid)
	hooks := webhooks(t, kube)
	if len(hooks) == 0 {
		t.Fatal("no webhooks installed")
	}
	for name, hook := range hooks {
		if hook.Service != nil {
			t.Errorf("%s still calls Service %s/%s", name, hook.Service.Namespace, hook.Service.Name)
			continue
		}
		if port := webhookPort(t, name, hook); !listening[port] {
			t.Errorf("%s calls port %d, where istiod (pid %d) does not listen (it listens on %v)", name, port, pid, listening)
		}
	}
}

// An in-place upgrade (Istio 1.29.6's charts to 1.30.3's) replaces the
// istiod pod: the supervisor restarts istiod for it, the upgraded releases'
// webhooks still call 127.0.0.1 (the post-renderer runs on upgrades too),
// and the injector then injects the new proxy.
func TestIstiodFollowsAnInPlaceUpgrade(t *testing.T) {
	// Each istiod test has a local cluster of its own.
	t.Parallel()
	const from, to = "1.29.6", "1.30.3"
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	lc, m, _ := meshCluster(ctx, t, "lc-istiod-upgrade", from)
	is, env := lc.Istiod(), lc.Env()
	kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns, sa := injectedNamespace(t, kube, map[string]string{"istio-injection": "enabled"})
	old := injectedPod(t, kube, ns, sa)
	if tag := sidecar.ImageTag(sidecar.Proxy(&old).Image); !sidecar.TagIsVersion(tag, from) {
		t.Errorf("before the upgrade, injection gave istio-proxy tag %s, want %s", tag, from)
	}
	pid := restartedIstiod(ctx, t, kube, is, is.Pid(""), "the in-place upgrade to "+to, func(ctx context.Context) error {
		if err := m.Istio.Upgrade(ctx, to, filepath.Join(testsupport.IstioCharts(t), to)); err != nil {
			return err
		}
		return m.Ready(ctx) // rolled out, and the injector of the new version answers
	})
	checkWebhooksCall(t, kube, pid)
	issueCert(t, is, env, m.CA, "", &old)
}

// An istiod that never serves (here: its pod's args hold a flag value
// pilot-discovery cannot parse) leaves its pod unready, as a failing
// readiness probe would: WaitServing fails at once with istiod's own words,
// and the installer's readiness wait fails on the Deployment's rollout.
func TestIstiodNeverReadyLeavesItsPodUnready(t *testing.T) {
	// Each istiod test has a local cluster of its own.
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	lc, _ := istiodCluster(ctx, t, "lc-istiod-broken")
	m, err := installMesh(ctx, t, lc, "{version: "+istio.DefaultVersion+", values: {extraContainerArgs: [--keepaliveMaxServerConnectionAge=meshproof-not-a-duration]}}",
		istio.WithReadyTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = lc.Istiod().WaitServing(ctx, "", 3*time.Minute)
	if err == nil || !strings.Contains(err.Error(), "meshproof-not-a-duration") {
		t.Fatalf("WaitServing = %v, want istiod's exit with its complaint about the flag", err)
	}
	t.Logf("WaitServing failed after %s: %v", time.Since(start).Round(10*time.Millisecond), firstLine(err))
	err = m.Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), "istiod Deployment istio-system/istiod to roll out") {
		t.Fatalf("Ready = %v, want a timeout on the istiod Deployment's rollout", err)
	}
	t.Logf("Ready failed: %v", firstLine(err))
	kube, err := kubernetes.NewForConfig(lc.KubernetesRestConfig())
	if err != nil {
		t.Fatal(err)
	}
	pods, err := kube.CoreV1().Pods(cluster.IstioNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("istiod pods: %d (%v)", len(pods.Items), err)
	}
	for _, p := range pods.Items {
		if podReady(&p) {
			t.Errorf("pod %s is Ready though its istiod never served", p.Name)
		}
	}
}

func firstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}

// meshCluster starts a local cluster WithIstiod and installs Istio version
// on it as the run library does (the run library's installMesh: harness/internal/mesh's cacerts
// and releases, then the installer's readiness), with the supervisor's
// post-renderer. Cleanup destroys the cluster unless the test set
// *destroyed.
func meshCluster(ctx context.Context, t *testing.T, name, version string) (*cluster.Cluster, *mesh.Mesh, *bool) {
	t.Helper()
	lc, destroyed := istiodCluster(ctx, t, name)
	start := time.Now()
	m, err := installMesh(ctx, t, lc, "{version: "+version+", pluggedCA: true, workloadCertTTL: 1m}")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Istio %s charts applied in %s", version, time.Since(start).Round(100*time.Millisecond))
	if err := lc.Istiod().WaitServing(ctx, "", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("istiod serving %s after the charts were applied", time.Since(start).Round(100*time.Millisecond))
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Istio ready (istiod rolled out, injecting) %s after the charts were applied", time.Since(start).Round(100*time.Millisecond))
	return lc, m, destroyed
}

// istiodCluster starts a local cluster WithIstiod; Cleanup destroys it
// unless the test set *destroyed.
func istiodCluster(ctx context.Context, t *testing.T, name string) (*cluster.Cluster, *bool) {
	t.Helper()
	start := time.Now()
	lc := cluster.New(cluster.WithName(name), cluster.WithIstiod())
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			lc.Destroy(context.Background())
		}
	})
	if _, err := lc.Create(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("local cluster with the istiod supervisor created in %s", time.Since(start).Round(100*time.Millisecond))
	if lc.Istiod() == nil {
		t.Fatal("Istiod() is nil on a cluster created WithIstiod")
	}
	return lc, &destroyed
}

// installMesh applies Istio's charts (a scenario cluster's istio settings,
// given as YAML) through harness/internal/mesh with the supervisor's post-renderer,
// without waiting for readiness.
func installMesh(ctx context.Context, t *testing.T, lc *cluster.Cluster, istioYAML string, extra ...istio.Option) (*mesh.Mesh, error) {
	t.Helper()
	suite, err := scenario.Load("istiod.yaml", []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters: [{name: c, istio: `+istioYAML+`}]
scenarios: [{name: s, steps: [{wait: {duration: 1s}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	// The tests' charts, named as a scenario names them: through
	// $MESHPROOF_ISTIO_CHARTS (t.Setenv) the tests could not run in parallel.
	c := &suite.Clusters[0]
	c.Istio.Charts = filepath.Join(testsupport.IstioCharts(t), c.Istio.Version)
	opts := append([]istio.Option{istio.WithPostRenderer(lc.Istiod().PostRenderer())}, extra...)
	return mesh.Install(ctx, lc.Env().Client, lc.KubernetesRestConfig(), c, testsupport.Logger(t), opts...)
}

// webhooks are every webhook's client config, by kind/configuration/index.
func webhooks(t *testing.T, kube kubernetes.Interface) map[string]admissionv1.WebhookClientConfig {
	t.Helper()
	out := map[string]admissionv1.WebhookClientConfig{}
	mutating, err := kube.AdmissionregistrationV1().MutatingWebhookConfigurations().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range mutating.Items {
		for i, w := range c.Webhooks {
			out[fmt.Sprintf("mutating/%s/%d", c.Name, i)] = w.ClientConfig
		}
	}
	validating, err := kube.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range validating.Items {
		for i, w := range c.Webhooks {
			out[fmt.Sprintf("validating/%s/%d", c.Name, i)] = w.ClientConfig
		}
	}
	return out
}

// webhookPort is the 127.0.0.1 port a webhook's URL calls.
func webhookPort(t *testing.T, name string, hook admissionv1.WebhookClientConfig) int {
	t.Helper()
	if hook.URL == nil {
		t.Fatalf("%s has no URL", name)
	}
	u, err := url.Parse(*hook.URL)
	if err != nil || u.Scheme != "https" || u.Hostname() != "127.0.0.1" {
		t.Fatalf("%s calls %q, want https://127.0.0.1:<port>/...", name, *hook.URL)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return port
}

// ports are the TCP ports pid listens on.
func ports(t *testing.T, pid int) map[int]bool {
	t.Helper()
	addrs, err := listeningAddresses(pid)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]bool{}
	for _, a := range addrs {
		out[a.Port] = true
	}
	return out
}

// processEnv is pid's environment.
func processEnv(t *testing.T, pid int) map[string]string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}

// checkIstiodProcess checks that pid plays the running istiod pod of
// revision: its POD_NAME, REVISION and SERVICE_ACCOUNT come from that pod.
func checkIstiodProcess(t *testing.T, kube kubernetes.Interface, pid int, revision string) {
	t.Helper()
	if pid == 0 {
		t.Fatalf("no istiod runs for revision %s", revision)
	}
	pods, err := kube.CoreV1().Pods(cluster.IstioNamespace).List(t.Context(), metav1.ListOptions{LabelSelector: "app=istiod,istio.io/rev=" + revision})
	if err != nil {
		t.Fatal(err)
	}
	var running []string
	var sa string
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running = append(running, p.Name)
			sa = p.Spec.ServiceAccountName
		}
	}
	env := processEnv(t, pid)
	if len(running) != 1 || env["POD_NAME"] != running[0] {
		t.Errorf("istiod (pid %d) has POD_NAME %q; running istiod pods of revision %s: %v", pid, env["POD_NAME"], revision, running)
	}
	if env["REVISION"] != revision || env["SERVICE_ACCOUNT"] != sa || env["POD_NAMESPACE"] != cluster.IstioNamespace {
		t.Errorf("istiod (pid %d) has REVISION=%q SERVICE_ACCOUNT=%q POD_NAMESPACE=%q, want %s, %s, %s",
			pid, env["REVISION"], env["SERVICE_ACCOUNT"], env["POD_NAMESPACE"], revision, sa, cluster.IstioNamespace)
	}
}

// injectedNamespace creates a namespace with labels and a ServiceAccount in it.
func injectedNamespace(t *testing.T, kube kubernetes.Interface, labels map[string]string) (ns, sa string) {
	t.Helper()
	n, err := kube.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "lc-mesh-", Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts(n.Name).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "echo-sa"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return n.Name, "echo-sa"
}

// injectedPod deploys echo in ns as sa and returns its pod once stored,
// checking that injection gave it istio-init and a native-sidecar
// istio-proxy (init containers) and no regular istio-proxy container.
func injectedPod(t *testing.T, kube kubernetes.Interface, ns, sa string) corev1.Pod {
	t.Helper()
	labels := map[string]string{"app": "echo"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: sa,
					Containers: []corev1.Container{{
						Name: "app", Image: "registry.invalid/echo:never-pulled",
						Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
					}},
				},
			},
		},
	}
	start := time.Now()
	if _, err := kube.AppsV1().Deployments(ns).Create(t.Context(), d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	until(t, 2*time.Minute, "Deployment echo's pod in "+ns, func(ctx context.Context) (bool, error) {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil || len(pods.Items) == 0 {
			return false, err
		}
		pod = pods.Items[0]
		return true, nil
	})
	t.Logf("pod %s/%s stored %s after the Deployment (phase %s)", ns, pod.Name, time.Since(start).Round(10*time.Millisecond), pod.Status.Phase)
	var inits []string
	var proxy *corev1.Container
	for i, c := range pod.Spec.InitContainers {
		inits = append(inits, c.Name)
		if c.Name == "istio-proxy" {
			proxy = &pod.Spec.InitContainers[i]
		}
	}
	if !slices.Contains(inits, "istio-init") || proxy == nil {
		t.Fatalf("pod %s has init containers %v, want istio-init and istio-proxy", pod.Name, inits)
	}
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("istio-proxy is an init container without restartPolicy Always: not a native sidecar")
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == "istio-proxy" {
			t.Errorf("pod %s has a regular istio-proxy container too", pod.Name)
		}
	}
	return pod
}

// issueCert asks revision's istiod CA for pod's certificate, as the
// simulated data plane does, and checks it.
func issueCert(t *testing.T, is *cluster.Istiod, env *controlplane.Env, bundle *ca.Bundle, revision string, pod *corev1.Pod) {
	t.Helper()
	addr, err := is.CAAddress(revision)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(bundle.Root)
	src, err := dataplane.NewIstiodCA(env.Client, addr, roots)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	start := time.Now()
	certs, err := src.Issue(t.Context(), pod, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	id, err := ca.VerifyWorkloadChain(certs.Chain, bundle.Root)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", pod.Namespace, pod.Spec.ServiceAccountName); id != want {
		t.Errorf("istiod issued %s, want %s", id, want)
	}
	// istiod's last element is its whole trust bundle (root-cert.pem):
	// after a rotation, several roots; the sidecar trusts them all.
	if !slices.ContainsFunc(certs.Roots, bundle.Root.Equal) {
		t.Errorf("the trust anchors istiod sent (%d roots) lack the signing root %s", len(certs.Roots), bundle.Root.SerialNumber)
	}
	leaf := certs.Leaf()
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 5*time.Minute {
		t.Errorf("leaf valid %s, asked for 1m (istiod backdates NotBefore by minutes at most)", life)
	}
	t.Logf("revision %s issued %s (valid %s to %s; %d trusted roots) in %s", revisionOrDefault(revision), id, leaf.NotBefore.Format(time.TimeOnly), leaf.NotAfter.Format(time.TimeOnly), len(certs.Roots), took.Round(time.Millisecond))
}

func revisionOrDefault(rev string) string {
	if rev == "" {
		return "default"
	}
	return rev
}
