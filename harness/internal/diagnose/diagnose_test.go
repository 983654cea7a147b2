package diagnose

// These tests run the collection against a real kube-apiserver with
// Istio's CRDs (harness/internal/local/controlplane). There is no kubelet: pod logs cannot be
// served, so the tests assert that every container's log is listed as not
// collected, and the in-pod exec transport is scripted.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
)

var (
	env       *testsupport.Env
	clientset kubernetes.Interface
)

func TestMain(m *testing.M) {
	os.Exit(testsupport.Main(m, func(e *testsupport.Env) (err error) {
		env = e
		clientset, err = kubernetes.NewForConfig(e.Config)
		return err
	}))
}

// absentNode is the node the test pods are scheduled to. No such node
// exists, so the API server cannot reach a kubelet for their logs, as
// when a node is gone; a pod on no node gets an empty log instead.
const absentNode = "kind-worker"

// pod creates a pod with the given containers, scheduled to absentNode,
// and, when restarts are given, writes container statuses as a kubelet
// would.
func pod(t *testing.T, ns, name string, labels map[string]string, initContainers, containers []string, restarts map[string]int32) {
	t.Helper()
	podOn(t, absentNode, ns, name, labels, initContainers, containers, restarts)
}

func podOn(t *testing.T, node, ns, name string, labels map[string]string, initContainers, containers []string, restarts map[string]int32) {
	t.Helper()
	ctx := context.Background()
	spec := corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false), NodeName: node}
	for _, c := range initContainers {
		spec.InitContainers = append(spec.InitContainers, corev1.Container{Name: c, Image: "meshproof.local/" + c + ":test"})
	}
	for _, c := range containers {
		spec.Containers = append(spec.Containers, corev1.Container{Name: c, Image: "meshproof.local/" + c + ":test"})
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}, Spec: spec}
	if err := env.Client.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	if len(restarts) == 0 {
		return
	}
	for _, c := range containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c, Image: "meshproof.local/" + c + ":test", RestartCount: restarts[c], Ready: true,
		})
	}
	p.Status.Phase = corev1.PodRunning
	if err := env.Client.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
}

func policy(t *testing.T, apiVersion, kind, ns, name string, labels map[string]string, spec map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetLabels(labels)
	if err := env.Client.Create(context.Background(), u); err != nil {
		t.Fatal(err)
	}
}

func legacyEvent(t *testing.T, ns, name, reason, message string, at time.Time) {
	t.Helper()
	e := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: name, Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "service-a-0", FieldPath: "spec.containers{istio-proxy}"},
		Reason:         reason, Message: message, Type: corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "kubelet"},
		FirstTimestamp: metav1.NewTime(at), LastTimestamp: metav1.NewTime(at), Count: 3,
	}
	if _, err := clientset.CoreV1().Events(ns).Create(context.Background(), e, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// scriptedExecer answers the config-dump exec from a script per pod.
type scriptedExecer struct {
	mu      sync.Mutex
	calls   []probe.Command
	outputs map[string]string // "ns/pod" → stdout
	block   bool              // wait for ctx instead of answering
}

func (s *scriptedExecer) Exec(ctx context.Context, cmd probe.Command) ([]byte, []byte, error) {
	s.mu.Lock()
	s.calls = append(s.calls, cmd)
	s.mu.Unlock()
	if s.block {
		<-ctx.Done()
		return nil, nil, &probe.ExecError{Command: cmd, Err: ctx.Err()}
	}
	out, ok := s.outputs[cmd.Pod.String()]
	if !ok {
		return nil, []byte("error: container not running"), &probe.ExecError{Command: cmd, Stderr: "container not running", Err: errors.New("command terminated with exit code 1")}
	}
	return []byte(out), nil, nil
}

// A PKCS#8 key as Envoy's config dump would show it inside a JSON string,
// line breaks escaped. The body is not a real key: the scrub works on the
// PEM framing, whatever is inside.
const fakeKeyPEM = `-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDfakefakefake\nZmFrZWtleWJvZHlmYWtla2V5Ym9keWZha2VrZXlib2R5\n-----END PRIVATE KEY-----\n`

const certPEM = `-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUcertificatebodystays\n-----END CERTIFICATE-----\n`

func configDump() string {
	return `{
 "configs": [
  {
   "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
   "dynamic_active_secrets": [
    {
     "name": "default",
     "secret": {
      "tls_certificate": {
       "certificate_chain": {"inline_bytes": "` + certPEM + `"},
       "private_key": {"inline_bytes": "` + fakeKeyPEM + `"},
       "password": {"inline_string": "[redacted]"}
      }
     }
    }
   ]
  }
 ]
}
`
}

func TestCollectAgainstAPIServer(t *testing.T) {
	ctx := t.Context()
	const run, otherRun = "20261126-234904-1a2b3c4d", "20261126-120000-deadbeef"
	ns := env.NewNamespace(t, "diag")
	istioNS := env.NewNamespace(t, "diag-istio")

	pod(t, ns, "service-a-0", map[string]string{"app": "service-a"}, []string{"istio-init"}, []string{"app", probe.ProxyContainer},
		map[string]int32{probe.ProxyContainer: 2})
	pod(t, ns, "legacy-0", map[string]string{"app": "legacy"}, nil, []string{"app"}, nil)
	pod(t, istioNS, "istiod-0", map[string]string{"app": "istiod", "istio": "pilot"}, nil, []string{"discovery"}, nil)
	// Not scheduled yet: the API server answers an empty log.
	podOn(t, "", ns, "pending-0", map[string]string{"app": "service-b"}, nil, []string{"app"}, nil)
	pod(t, istioNS, "gateway-0", map[string]string{"app": "gateway"}, nil, []string{"istio-proxy"}, nil)

	base := time.Date(2026, 11, 26, 23, 0, 0, 0, time.UTC)
	legacyEvent(t, ns, "third", "BackOff", "Back-off restarting failed container istio-proxy", base.Add(2*time.Minute))
	legacyEvent(t, ns, "first", "Pulled", "Container image pulled", base)
	// A new-style event: only EventTime, as events.k8s.io/v1 writers set.
	newStyle := &corev1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: "second", Namespace: ns},
		InvolvedObject:      corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: "legacy-0"},
		Reason:              "Unhealthy",
		Message:             "Readiness probe failed:\nconnection refused",
		Type:                corev1.EventTypeWarning,
		EventTime:           metav1.NewMicroTime(base.Add(time.Minute)),
		ReportingController: "meshproof.dev/test", ReportingInstance: "test-1", Action: "Probe",
	}
	if _, err := clientset.CoreV1().Events(ns).Create(ctx, newStyle, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	strict := map[string]any{"mtls": map[string]any{"mode": "STRICT"}}
	policy(t, "security.istio.io/v1", "PeerAuthentication", ns, "mesh-strict", ownership.Labels(run), strict)
	policy(t, "networking.istio.io/v1", "DestinationRule", ns, "service-b-mtls", ownership.Labels(run),
		map[string]any{"host": "service-b", "trafficPolicy": map[string]any{"tls": map[string]any{"mode": "ISTIO_MUTUAL"}}})
	policy(t, "security.istio.io/v1", "PeerAuthentication", ns, "other-run", ownership.Labels(otherRun), strict)
	policy(t, "security.istio.io/v1", "PeerAuthentication", ns, "users-own", map[string]string{"team": "x"}, strict)

	execer := &scriptedExecer{outputs: map[string]string{ns + "/service-a-0": configDump()}}
	var nodeDirs []string
	exportNodeLogs := func(dir string) error {
		nodeDirs = append(nodeDirs, dir)
		return writeFile(dir, filepath.Join("kind-control-plane", "kubelet.log"), []byte("kubelet started\n"))
	}

	dir := filepath.Join(t.TempDir(), "diagnostics", "strict", "expect-mtls")
	c := New(env.Client, clientset, WithRunID(run), WithNamespaces(ns), WithIstioNamespace(istioNS),
		WithExecer(execer), WithNodeLogs(exportNodeLogs))
	sum, err := c.Collect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}

	// Logs: no kubelet, so every container of every collected pod must be
	// listed as not collected, each with its own error, and nothing else.
	wantFailed := []string{
		istioNS + "/istiod-0/discovery.log",
		ns + "/legacy-0/app.log",
		ns + "/service-a-0/app.log",
		ns + "/service-a-0/istio-init.log",
		ns + "/service-a-0/istio-proxy.log",
		ns + "/service-a-0/istio-proxy.previous.log",
	}
	var failed []string
	for _, f := range sum.Failed {
		failed = append(failed, f.Path)
		if f.Err == nil || f.Err.Error() == "" {
			t.Errorf("failure %s has no error", f.Path)
		}
	}
	slices.Sort(failed)
	slices.Sort(wantFailed)
	if !slices.Equal(failed, wantFailed) {
		t.Errorf("not collected:\n%s\nwant:\n%s", strings.Join(failed, "\n"), strings.Join(wantFailed, "\n"))
	}
	for _, p := range wantFailed {
		if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists although its log could not be fetched", p)
		}
	}

	wantCollected := []string{
		istioNS + "-events.txt",
		istioNS + "-pods.yaml",
		ns + "-events.txt",
		ns + "-pods.yaml",
		ns + "/pending-0/app.log",
		ns + "/service-a-0/config_dump.json",
		"nodes",
		"policies.yaml",
	}
	var collected []string
	for _, it := range sum.Collected {
		collected = append(collected, it.Path)
	}
	slices.Sort(collected)
	slices.Sort(wantCollected)
	if !slices.Equal(collected, wantCollected) {
		t.Errorf("collected:\n%s\nwant:\n%s", strings.Join(collected, "\n"), strings.Join(wantCollected, "\n"))
	}
	if len(sum.Notes) != 0 {
		t.Errorf("unexpected notes: %v", sum.Notes)
	}

	// The index lists both, with each failure's error.
	index := read(t, dir, IndexFile)
	t.Logf("index.txt:\n%s", index)
	for _, p := range wantCollected {
		if !strings.Contains(index, "  "+p+"  (") {
			t.Errorf("index does not list collected %s:\n%s", p, index)
		}
	}
	notCollected := index[strings.Index(index, "NOT COLLECTED"):]
	for _, f := range sum.Failed {
		if !strings.Contains(notCollected, "  "+f.Path+"  (") {
			t.Errorf("index does not list %s as not collected:\n%s", f.Path, index)
		}
		if !strings.Contains(notCollected, f.Err.Error()) {
			t.Errorf("index does not give the error of %s (%v)", f.Path, f.Err)
		}
		// The API server could not find the node to reach its kubelet.
		if !strings.Contains(f.Err.Error(), absentNode) {
			t.Errorf("%s failed with %v, want the missing node named", f.Path, f.Err)
		}
	}
	if got := read(t, dir, ns, "pending-0", "app.log"); got != "" {
		t.Errorf("log of the unscheduled pod = %q, want empty", got)
	}
	if !strings.Contains(index, "log of the previous instance (restarted 2 times) of container istio-proxy") ||
		!strings.Contains(index, "log of init container istio-init") {
		t.Errorf("index does not describe the previous and init container logs:\n%s", index)
	}
	if strings.Contains(index, "gateway-0") {
		t.Errorf("a pod of the Istio namespace that is not istiod was collected:\n%s", index)
	}

	// Events: oldest first, whichever API wrote them.
	events := strings.Split(strings.TrimSpace(read(t, dir, ns+"-events.txt")), "\n")
	if len(events) != 3 {
		t.Fatalf("%d event lines, want 3:\n%s", len(events), strings.Join(events, "\n"))
	}
	for i, want := range []string{
		"2026-11-26T23:00:00.000000Z  Warning  Pulled  Pod/service-a-0 (spec.containers{istio-proxy})  x3  kubelet  Container image pulled",
		"2026-11-26T23:01:00.000000Z  Warning  Unhealthy  Pod/legacy-0  x1  meshproof.dev/test  Readiness probe failed: connection refused",
		"2026-11-26T23:02:00.000000Z  Warning  BackOff  Pod/service-a-0 (spec.containers{istio-proxy})  x3  kubelet  Back-off restarting failed container istio-proxy",
	} {
		if events[i] != want {
			t.Errorf("event line %d:\n got %q\nwant %q", i, events[i], want)
		}
	}
	if got := read(t, dir, istioNS+"-events.txt"); got != "" {
		t.Errorf("events of the Istio namespace: %q, want none", got)
	}

	// Policies: exactly this run's, as the API server holds them.
	var names []string
	for _, doc := range strings.Split(read(t, dir, PoliciesFile), "---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("policies.yaml document does not parse: %v\n%s", err, doc)
		}
		names = append(names, u.GetKind()+"/"+u.GetName())
		if u.GetLabels()[ownership.RunIDLabel] != run {
			t.Errorf("%s/%s has run id %q", u.GetKind(), u.GetName(), u.GetLabels()[ownership.RunIDLabel])
		}
		if len(u.GetManagedFields()) != 0 {
			t.Errorf("%s keeps its managed fields", u.GetName())
		}
		if u.GetUID() == "" {
			t.Errorf("%s was not read from the API server", u.GetName())
		}
	}
	if want := []string{"PeerAuthentication/mesh-strict", "DestinationRule/service-b-mtls"}; !slices.Equal(names, want) {
		t.Errorf("policies.yaml holds %v, want %v", names, want)
	}
	if mode, _, _ := unstructuredString(t, read(t, dir, PoliciesFile), "mesh-strict", "spec", "mtls", "mode"); mode != "STRICT" {
		t.Errorf("mesh-strict's mode in policies.yaml = %q", mode)
	}

	// Pods: the fixture namespace's pods and only istiod in Istio's.
	if pods := read(t, dir, ns+"-pods.yaml"); !strings.Contains(pods, "name: service-a-0") || !strings.Contains(pods, "name: legacy-0") ||
		!strings.Contains(pods, "name: pending-0") {
		t.Errorf("%s-pods.yaml lacks a pod:\n%s", ns, pods)
	}
	if pods := read(t, dir, istioNS+"-pods.yaml"); !strings.Contains(pods, "name: istiod-0") || strings.Contains(pods, "gateway-0") {
		t.Errorf("%s-pods.yaml should hold istiod only:\n%s", istioNS, pods)
	}

	// Config dump: only the in-mesh fixture pod, through istio-proxy, key gone.
	if len(execer.calls) != 1 {
		t.Fatalf("%d execs, want 1 (the in-mesh pod only): %v", len(execer.calls), execer.calls)
	}
	call := execer.calls[0]
	if call.Pod.String() != ns+"/service-a-0" || call.Container != probe.ProxyContainer || !slices.Equal(call.Argv, ConfigDumpCommand) {
		t.Errorf("exec %s, want the config dump in %s/service-a-0's istio-proxy", call, ns)
	}
	dump := read(t, dir, ns, "service-a-0", ConfigDumpFile)
	if strings.Contains(dump, "PRIVATE KEY") || strings.Contains(dump, "fakefake") {
		t.Errorf("the private key survived in the written config dump:\n%s", dump)
	}
	if !strings.Contains(dump, Redacted) || !strings.Contains(dump, certPEM) || !strings.Contains(dump, `"[redacted]"`) {
		t.Errorf("the config dump lost more than the key:\n%s", dump)
	}

	// Node logs went into nodes/.
	if !slices.Equal(nodeDirs, []string{filepath.Join(dir, NodeLogsDir)}) {
		t.Errorf("node logs exported into %v", nodeDirs)
	}
	if got := read(t, dir, NodeLogsDir, "kind-control-plane", "kubelet.log"); got != "kubelet started\n" {
		t.Errorf("node log = %q", got)
	}

	// Modes: readable by whoever collects CI artifacts; nothing secret.
	for _, p := range []string{IndexFile, PoliciesFile, ns + "-events.txt", filepath.Join(ns, "service-a-0", ConfigDumpFile)} {
		if m := mode(t, filepath.Join(dir, p)); m != 0o644 {
			t.Errorf("%s has mode %v, want 0644", p, m)
		}
	}
	for _, p := range []string{"", ns, filepath.Join(ns, "service-a-0")} {
		if m := mode(t, filepath.Join(dir, p)); m != 0o755 {
			t.Errorf("folder %q has mode %v, want 0755", p, m)
		}
	}
}

// unstructuredString finds the document naming name in a multi-document
// YAML file and returns a nested string field of it.
func unstructuredString(t *testing.T, docs, name string, fields ...string) (string, bool, error) {
	t.Helper()
	for _, doc := range strings.Split(docs, "---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil || obj == nil {
			continue
		}
		u := unstructured.Unstructured{Object: obj}
		if u.GetName() == name {
			return unstructured.NestedString(obj, fields...)
		}
	}
	return "", false, nil
}

func read(t *testing.T, parts ...string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestNodeLogsUnsupportedIsANoteAndOtherErrorsAFailure(t *testing.T) {
	ctx := t.Context()
	ns := env.NewNamespace(t, "diag-nodes")
	unsupported := func(string) error {
		return fmt.Errorf("existing cluster (context %q): node logs cannot be exported: %w", "prod", errors.ErrUnsupported)
	}
	sum, err := New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns), WithNodeLogs(unsupported)).Collect(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Failed) != 0 {
		t.Errorf("an unsupported node-log export counted as a failure: %v", sum.Failed)
	}
	if len(sum.Notes) != 1 || !strings.Contains(sum.Notes[0], "node logs") || !strings.Contains(sum.Notes[0], "cannot be exported") {
		t.Errorf("notes = %v, want the unsupported node logs", sum.Notes)
	}

	dir := t.TempDir()
	broken := func(string) error { return errors.New("docker exec kind-control-plane: no such container") }
	sum, err = New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns), WithNodeLogs(broken)).Collect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Failed) != 1 || sum.Failed[0].Path != NodeLogsDir || !strings.Contains(sum.Failed[0].Err.Error(), "no such container") {
		t.Errorf("failures = %v, want the node-log export's", sum.Failed)
	}
	// The rest was still collected.
	if !strings.Contains(read(t, dir, IndexFile), ns+"-events.txt") {
		t.Error("events were not collected next to the failing node-log export")
	}
}

// A hung exec uses up its own item timeout, not the collection's budget:
// everything else is collected and the hang is listed.
func TestHungExecIsBoundedPerItem(t *testing.T) {
	ctx := t.Context()
	ns := env.NewNamespace(t, "diag-hang")
	pod(t, ns, "service-b-0", nil, nil, []string{"app", probe.ProxyContainer}, nil)
	execer := &scriptedExecer{block: true}
	dir := t.TempDir()
	sum, err := New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns), WithExecer(execer),
		WithItemTimeout(200*time.Millisecond)).Collect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var dumpErr error
	for _, f := range sum.Failed {
		if f.Path == ns+"/service-b-0/"+ConfigDumpFile {
			dumpErr = f.Err
		}
	}
	if !errors.Is(dumpErr, context.DeadlineExceeded) {
		t.Errorf("config dump failure = %v, want the item timeout", dumpErr)
	}
	var collected []string
	for _, it := range sum.Collected {
		collected = append(collected, it.Path)
	}
	if !slices.Contains(collected, ns+"-events.txt") || !slices.Contains(collected, ns+"-pods.yaml") {
		t.Errorf("collected %v next to the hung exec, want events and pods", collected)
	}
}

// A collection whose context has ended still writes its index, listing
// every item as not collected, and returns at once.
func TestEndedContextStillWritesTheIndex(t *testing.T) {
	ns := env.NewNamespace(t, "diag-ended")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	exported := false
	dir := t.TempDir()
	sum, err := New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns),
		WithNodeLogs(func(string) error { exported = true; return nil })).Collect(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if exported {
		t.Error("the node-log export started after the context ended")
	}
	if len(sum.Collected) != 0 {
		t.Errorf("collected %v with an ended context", sum.Collected)
	}
	// Policies (both kinds), events, pods and node logs.
	if len(sum.Failed) != 5 {
		t.Errorf("%d failures, want 5: %v", len(sum.Failed), sum.Failed)
	}
	for _, f := range sum.Failed {
		if !errors.Is(f.Err, context.Canceled) && !strings.Contains(f.Err.Error(), "context canceled") {
			t.Errorf("%s failed with %v, want the context's end", f.Path, f.Err)
		}
	}
	index := read(t, dir, IndexFile)
	if !strings.Contains(index, "0 collected, 5 could not be collected") {
		t.Errorf("index:\n%s", index)
	}
}

func TestCollectWithoutExecerNotesTheConfigDumps(t *testing.T) {
	ctx := t.Context()
	ns := env.NewNamespace(t, "diag-noexec")
	pod(t, ns, "service-a-0", nil, nil, []string{"app", probe.ProxyContainer}, nil)
	sum, err := New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns)).Collect(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Notes) != 1 || !strings.Contains(sum.Notes[0], "WithExecer") {
		t.Errorf("notes = %v, want the config dump skipped for lack of an exec transport", sum.Notes)
	}
}

func TestCollectFailsWhenTheFolderCannotBeMade(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(env.Client, clientset).Collect(t.Context(), filepath.Join(file, "diagnostics"))
	if err == nil || !strings.Contains(err.Error(), "create") {
		t.Errorf("Collect into a path under a file = %v, want an error", err)
	}
}

// A pod on a node kwok plays (a local cluster's) has no container and so no
// log: that is a note, not a failed item.
func TestPodsOnKwokNodesHaveNoLogsToCollect(t *testing.T) {
	ctx := t.Context()
	ns := env.NewNamespace(t, "diag-kwok")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "diag-kwok-node", Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"}}}
	if err := env.Client.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), node) })
	podOn(t, node.Name, ns, "service-a-0", nil, nil, []string{"app"}, nil)
	pod(t, ns, "service-b-0", nil, nil, []string{"app"}, nil)
	sum, err := New(env.Client, clientset, WithNamespaces(ns), WithIstioNamespace(ns)).Collect(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Notes) != 1 || !strings.Contains(sum.Notes[0], "service-a-0") || !strings.Contains(sum.Notes[0], "kwok") {
		t.Errorf("notes = %v, want one saying service-a-0's node runs no container", sum.Notes)
	}
	for _, f := range sum.Failed {
		if strings.Contains(f.Path, "service-a-0") {
			t.Errorf("a log of the pod on the kwok node was tried: %+v", f)
		}
	}
	var tried bool
	for _, f := range sum.Failed {
		tried = tried || strings.Contains(f.Path, "service-b-0")
	}
	if !tried {
		t.Errorf("the pod on a real (absent) node was not tried: failed %+v", sum.Failed)
	}
}
