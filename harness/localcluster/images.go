package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/e2e-framework/support"
)

var _ support.E2EClusterProviderWithImageLoader = (*Cluster)(nil)

// LoadImageArchive checks that archive is an image archive a kind node
// would load (a docker-load tarball with a manifest, a config and its
// layers) and keeps its tags. No container runs on kwok's nodes, so the
// image itself is never started: what a rehearsal proves of it is that it
// builds and loads.
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
	c.images = append(c.images, manifest[0].RepoTags...)
	c.logger.Info("image archive checked (kwok's nodes run no containers)", "cluster", c.name, "tags", c.images)
	return nil
}

// LoadImage has no meaning here: images come as archives.
func (c *Cluster) LoadImage(context.Context, string, ...string) error {
	return errors.New("local cluster: images are loaded as archives (LoadImageArchive)")
}

// Images are the tags of the image archives loaded so far.
func (c *Cluster) Images() []string { return append([]string(nil), c.images...) }
