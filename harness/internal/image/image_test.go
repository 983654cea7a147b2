package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/meshproof/meshproof/fixtures"
	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
)

// goWrapper returns a go command that records every invocation in a log
// file before running the real go, so tests can tell whether a build ran.
func goWrapper(t *testing.T) (goCmd string, calls func() []string) {
	t.Helper()
	realGo, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the image tests need the go command: %v", err)
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "calls.log")
	script := "#!/bin/sh\necho \"$*\" >> '" + log + "'\nexec '" + realGo + "' \"$@\"\n"
	goCmd = filepath.Join(dir, "go")
	if err := os.WriteFile(goCmd, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return goCmd, func() []string {
		b, err := os.ReadFile(log)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

func countBuilds(calls []string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, "build ") {
			n++
		}
	}
	return n
}

// buildTimeout bounds each Build: it runs the go command, which a broken
// toolchain or a stuck module download could hang.
const buildTimeout = 5 * time.Minute

// The first build is shared by the tests below: compiling is the slow part
// and the tests only read its output.
var (
	sharedOnce   sync.Once
	sharedResult *Result
	sharedErr    error
	sharedCalls  []string
	sharedCache  string
)

func sharedBuild(t *testing.T) *Result {
	t.Helper()
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Fatalf("host architecture %s cannot run the echo image", runtime.GOARCH)
	}
	sharedOnce.Do(func() {
		goCmd, calls := goWrapper(t)
		dir, err := os.MkdirTemp("", "meshproof-image-test-")
		if err != nil {
			sharedErr = err
			return
		}
		sharedCache = dir
		ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
		defer cancel()
		sharedResult, sharedErr = Build(ctx, WithArch(runtime.GOARCH), WithCacheDir(dir), WithGoCommand(goCmd))
		sharedCalls = calls()
	})
	if sharedErr != nil {
		t.Fatalf("Build: %v", sharedErr)
	}
	return sharedResult
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedCache != "" {
		os.RemoveAll(sharedCache)
	}
	os.Exit(code)
}

func TestBuildIsCachedAndReproducible(t *testing.T) {
	first := sharedBuild(t)
	if first.Reused {
		t.Errorf("first build into an empty cache reported Reused")
	}
	if countBuilds(sharedCalls) != 1 {
		t.Errorf("first build ran go build %d times: %q", countBuilds(sharedCalls), sharedCalls)
	}

	// Same cache: reused, and no go build runs.
	goCmd, calls := goWrapper(t)
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	second, err := Build(ctx, WithArch(runtime.GOARCH), WithCacheDir(sharedCache), WithGoCommand(goCmd))
	if err != nil {
		t.Fatalf("second Build: %v", err)
	}
	if !second.Reused {
		t.Errorf("second build with unchanged inputs was not reused")
	}
	if n := countBuilds(calls()); n != 0 {
		t.Errorf("cache hit still ran go build %d times: %q", n, calls())
	}
	if second.Digest != first.Digest || second.Ref != first.Ref || second.TarballPath != first.TarballPath {
		t.Errorf("reused result %+v differs from first %+v", second, first)
	}

	// Forced rebuild in a fresh cache: go build runs again (in a different
	// directory) and yields the same bytes.
	goCmd, calls = goWrapper(t)
	ctx, cancel = context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	third, err := Build(ctx, WithArch(runtime.GOARCH), WithCacheDir(t.TempDir()), WithGoCommand(goCmd), WithForceRebuild())
	if err != nil {
		t.Fatalf("forced Build: %v", err)
	}
	if third.Reused || countBuilds(calls()) != 1 {
		t.Errorf("forced build: Reused=%v, go build ran %d times", third.Reused, countBuilds(calls()))
	}
	if third.BinarySHA256 != first.BinarySHA256 {
		t.Errorf("binary not reproducible: %s vs %s", third.BinarySHA256, first.BinarySHA256)
	}
	if third.Digest != first.Digest || third.ConfigDigest != first.ConfigDigest || third.Ref != first.Ref {
		t.Errorf("image not reproducible: %s %s vs %s %s", third.Ref, third.Digest, first.Ref, first.Digest)
	}
}

func TestCorruptCacheEntryIsRebuilt(t *testing.T) {
	first := sharedBuild(t)
	dir := t.TempDir()
	entry := filepath.Join(dir, filepath.Base(filepath.Dir(first.TarballPath)))
	if err := os.MkdirAll(entry, 0o755); err != nil {
		t.Fatal(err)
	}
	// Metadata without a tarball: an interrupted or damaged entry.
	meta, err := os.ReadFile(filepath.Join(filepath.Dir(first.TarballPath), metadataName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(entry, metadataName), meta, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	res, err := Build(ctx, WithArch(runtime.GOARCH), WithCacheDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || res.Digest != first.Digest {
		t.Errorf("corrupt entry: Reused=%v digest %s, want a rebuild with %s", res.Reused, res.Digest, first.Digest)
	}
}

func TestTarballContents(t *testing.T) {
	res := sharedBuild(t)
	if !strings.HasPrefix(res.Ref, Repository+":") || !strings.HasSuffix(res.Ref, ":"+res.BinarySHA256[:12]) {
		t.Errorf("ref %q is not %s:<first 12 hex of the binary sha256>", res.Ref, Repository)
	}
	tag, err := name.NewTag(res.Ref)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(res.TarballPath) })
	if err != nil {
		t.Fatalf("read docker-load manifest: %v", err)
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{res.Ref}) {
		t.Errorf("tarball manifest.json = %+v, want one image tagged %s", manifest, res.Ref)
	}

	img, err := tarball.ImageFromPath(res.TarballPath, &tag)
	if err != nil {
		t.Fatalf("read image tarball: %v", err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if digest.String() != res.Digest {
		t.Errorf("tarball image digest %s, result says %s", digest, res.Digest)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q", cfg.Config.User)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/echo"}) || !slices.Equal(cfg.Config.Cmd, []string{"serve"}) {
		t.Errorf("entrypoint %q cmd %q", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	if !cfg.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("created %s, want the Unix epoch", cfg.Created.Time)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("image has %d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		t.Fatalf("read layer: %v", err)
	}
	if hdr.Name != "echo" || hdr.Typeflag != tar.TypeReg {
		t.Errorf("layer entry %q type %c, want regular file echo", hdr.Name, hdr.Typeflag)
	}
	if hdr.FileInfo().Mode().Perm() != 0o555 {
		t.Errorf("/echo mode %v, want 0555", hdr.FileInfo().Mode().Perm())
	}
	if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(time.Unix(0, 0)) {
		t.Errorf("/echo uid %d gid %d mtime %s, want root and the epoch", hdr.Uid, hdr.Gid, hdr.ModTime)
	}
	binary, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("layer has more than one entry (err %v)", err)
	}
	sum := sha256.Sum256(binary)
	if hex.EncodeToString(sum[:]) != res.BinarySHA256 {
		t.Errorf("layer binary sha256 %x, result says %s", sum, res.BinarySHA256)
	}

	// The binary from the layer is the real echo program: serve, then
	// probe it, and expect a plaintext verdict.
	bin := filepath.Join(t.TempDir(), "echo")
	if err := os.WriteFile(bin, binary, 0o555); err != nil {
		t.Fatal(err)
	}
	runEchoRoundTrip(t, bin)
}

func runEchoRoundTrip(t *testing.T, bin string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	serve := exec.CommandContext(ctx, bin, "serve", "--host=127.0.0.1", "--ports=0", "--grpc-ports=0")
	serve.Env = append(os.Environ(), "POD_NAME=image-test", "POD_NAMESPACE=test", "SERVICE_ACCOUNT=tester", "GRPC_XDS_BOOTSTRAP=", "GRPC_XDS_BOOTSTRAP_CONFIG=")
	serve.Cancel = func() error { return serve.Process.Signal(syscall.SIGTERM) }
	serve.WaitDelay = 15 * time.Second
	stdout, err := serve.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	serve.Stderr = &stderr
	if err := serve.Start(); err != nil {
		t.Fatalf("start /echo serve: %v", err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	defer func() {
		_ = serve.Process.Signal(syscall.SIGTERM)
		go func() { exited <- serve.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("/echo serve did not exit cleanly on SIGTERM: %v\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			_ = serve.Process.Kill()
			t.Errorf("/echo serve ignored SIGTERM")
			<-exited
		}
	}()

	var addr string
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatalf("/echo serve exited before listening: %s", stderr.String())
		}
		addr, ok = strings.CutPrefix(line, "listening on ")
		if !ok {
			t.Fatalf("unexpected first line from /echo serve: %q", line)
		}
	case <-time.After(time.Minute):
		t.Fatalf("/echo serve did not report a listening address: %s", stderr.String())
	}
	// The image's echo also serves the gRPC echo (plain, without an xDS
	// bootstrap).
	var grpcAddr string
	select {
	case line := <-lines:
		rest, _ := strings.CutPrefix(line, "listening on ")
		grpcAddr, _ = strings.CutSuffix(rest, " (plain gRPC)")
		if grpcAddr == rest || grpcAddr == "" {
			t.Fatalf("second line from /echo serve %q, want its gRPC listener", line)
		}
	case <-time.After(time.Minute):
		t.Fatalf("/echo serve did not report its gRPC listener: %s", stderr.String())
	}

	probe := exec.CommandContext(ctx, bin, "probe", "--target", "self=http://"+addr+"/", "--target", "grpc=grpc://"+grpcAddr, "--requests", "2", "--timeout", "5s")
	probe.WaitDelay = 10 * time.Second
	out, err := probe.Output()
	if err != nil {
		t.Fatalf("/echo probe: %v", err)
	}
	var results []echoapi.ProbeResult
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var r echoapi.ProbeResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("decode probe output %q: %v", out, err)
		}
		results = append(results, r)
	}
	if len(results) != 4 {
		t.Fatalf("probe printed %d results, want 4: %s", len(results), out)
	}
	for _, r := range results {
		wantStatus := 200
		if r.Target == "grpc" {
			wantStatus = 0 // gRPC has no HTTP status in the result
		}
		if r.Result != echoapi.ResultPlaintext || r.StatusCode != wantStatus {
			t.Errorf("probe result %+v, want plaintext %d", r, wantStatus)
		}
		if r.ServerPod != "image-test" || r.ServerServiceAccount != "tester" {
			t.Errorf("server identity %q/%q, want image-test/tester from the environment", r.ServerPod, r.ServerServiceAccount)
		}
	}
}

func TestCacheKey(t *testing.T) {
	src := fstest.MapFS{
		"echo/main.go":          {Data: []byte("package main\n")},
		"echo/main_test.go":     {Data: []byte("package main\n// test\n")},
		"echo/testdata/x.json":  {Data: []byte("{}")},
		"echo/echoapi/types.go": {Data: []byte("package echoapi\n")},
	}
	files, err := sourceFiles(src)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, f.path)
	}
	if !slices.Equal(paths, []string{"echo/echoapi/types.go", "echo/main.go"}) {
		t.Errorf("source files %v, want the non-test files sorted", paths)
	}
	base := cacheKey(files, "go1.26.8", "amd64")
	if cacheKey(files, "go1.26.8", "amd64") != base {
		t.Errorf("cache key is not deterministic")
	}
	if cacheKey(files, "go1.26.9", "amd64") == base || cacheKey(files, "go1.26.8", "arm64") == base {
		t.Errorf("cache key ignores Go version or arch")
	}
	changed := slices.Clone(files)
	changed[1] = sourceFile{path: changed[1].path, data: []byte("package main\n\n")}
	if cacheKey(changed, "go1.26.8", "amd64") == base {
		t.Errorf("cache key ignores source contents")
	}
	// Moving bytes between path and contents must not collide.
	a := []sourceFile{{path: "echo/a", data: []byte("bc")}}
	b := []sourceFile{{path: "echo/ab", data: []byte("c")}}
	if cacheKey(a, "v", "amd64") == cacheKey(b, "v", "amd64") {
		t.Errorf("cache key collides for different path/content splits")
	}
	// Test-only edits do not invalidate the image.
	src["echo/main_test.go"] = &fstest.MapFile{Data: []byte("package main\n// edited\n")}
	again, err := sourceFiles(src)
	if err != nil {
		t.Fatal(err)
	}
	if cacheKey(again, "go1.26.8", "amd64") != base {
		t.Errorf("editing a _test.go file changed the cache key")
	}
}

func TestEmbeddedSourceIsTheEchoProgram(t *testing.T) {
	files, err := sourceFiles(fixtures.EchoSource)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f.path, "_test.go") || strings.Contains(f.path, "/testdata/") {
			t.Errorf("build input includes %s", f.path)
		}
		names = append(names, f.path)
	}
	for _, want := range []string{"echo/main.go", "echo/echoapi/types.go"} {
		if !slices.Contains(names, want) {
			t.Errorf("build input lacks %s: %v", want, names)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	if _, err := Build(ctx, WithArch("riscv64"), WithCacheDir(t.TempDir())); err == nil {
		t.Errorf("unsupported arch accepted")
	}
	_, err := Build(ctx, WithCacheDir(t.TempDir()), WithGoCommand(filepath.Join(t.TempDir(), "no-such-go")))
	if err == nil || !strings.Contains(err.Error(), "WithGoCommand") {
		t.Errorf("missing go command: err = %v, want an actionable error", err)
	}
}

func TestDefaultCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	if d, err := DefaultCacheDir(); err != nil || d != "/xdg/meshproof/image" {
		t.Errorf("with XDG_CACHE_HOME: %q, %v", d, err)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d, err := DefaultCacheDir(); err != nil || d != "/home/u/.cache/meshproof/image" {
		t.Errorf("with HOME: %q, %v", d, err)
	}
}

// Cross-building for the other kind node architecture yields an image whose
// config and binary both say arm64.
func TestBuildArm64(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	res, err := Build(ctx, WithArch("arm64"), WithCacheDir(t.TempDir()))
	if err != nil {
		t.Fatalf("Build arm64: %v", err)
	}
	img, err := tarball.ImageFromPath(res.TarballPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "arm64" || res.Arch != "arm64" {
		t.Errorf("config architecture %q, result %q, want arm64", cfg.Architecture, res.Arch)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		t.Fatal(err)
	}
	binary, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		t.Fatalf("/echo is not an ELF binary: %v", err)
	}
	if f.Machine != elf.EM_AARCH64 {
		t.Errorf("/echo machine %v, want EM_AARCH64", f.Machine)
	}
	if sharedRes := sharedBuild(t); runtime.GOARCH != "arm64" && (res.Digest == sharedRes.Digest || res.Ref == sharedRes.Ref) {
		t.Errorf("arm64 image has the same digest or tag as the %s one", runtime.GOARCH)
	}
}

// BenchmarkBuildCached measures a cache hit, the cost every meshproof run
// pays once the image exists: hashing the source and asking go for its
// version.
func BenchmarkBuildCached(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	if _, err := Build(ctx, WithCacheDir(dir)); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		res, err := Build(ctx, WithCacheDir(dir))
		if err != nil {
			b.Fatal(err)
		}
		if !res.Reused {
			b.Fatal("cache miss")
		}
	}
}
