package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Delivery says how an existing cluster gets the echo image, which it
// cannot load from an archive the way kind's nodes can. Make one with
// PushTo or UseRef.
type Delivery struct {
	push, ref string
	keychain  authn.Keychain
	transport http.RoundTripper
}

// DeliverOption configures Deliver.
type DeliverOption func(*Delivery)

// PushTo pushes the built image to repository (registry/path, no tag),
// tagged with the image's own tag, and deploys it by digest.
func PushTo(repository string) DeliverOption { return func(d *Delivery) { d.push = repository } }

// UseRef deploys an image the user already published, by tag or digest;
// a tag is resolved to the digest it points at now, so every pod of the
// run gets the same image.
func UseRef(ref string) DeliverOption { return func(d *Delivery) { d.ref = ref } }

// Deliver makes the echo image pullable by an existing cluster and returns
// the digest reference (repository@sha256:...) its pods must use. With
// PushTo, built is pushed; with UseRef, built is not used (it may be nil)
// and the reference is checked to exist. Failures are errors that say
// which registry refused what, and how to fix it, before any fixture is
// deployed.
func Deliver(ctx context.Context, built *Result, opts ...DeliverOption) (string, error) {
	d := Delivery{keychain: authn.DefaultKeychain, transport: remote.DefaultTransport}
	for _, o := range opts {
		o(&d)
	}
	remoteOpts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(d.keychain), remote.WithTransport(d.transport)}
	switch {
	case (d.push == "") == (d.ref == ""):
		return "", errors.New("image delivery: set exactly one of PushTo (a repository) and UseRef (a published image)")
	case d.push != "":
		return push(built, d.push, remoteOpts)
	default:
		return resolve(d.ref, remoteOpts)
	}
}

func push(built *Result, repository string, opts []remote.Option) (string, error) {
	if built == nil || built.TarballPath == "" {
		return "", errors.New("image delivery: nothing to push: the echo image was not built")
	}
	repo, err := name.NewRepository(repository)
	if err != nil {
		return "", fmt.Errorf("image delivery: %q is not a repository to push to (want registry.example.com/team/echo, no tag): %w", repository, err)
	}
	img, err := tarball.ImageFromPath(built.TarballPath, nil)
	if err != nil {
		return "", fmt.Errorf("image delivery: read the built echo image %s: %w", built.TarballPath, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", fmt.Errorf("image delivery: digest of the built echo image: %w", err)
	}
	tag := repo.Tag(tagOf(built.Ref))
	if err := remote.Write(tag, img, opts...); err != nil {
		return "", explain("push the echo image to", tag.String(), repo.RegistryStr(), err)
	}
	return repo.Digest(digest.String()).String(), nil
}

// tagOf is the tag part of a built image's Ref (Repository:<tag>).
func tagOf(ref string) string {
	if i := strings.LastIndexByte(ref, ':'); i >= 0 {
		return ref[i+1:]
	}
	return "latest"
}

func resolve(ref string, opts []remote.Option) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("image delivery: %q is not an image reference (want registry.example.com/team/echo:tag or ...@sha256:...): %w", ref, err)
	}
	desc, err := remote.Head(r, opts...)
	if err != nil {
		return "", explain("find", r.String(), r.Context().RegistryStr(), err)
	}
	if d, isDigest := r.(name.Digest); isDigest && d.DigestStr() != desc.Digest.String() {
		return "", fmt.Errorf("image delivery: registry %s answered digest %s for %s", r.Context().RegistryStr(), desc.Digest, r)
	}
	return r.Context().Digest(desc.Digest.String()).String(), nil
}

// explain turns a registry failure into an error that says what was
// refused and what to do about it.
func explain(action, ref, registry string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("image delivery: could not %s %s: registry %s wants credentials it did not get or did not accept (401 Unauthorized); log in with `docker login %s` or configure a docker credential helper for it: %w", action, ref, registry, registry, err)
		case http.StatusForbidden:
			return fmt.Errorf("image delivery: could not %s %s: registry %s denied it (403 Forbidden): the account in your docker credentials for %s may not write to this repository: %w", action, ref, registry, registry, err)
		case http.StatusNotFound:
			return fmt.Errorf("image delivery: could not %s %s: registry %s does not have it (404 Not Found): %w", action, ref, registry, err)
		}
		return fmt.Errorf("image delivery: could not %s %s: registry %s answered %d %s: %w", action, ref, registry, terr.StatusCode, http.StatusText(terr.StatusCode), err)
	}
	var nerr net.Error
	var uerr *url.Error
	if errors.As(err, &nerr) || errors.As(err, &uerr) {
		return fmt.Errorf("image delivery: could not %s %s: registry %s is unreachable from here: %w", action, ref, registry, err)
	}
	return fmt.Errorf("image delivery: could not %s %s: %w", action, ref, err)
}
