package scenario

import (
	"fmt"
	"strings"
	"testing"
)

// generatedSuite writes a valid file with n scenarios of four steps each,
// every tenth one a 2x2 matrix.
func generatedSuite(n int) []byte {
	var b strings.Builder
	b.WriteString(shortCertsHeader + "scenarios:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "- name: s%d\n  labels: [generated, n%d]\n", i, i%7)
		mode := "STRICT"
		if i%10 == 0 {
			b.WriteString("  matrix: {m: [STRICT, PERMISSIVE], t: [DISABLE, ISTIO_MUTUAL]}\n")
			mode = "${m}"
		}
		fmt.Fprintf(&b, `  steps:
  - mtls:
      peerAuthentications:
      - {scope: namespace, mode: "%s"}
      - scope: workload
        workload: service-b
        mode: STRICT
        ports: [{port: 9090, mode: PERMISSIVE}]
  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
    - {from: legacy, to: service-b, port: 9090, result: plaintext}
    - {from: legacy, to: service-b, port: 8080, result: fail, reason: reset}
  - rotate: {workload: service-b, within: 2m}
  - wait: {workloads: [service-a, service-b]}
`, mode)
	}
	return []byte(b.String())
}

func TestGeneratedSuiteIsValid(t *testing.T) {
	s, err := Load("gen.yaml", generatedSuite(20))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Scenarios) != 18+2*4 {
		t.Errorf("got %d scenarios, want 26", len(s.Scenarios))
	}
}

// BenchmarkLoad1000Scenarios is what `meshproof validate` does with a
// 1,000-scenario file (target: under 200 ms per load).
func BenchmarkLoad1000Scenarios(b *testing.B) {
	data := generatedSuite(1000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Load("gen.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}
