package cluster

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/e2e-framework/support"

	"github.com/meshproof/meshproof/harness/internal/image"
)

var _ support.E2EClusterProviderWithImageLoader = (*Cluster)(nil)

// LoadImageArchive checks that archive is an image archive a kind node
// would load (a docker-load tarball with a manifest, a config and its
// layers) and keeps its tags. No container runs on kwok's nodes; the one
// program that does run from it is the echo binary (image.BinaryPath) of
// proxyless gRPC pods (see Proxyless), which is extracted from the archive's
// layers so that what runs is the program the run delivered.
func (c *Cluster) LoadImageArchive(_ context.Context, archive string, _ ...string) error {
	if c.env == nil {
		return errors.New("local cluster: not created")
	}
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(archive) })
	if err != nil {
		return fmt.Errorf("local cluster %s: %s is no image archive: %w", c.name, archive, err)
	}
	if len(manifest) != 1 {
		return fmt.Errorf("local cluster %s: %s holds %d images, want one", c.name, archive, len(manifest))
	}
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		return fmt.Errorf("local cluster %s: reading %s: %w", c.name, archive, err)
	}
	if _, err := img.Layers(); err != nil {
		return fmt.Errorf("local cluster %s: the layers of %s: %w", c.name, archive, err)
	}
	binary, err := c.extractEcho(img)
	if err != nil {
		return fmt.Errorf("local cluster %s: %s: %w", c.name, archive, err)
	}
	c.mu.Lock()
	c.images = append(c.images, manifest[0].RepoTags...)
	if binary != "" {
		for _, tag := range manifest[0].RepoTags {
			c.echoBinaries[tag] = binary
		}
	}
	c.mu.Unlock()
	c.logger.Info("image archive checked (kwok's nodes run no containers but proxyless gRPC pods' echo)", "cluster", c.name, "tags", manifest[0].RepoTags, "echo", binary)
	return nil
}

// extractEcho writes the file at image.BinaryPath of img's filesystem (its
// layers flattened, as a container runtime would) to the cluster's
// directory and returns its path; "" when the image has no such file.
func (c *Cluster) extractEcho(img v1.Image) (string, error) {
	digest, err := img.Digest()
	if err != nil {
		return "", err
	}
	fs := mutate.Extract(img)
	defer fs.Close()
	want := strings.TrimPrefix(image.BinaryPath, "/")
	tr := tar.NewReader(fs)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("reading the image's files: %w", err)
		}
		if path.Clean(strings.TrimPrefix(h.Name, "/")) != want || h.Typeflag != tar.TypeReg {
			continue
		}
		dir := filepath.Join(c.dir, "images", digest.Hex[:12])
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		out := filepath.Join(dir, path.Base(want))
		f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("extracting %s: %w", image.BinaryPath, err)
		}
		return out, nil
	}
}

// echoBinary is the local copy of the echo binary of the loaded image ref
// (a pod's container image), else the one WithEchoBinary gave.
func (c *Cluster) echoBinary(ref string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.echoBinaries[ref]; b != "" {
		return b, nil
	}
	if c.echoBinaryPath != "" {
		return c.echoBinaryPath, nil
	}
	return "", fmt.Errorf("no loaded image archive %s holds %s (and no WithEchoBinary)", ref, image.BinaryPath)
}

// LoadImage has no meaning here: images come as archives.
func (c *Cluster) LoadImage(context.Context, string, ...string) error {
	return errors.New("local cluster: images are loaded as archives (LoadImageArchive)")
}

// Images are the tags of the image archives loaded so far.
func (c *Cluster) Images() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.images...)
}
