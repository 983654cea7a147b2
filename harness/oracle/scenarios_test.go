package oracle

import (
	"path/filepath"
	"testing"

	"github.com/meshproof/meshproof/harness/scenario"
)

// Every expect row of the repository's scenarios.yaml must be what the
// oracle predicts for its step: the scenarios and the model of Istio check
// each other.
func TestDefaultScenariosAgreeWithOracle(t *testing.T) {
	assertAgreesWithOracle(t, filepath.Join("..", "..", "scenarios.yaml"))
}

// The reachability example transcribes cases of Istio's own reachability
// test; the oracle must predict them as Istio's test expects.
func TestReachabilityExampleAgreesWithOracle(t *testing.T) {
	assertAgreesWithOracle(t, filepath.Join("..", "..", "examples", "istio-reachability.yaml"))
}

func assertAgreesWithOracle(t *testing.T, file string) {
	t.Helper()
	s, err := scenario.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rows := 0
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j, st := range sc.Steps {
			if st.Expect == nil {
				continue
			}
			ps, err := Predict(s, sc, j)
			if err != nil {
				t.Errorf("%s step %d: %v", sc.Name, j+1, err)
				continue
			}
			for _, x := range st.Expect.Table {
				rows++
				p, ok := Find(ps, x.From, x.To, x.Port)
				if !ok {
					t.Errorf("%s: %s step %d: no prediction for %s -> %s:%d", x.Source.Position, sc.Name, j+1, x.From, x.To, x.Port)
					continue
				}
				if !p.Agrees(x) {
					t.Errorf("%s: %s step %d: expects %s -> %s:%d %s %q, the oracle predicts %s %q\n  because %s",
						x.Source.Position, sc.Name, j+1, x.From, x.To, x.Port, x.Result, x.Reason, p.Result, p.Reason, p.Why)
				}
			}
		}
	}
	if rows == 0 {
		t.Fatalf("%s has no expect rows to check", file)
	}
	t.Logf("%d expect rows agree with the oracle", rows)
}
