package scenario

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad holds the loader to its promise: any input gives a Suite or a
// list of positioned errors, never a panic or a hang. It calls the loader
// below Load's recover, so that a panic fails the fuzzer instead of being
// turned into an error. Seeds: testdata/fuzz/FuzzLoad plus the files below.
func FuzzLoad(f *testing.F) {
	if data, err := os.ReadFile(filepath.Join("..", "..", "scenarios.yaml")); err == nil {
		f.Add(data)
	}
	f.Add([]byte(header + "scenarios:\n- name: s\n  matrix: {m: [STRICT, X]}\n  steps:\n  - {mtls: {peerAuthentications: [{scope: namespace, mode: \"${m}\"}]}}\n"))
	f.Add([]byte(header + "scenarios:\n- name: s\n  steps:\n  - mtls: {peerAuthentications: [&a {scope: namespace, mode: STRICT}, {<<: *a, scope: mesh}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := load("fuzz.yaml", data)
		if err == nil {
			if s == nil {
				t.Fatal("nil suite without an error")
			}
			return
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("error is not a non-empty ErrorList: %v", err)
		}
		for _, e := range list {
			if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 || e.Pos.Column < 1 {
				t.Fatalf("error without a position: %q", e.Error())
			}
		}
	})
}
