// Package image builds the echo container image that meshproof deploys:
// the echo program compiled from the source embedded in the meshproof
// binary, alone in one layer on an empty base, written as a `docker load` /
// `ctr import` tarball that kind can load onto its nodes. For clusters
// whose nodes pull from a registry, Deliver pushes it (or checks an image
// the user published) and returns the digest reference pods must use.
//
// The build is byte-reproducible. Same source and Go version give the same
// binary (no build ID, no VCS stamp, trimmed paths) and the same image
// digest (fixed file times and ownership in the layer, a fixed creation
// time, one deterministic gzip stream). Results are cached on disk, keyed by
// the source, the Go version and the architecture, so unchanged inputs
// reuse the previous tarball without running `go build`.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/meshproof/meshproof"
	"github.com/meshproof/meshproof/fixtures"
)

const (
	// Repository is where the echo image is tagged. The .local registry
	// does not exist: the image only ever reaches nodes by archive loading,
	// and imagePullPolicy IfNotPresent keeps kubelet from trying to pull.
	Repository = "meshproof.local/echo"

	// BinaryPath is the echo binary's path inside the image.
	BinaryPath = "/echo"

	// User is the image's (and the pods') non-root user and group. 65532 is
	// the conventional "nonroot" id of distroless images.
	User = "65532:65532"

	// cacheFormat changes whenever the image layout or the build flags
	// change, so that old cache entries are not mistaken for current ones.
	cacheFormat = "meshproof-echo-image/1"

	tarballName  = "image.tar"
	metadataName = "result.json"
)

// epoch is the fixed time stamped on every file and on the image config,
// so that nothing in the image depends on when it was built.
var epoch = time.Unix(0, 0).UTC()

// Result describes a built (or reused) echo image.
type Result struct {
	// Ref is the tag, Repository:<first 12 hex digits of BinarySHA256>.
	Ref string `json:"ref"`
	// Digest is the image manifest digest (sha256:...).
	Digest string `json:"digest"`
	// ConfigDigest is the config blob digest, which docker and containerd
	// show as the image ID.
	ConfigDigest string `json:"configDigest"`
	// TarballPath is the docker-load compatible archive, inside the cache
	// directory. Callers must not modify or delete it.
	TarballPath string `json:"-"`
	// BinarySHA256 is the hex SHA-256 of the echo binary.
	BinarySHA256 string `json:"binarySHA256"`
	Arch         string `json:"arch"`
	GoVersion    string `json:"goVersion"`
	// Reused reports that the cache held the image and nothing was built.
	Reused bool `json:"-"`
}

type options struct {
	arch     string
	cacheDir string
	goCmd    string
	force    bool
	source   fs.FS
}

// Option configures Build.
type Option func(*options)

// WithArch sets the target architecture, amd64 or arm64; the default is the
// host's, which is what kind nodes (containers on the host) run.
func WithArch(arch string) Option { return func(o *options) { o.arch = arch } }

// WithCacheDir sets where built images are kept. The default is
// $XDG_CACHE_HOME/meshproof/image, else $HOME/.cache/meshproof/image.
func WithCacheDir(dir string) Option { return func(o *options) { o.cacheDir = dir } }

// WithGoCommand sets the go command used to build (default: "go" on PATH).
func WithGoCommand(goCmd string) Option { return func(o *options) { o.goCmd = goCmd } }

// WithForceRebuild builds even when the cache holds a matching image, and
// replaces the cache entry.
func WithForceRebuild() Option { return func(o *options) { o.force = true } }

// supportedArch lists the architectures kind publishes node images for.
var supportedArch = map[string]bool{"amd64": true, "arm64": true}

// DefaultCacheDir returns the default cache directory.
func DefaultCacheDir() (string, error) {
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "meshproof", "image"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: neither XDG_CACHE_HOME nor HOME is set (%w); pass image.WithCacheDir", err)
	}
	return filepath.Join(home, ".cache", "meshproof", "image"), nil
}

// Build returns the echo image for the requested architecture, building it
// unless the cache already holds one for the same source, Go version and
// architecture.
func Build(ctx context.Context, opts ...Option) (*Result, error) {
	o := options{arch: runtime.GOARCH, goCmd: "go", source: fixtures.EchoSource}
	for _, opt := range opts {
		opt(&o)
	}
	if !supportedArch[o.arch] {
		return nil, fmt.Errorf("unsupported architecture %q for the echo image: want amd64 or arm64", o.arch)
	}
	if o.cacheDir == "" {
		dir, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		o.cacheDir = dir
	}
	if err := os.MkdirAll(o.cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create image cache directory: %w", err)
	}

	files, err := sourceFiles(o.source)
	if err != nil {
		return nil, err
	}
	// The module's own go.mod and go.sum pin the echo program's
	// dependencies (grpc-go for the gRPC echo) to the versions meshproof
	// was built with; they are part of what the image depends on.
	files = append(moduleFiles(), files...)
	goVersion, err := goVersion(ctx, o.goCmd, o.cacheDir)
	if err != nil {
		return nil, err
	}
	key := cacheKey(files, goVersion, o.arch)
	entry := filepath.Join(o.cacheDir, o.arch+"-"+key[:24])

	if !o.force {
		if res, err := loadEntry(entry); err == nil {
			res.Reused = true
			return res, nil
		}
		// Any problem with the entry (missing, partial, corrupt) means
		// build afresh; the new entry replaces it.
	}

	staging, err := os.MkdirTemp(o.cacheDir, ".build-")
	if err != nil {
		return nil, fmt.Errorf("create build directory in image cache: %w", err)
	}
	defer os.RemoveAll(staging)

	binary, err := compile(ctx, o.goCmd, files, o.arch, staging)
	if err != nil {
		return nil, err
	}
	res, err := writeImage(binary, o.arch, goVersion, filepath.Join(staging, "out"))
	if err != nil {
		return nil, err
	}
	if err := commitEntry(filepath.Join(staging, "out"), entry); err != nil {
		return nil, err
	}
	res.TarballPath = filepath.Join(entry, tarballName)
	return res, nil
}

// sourceFile is one file of the echo program, path relative to the
// fixtures directory (e.g. "echo/echoapi/types.go").
type sourceFile struct {
	path string
	data []byte
}

// sourceFiles reads the files a build needs from the embedded source:
// everything under echo/ except tests and testdata, sorted by path.
func sourceFiles(src fs.FS) ([]sourceFile, error) {
	var files []sourceFile
	err := fs.WalkDir(src, fixtures.EchoDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := fs.ReadFile(src, p)
		if err != nil {
			return err
		}
		files = append(files, sourceFile{path: p, data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded echo source: %w", err)
	}
	if len(files) == 0 {
		return nil, errors.New("embedded echo source is empty; the meshproof binary was built without fixtures/echo")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	return files, nil
}

// cacheKey hashes everything the image depends on. Lengths are written
// before contents so that no two different inputs hash alike.
func cacheKey(files []sourceFile, goVersion, arch string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", cacheFormat, goVersion, arch, buildFlags())
	for _, f := range files {
		fmt.Fprintf(h, "%d:%s\n%d:", len(f.path), f.path, len(f.data))
		h.Write(f.data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func buildFlags() string {
	return strings.Join([]string{"-trimpath", "-buildvcs=false", "-ldflags=-buildid="}, " ")
}

// buildEnv pins every setting that changes the output binary, so the
// user's environment (GOFLAGS=-race, GOAMD64=v3, a go.work, ...) cannot make
// the image differ from the cache key's promise.
func buildEnv(arch string) []string {
	pinned := map[string]string{
		"CGO_ENABLED":  "0",
		"GOOS":         "linux",
		"GOARCH":       arch,
		"GOFLAGS":      "",
		"GOWORK":       "off",
		"GO111MODULE":  "on",
		"GOAMD64":      "v1",
		"GOARM64":      "v8.0",
		"GOEXPERIMENT": "",
		// local: build with the go command found, never download another
		// toolchain; the cache key is this toolchain's version.
		"GOTOOLCHAIN": "local",
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := pinned[k]; !ok {
			env = append(env, kv)
		}
	}
	for k, v := range pinned {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

func goVersion(ctx context.Context, goCmd, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, goCmd, "env", "GOVERSION")
	// Outside any module or workspace, so that the caller's working
	// directory cannot influence the answer.
	cmd.Dir = dir
	cmd.Env = buildEnv(runtime.GOARCH)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return "", fmt.Errorf("find the Go version with %q (the echo image is compiled with the go command; install Go 1.26+ or pass image.WithGoCommand): %w %s", goCmd+" env GOVERSION", err, bytes.TrimSpace(stderr))
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("%s env GOVERSION printed nothing", goCmd)
	}
	return v, nil
}

// moduleFiles are meshproof's go.mod and go.sum, which the echo build uses
// as its own: the module path of the echo source's imports, and exactly
// the dependency versions (and checksums) meshproof was built with. Modules
// missing from the Go module cache are downloaded by the go command.
func moduleFiles() []sourceFile {
	return []sourceFile{{path: moduleFilePrefix + "go.mod", data: meshproof.GoMod}, {path: moduleFilePrefix + "go.sum", data: meshproof.GoSum}}
}

// moduleFilePrefix marks the module files among the source files; it
// cannot clash with the paths under fixtures.EchoDir.
const moduleFilePrefix = "module:"

// compile writes the module files and the source into workDir and builds
// the echo binary, returning its bytes.
func compile(ctx context.Context, goCmd string, files []sourceFile, arch, workDir string) ([]byte, error) {
	modDir := filepath.Join(workDir, "src")
	for _, f := range files {
		p := filepath.Join(modDir, "fixtures", filepath.FromSlash(f.path))
		if name, ok := strings.CutPrefix(f.path, moduleFilePrefix); ok {
			p = filepath.Join(modDir, name)
		}
		if err := writeFile(p, f.data); err != nil {
			return nil, err
		}
	}
	out := filepath.Join(workDir, "echo")
	args := append([]string{"build"}, strings.Fields(buildFlags())...)
	args = append(args, "-o", out, "./"+path.Join("fixtures", fixtures.EchoDir))
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = modDir
	cmd.Env = buildEnv(arch)
	cmd.WaitDelay = 10 * time.Second
	if output, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("compile the echo program for linux/%s: %w\n%s", arch, err, output)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("read built echo binary: %w", err)
	}
	return b, nil
}

func writeFile(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// layerTar returns the single layer: the binary at /echo, mode 0555, owned
// by root. Root ownership with no write bit means the non-root user the
// container runs as can execute the binary but cannot replace or chmod it.
func layerTar(binary []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     strings.TrimPrefix(BinaryPath, "/"),
		Mode:     0o555,
		Uid:      0,
		Gid:      0,
		Uname:    "root",
		Gname:    "root",
		Size:     int64(len(binary)),
		ModTime:  epoch,
		Format:   tar.FormatUSTAR,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeImage assembles the image around binary and writes the tarball and
// the cache metadata into dir.
func writeImage(binary []byte, arch, goVersion, dir string) (*Result, error) {
	layerBytes, err := layerTar(binary)
	if err != nil {
		return nil, fmt.Errorf("write image layer: %w", err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("create image layer: %w", err)
	}

	base, err := empty.Image.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := base.DeepCopy()
	cfg.Created = v1.Time{Time: epoch}
	cfg.OS = "linux"
	cfg.Architecture = arch
	cfg.Config = v1.Config{
		Entrypoint: []string{BinaryPath},
		Cmd:        []string{"serve"},
		User:       User,
		WorkingDir: "/",
		ExposedPorts: map[string]struct{}{
			"8080/tcp": {},
			"9090/tcp": {},
		},
		Labels: map[string]string{
			"org.opencontainers.image.title": "meshproof echo",
		},
	}
	img, err := mutate.ConfigFile(empty.Image, cfg)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "meshproof: echo binary, built with " + goVersion},
	})
	if err != nil {
		return nil, fmt.Errorf("assemble echo image: %w", err)
	}

	sum := sha256.Sum256(binary)
	binarySHA := hex.EncodeToString(sum[:])
	tag, err := name.NewTag(Repository + ":" + binarySHA[:12])
	if err != nil {
		return nil, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("compute image digest: %w", err)
	}
	configDigest, err := img.ConfigName()
	if err != nil {
		return nil, fmt.Errorf("compute image config digest: %w", err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := tarball.WriteToFile(filepath.Join(dir, tarballName), tag, img); err != nil {
		return nil, fmt.Errorf("write image tarball: %w", err)
	}
	res := &Result{
		Ref:          tag.String(),
		Digest:       digest.String(),
		ConfigDigest: configDigest.String(),
		BinarySHA256: binarySHA,
		Arch:         arch,
		GoVersion:    goVersion,
	}
	meta, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, err
	}
	// Written last: an entry with metadata is a complete entry.
	if err := os.WriteFile(filepath.Join(dir, metadataName), meta, 0o644); err != nil {
		return nil, fmt.Errorf("write image metadata: %w", err)
	}
	return res, nil
}

// commitEntry moves a finished build into place. A concurrent build of the
// same inputs may have got there first; its result is identical, so either
// one will do.
func commitEntry(built, entry string) error {
	if err := os.RemoveAll(entry); err != nil {
		return fmt.Errorf("remove stale image cache entry: %w", err)
	}
	if err := os.Rename(built, entry); err != nil {
		if _, statErr := loadEntry(entry); statErr == nil {
			return nil
		}
		return fmt.Errorf("store image in cache: %w", err)
	}
	return nil
}

// loadEntry returns the cached result in entry if it is complete.
func loadEntry(entry string) (*Result, error) {
	meta, err := os.ReadFile(filepath.Join(entry, metadataName))
	if err != nil {
		return nil, err
	}
	var res Result
	if err := json.Unmarshal(meta, &res); err != nil {
		return nil, fmt.Errorf("corrupt image cache metadata %s: %w", entry, err)
	}
	if res.Ref == "" || res.Digest == "" || res.BinarySHA256 == "" {
		return nil, fmt.Errorf("incomplete image cache metadata in %s", entry)
	}
	res.TarballPath = filepath.Join(entry, tarballName)
	if fi, err := os.Stat(res.TarballPath); err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, fmt.Errorf("image cache entry %s has no tarball", entry)
	}
	return &res, nil
}
