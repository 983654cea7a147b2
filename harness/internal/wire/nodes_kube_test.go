package wire

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	echowire "github.com/meshproof/meshproof/fixtures/echo/wire"
	"github.com/meshproof/meshproof/fixtures/manifests"
	"github.com/meshproof/meshproof/harness/internal/apply"
	"github.com/meshproof/meshproof/harness/internal/image"
	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/results"
)

var kube testsupport.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// The witness's objects as a run deploys them are accepted by a real API
// server, its pod admitted by Pod Security in the privileged namespace;
// a cluster whose admission refuses host-network pods (here a
// ValidatingAdmissionPolicy, as a policy engine would) gets the refusal
// in the API server's words, which the run reports or fails the setup on.
func TestWitnessPodsAdmission(t *testing.T) {
	env := kube.Get(t)
	ctx := t.Context()
	objs := manifests.WireWitness("run-wire", "meshproof.local/echo:test")
	if err := apply.Objects(ctx, env.Client, objs...); err != nil {
		t.Fatalf("the API server refused the witness's objects: %v", err)
	}
	t.Cleanup(func() { env.Client.Delete(ctx, objs[1]) })
	var ds appsv1.DaemonSet
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(objs[1]), &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	if !spec.HostNetwork || len(c.SecurityContext.Capabilities.Add) != 2 || c.ReadinessProbe.Exec.Command[0] != image.BinaryPath {
		t.Errorf("stored witness pod spec: host network %v, capabilities %v, probe %v", spec.HostNetwork, c.SecurityContext.Capabilities.Add, c.ReadinessProbe.Exec.Command)
	}
	if err := Admitted(ctx, env.Client, "run-wire", "meshproof.local/echo:test"); err != nil {
		t.Fatalf("a witness pod was refused: %v", err)
	}

	policy := &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "no-host-network"},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr.To(admissionv1.Fail),
			MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionv1.RuleWithOperations{Operations: []admissionv1.OperationType{admissionv1.Create},
					Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}}},
			Validations: []admissionv1.Validation{{Expression: "!has(object.spec.hostNetwork) || !object.spec.hostNetwork", Message: "host network is not allowed here"}},
		},
	}
	binding := &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "no-host-network"},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: policy.Name, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: manifests.WitnessNamespace}}}},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Client.Delete(ctx, o) })
	}
	// The policy takes effect once the API server has loaded it.
	var err error
	wait.For(func(ctx context.Context) (bool, error) {
		err = Admitted(ctx, env.Client, "run-wire", "meshproof.local/echo:test")
		return err != nil, nil
	}, wait.WithContext(ctx), wait.WithInterval(100*time.Millisecond), wait.WithTimeout(30*time.Second))
	if err == nil || !strings.Contains(err.Error(), "host network is not allowed here") || !strings.Contains(err.Error(), "NET_RAW") {
		t.Errorf("refusal: %v", err)
	}
}

// localExecer runs the exec'd echo command as a local process of the real
// echo binary, as the witness pod's container would run it.
type localExecer struct{ bin string }

func (l localExecer) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	c := exec.CommandContext(ctx, l.bin, cmd.Argv[1:]...)
	c.Stdin = bytes.NewReader(cmd.Stdin)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	return stdout.Bytes(), stderr.Bytes(), err
}

// Nodes asks the witness pods of the client's and server's nodes through
// exec: here the real `echo witness` (serving on loopback), asked as the
// run asks it, judges a real plaintext exchange between the pods'
// addresses, and a node whose witness is not ready is an error.
func TestNodesAskTheWitnessPods(t *testing.T) {
	if err := echowire.CheckCapability(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("skipped: needs CAP_NET_RAW: %v", err)
	}
	env := kube.Get(t)
	ctx := t.Context()
	dir := t.TempDir()
	bin := filepath.Join(dir, "echo")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/meshproof/meshproof/fixtures/echo").CombinedOutput(); err != nil {
		t.Fatalf("building echo: %v\n%s", err, out)
	}
	socket := filepath.Join(dir, "w.sock")
	serve := exec.Command(bin, "witness", "serve", "--socket", socket, "--interface", "lo")
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Signal(os.Interrupt); serve.Wait() })
	if err := wait.For(func(context.Context) (bool, error) {
		return exec.Command(bin, "witness", "check", "--socket", socket).Run() == nil, nil
	}, wait.WithInterval(50*time.Millisecond), wait.WithTimeout(30*time.Second)); err != nil {
		t.Fatalf("the witness does not answer: %v", err)
	}

	ns := env.NewNamespace(t, "wire-nodes")
	env.EnsureNamespace(t, Namespace)
	server := fmt.Sprintf("127.79.%d.%d", rand.IntN(256), 2+rand.IntN(250))
	for _, p := range []struct{ ns, name, ip, node string }{
		{ns, "client", "127.0.0.1", "node-a"}, {ns, "server", server, "node-b"},
		{Namespace, "witness-a", "172.18.0.2", "node-a"}, {Namespace, "witness-b", "172.18.0.3", "node-b"},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: map[string]string{appLabel: DaemonSetName}},
			Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: Container, Image: "x"}}}}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if err := env.Client.Status().Update(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	// Both "nodes" are this machine's loopback: the two witnesses are the
	// same process, asked once per node as on a cluster.
	n := NewNodes(env.Client, socketExecer{localExecer{bin}, socket})
	judge, err := n.Watch(ctx, resultsPod(ns, "client", "127.0.0.1"), []results.Pod{resultsPod(ns, "server", server)})
	if err != nil {
		t.Fatal(err)
	}
	res := exchange(t, lineEcho(t, server))
	rs := []echoapi.ProbeResult{res}
	judge(ctx, rs)
	if w := rs[0].Witness; w == nil || w.Verdict != echoapi.WitnessPlaintext || w.Packet == nil {
		t.Errorf("the exchange's witness: %+v", w)
	}

	// A node without a ready witness pod: Watch says which.
	var wb corev1.Pod
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: "witness-b"}, &wb); err != nil {
		t.Fatal(err)
	}
	wb.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
	if err := env.Client.Status().Update(ctx, &wb); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Watch(ctx, resultsPod(ns, "client", "127.0.0.1"), []results.Pod{resultsPod(ns, "server", server)}); err == nil || !strings.Contains(err.Error(), "node-b") {
		t.Errorf("Watch with node-b's witness not ready: %v", err)
	}
}

// socketExecer points the exec'd witness commands at the test's socket.
type socketExecer struct {
	inner  localExecer
	socket string
}

func (s socketExecer) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	for i, a := range cmd.Argv {
		if a == manifests.WitnessSocket {
			cmd.Argv[i] = s.socket
		}
	}
	return s.inner.Exec(ctx, cmd)
}

func resultsPod(ns, name, ip string) results.Pod {
	return results.Pod{Namespace: ns, Name: name, IP: ip}
}
