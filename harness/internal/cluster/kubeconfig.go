package cluster

import (
	"fmt"
	"os"
	"path/filepath"
)

// kubeconfigMode is the only mode a kubeconfig may have: it holds the
// cluster-admin client key.
const kubeconfigMode os.FileMode = 0o600

// writeKubeconfig writes data to dir/fileName with mode 0600 and returns the
// path. The content goes to a temporary file in the same directory that is
// renamed over the target, so a pre-existing file (perhaps 0644 from an older
// tool) is replaced, never rewritten in place with its loose mode, and a
// reader never sees a half-written file. The mode is checked afterwards
// because a surprising umask or filesystem must not leak the key silently.
func writeKubeconfig(dir, fileName string, data []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create the kubeconfig directory: %w", err)
	}
	path := filepath.Join(dir, fileName)
	tmp, err := os.CreateTemp(dir, "."+fileName+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := tmp.Chmod(kubeconfigMode); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return path, ensureKubeconfigMode(path)
}

// ensureKubeconfigMode makes sure the file at path has mode 0600, fixing it
// if needed, and fails if it cannot.
func ensureKubeconfigMode(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("check kubeconfig %s: %w", path, err)
	}
	if info.Mode().Perm() == kubeconfigMode {
		return nil
	}
	if err := os.Chmod(path, kubeconfigMode); err != nil {
		return fmt.Errorf("kubeconfig %s has mode %04o and cannot be made 0600: %w", path, info.Mode().Perm(), err)
	}
	if info, err = os.Stat(path); err != nil {
		return fmt.Errorf("check kubeconfig %s: %w", path, err)
	}
	if info.Mode().Perm() != kubeconfigMode {
		return fmt.Errorf("kubeconfig %s still has mode %04o after chmod 0600 (does the filesystem support Unix modes?)", path, info.Mode().Perm())
	}
	return nil
}
