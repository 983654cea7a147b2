package run

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
