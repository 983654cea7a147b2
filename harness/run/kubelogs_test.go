package run

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/meshproof/meshproof/harness/report"
)

// What Kubernetes' client libraries log while a run is open goes to the run
// folder's debug log, never to klog's own output (stderr) or the progress
// lines.
func TestKubernetesClientLogsGoToTheRunLogOnly(t *testing.T) {
	var klogOut bytes.Buffer
	klog.SetOutput(&klogOut)
	defer klog.SetOutput(os.Stderr)
	r, progress := newTestRun(t, loadSuite(t, twoScenarios), &fakeProvider{})

	// What client-go does with an API server's Warning header.
	rest.WarningLogger{}.HandleWarningHeader(299, "", "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice")
	klog.InfoS("a client-go info line", "resource", "pods")
	r.log("c1").Debug("a debug record of the run")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(r.Dir(), report.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	log := string(data)
	for _, want := range []string{"v1 Endpoints is deprecated", "source=kubernetes-client", "a client-go info line", "a debug record of the run", "run started"} {
		if !strings.Contains(log, want) {
			t.Errorf("the run log lacks %q:\n%s", want, log)
		}
	}
	for name, out := range map[string]string{"klog's output": klogOut.String(), "the progress lines": progress.String()} {
		if strings.Contains(out, "deprecated") || strings.Contains(out, "client-go info") || strings.Contains(out, "debug record") {
			t.Errorf("%s show what only the run log may:\n%s", name, out)
		}
	}
	// Once the run is closed, nothing more reaches its log.
	klog.InfoS("after the run")
	after, _ := os.ReadFile(filepath.Join(r.Dir(), report.LogFile))
	if strings.Contains(string(after), "after the run") {
		t.Error("a closed run's log still receives Kubernetes' records")
	}
}

// A run's log keeps what client-go says of its progress (klog's V(2) and
// below) but never its request and response bodies (V(8)) or headers:
// Secrets, a CA's key among them, pass through those. A real request
// through client-go's REST client, with a body only the server knows.
func TestKubernetesClientBodiesStayOutOfTheRunLog(t *testing.T) {
	const secret = "bWVzaHByb29mLXRlc3QtY2Eta2V5LW1hdGVyaWFs" // base64, as Secrets carry it
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"kind":"Secret","apiVersion":"v1","metadata":{"name":"cacerts","namespace":"istio-system"},"data":{"ca-key.pem":%q}}`, secret)
	}))
	defer srv.Close()
	r, _ := newTestRun(t, loadSuite(t, twoScenarios), &fakeProvider{})
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cs.CoreV1().Secrets("istio-system").Get(t.Context(), "cacerts", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Data["ca-key.pem"]) == "" {
		t.Fatal("the stand-in API server's Secret did not arrive")
	}
	klog.Background().V(2).Info("a V(2) line of client-go's progress")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(r.Dir(), report.LogFile))
	if err != nil {
		t.Fatal(err)
	}
	log := string(data)
	if !strings.Contains(log, "a V(2) line of client-go's progress") {
		t.Errorf("the run log lacks client-go's V(2) line:\n%s", log)
	}
	for _, never := range []string{secret, "Response Body", "Request Body", "Response Headers"} {
		if strings.Contains(log, never) {
			t.Errorf("the run log holds %q:\n%s", never, log)
		}
	}
}
