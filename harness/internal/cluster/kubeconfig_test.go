package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode().Perm()
}

func TestWriteKubeconfigNewFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "nested")
	path, err := writeKubeconfig(dir, "mp.kubeconfig", []byte("apiVersion: v1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "mp.kubeconfig") {
		t.Errorf("path = %s", path)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("kubeconfig mode = %04o, want 0600", m)
	}
	if m := fileMode(t, dir); m != 0o700 {
		t.Errorf("created directory mode = %04o, want 0700", m)
	}
	got, _ := os.ReadFile(path)
	if string(got) != "apiVersion: v1\n" {
		t.Errorf("content = %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the kubeconfig (no temporary file left)", len(entries))
	}
}

func TestWriteKubeconfigReplacesLooseFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mp.kubeconfig")
	if err := os.WriteFile(path, []byte("old content that is longer than the new one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil { // umask-proof
		t.Fatal(err)
	}
	if _, err := writeKubeconfig(dir, "mp.kubeconfig", []byte("new")); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("kubeconfig mode = %04o, want 0600", m)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Errorf("content = %q, want %q", got, "new")
	}
}

func TestEnsureKubeconfigModeFixesLooseFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := ensureKubeconfigMode(path); err != nil {
		t.Fatal(err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("mode = %04o, want 0600", m)
	}
	if err := ensureKubeconfigMode(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("ensureKubeconfigMode on a missing file succeeded")
	}
}
