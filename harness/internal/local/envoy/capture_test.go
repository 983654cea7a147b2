package envoy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshproof/meshproof/harness/internal/local/xds"
)

// A capture is what the real istiod served the fixtures' sidecars under
// one cell's policies, with the pods and Services the evaluator's network
// needs: written by TestCaptureFromIstiod (go test -run Capture -update)
// into testdata, read by the evaluator's unit tests.
type capture struct {
	Cell     string            `json:"cell"`
	Hosts    []capturedHost    `json:"hosts"`
	Services []capturedService `json:"services"`
	// Sidecars are the xds snapshots by workload name.
	Sidecars map[string]json.RawMessage `json:"sidecars"`
}

type capturedHost struct {
	Workload, Namespace, Pod, IP, ServiceAccount string
	Sidecar                                      bool
	// Ports are the application's container ports and what it speaks.
	Ports map[uint16]string
}

type capturedService struct {
	Name, Namespace, ClusterIP string
	Ports                      []capturedPort
}

type capturedPort struct {
	Name       string
	Port       uint16
	TargetPort uint16
	Protocol   string
}

// captureFile is where a cell's capture lives.
func captureFile(cell string) string {
	name := strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(strings.ToLower(cell))
	return filepath.Join("testdata", name+".json")
}

// loadCapture reads a cell's capture and decodes its snapshots.
func loadCapture(t *testing.T, cell string) (*capture, map[string]*xds.Snapshot) {
	t.Helper()
	b, err := os.ReadFile(captureFile(cell))
	if err != nil {
		t.Fatalf("%v (regenerate with go test ./harness/internal/local/envoy -run TestCaptureFromIstiod -update)", err)
	}
	var c capture
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	snaps := map[string]*xds.Snapshot{}
	for w, raw := range c.Sidecars {
		s, err := xds.UnmarshalSnapshot(raw)
		if err != nil {
			t.Fatalf("%s: the snapshot of %s: %v", captureFile(cell), w, err)
		}
		snaps[w] = s
	}
	return &c, snaps
}
