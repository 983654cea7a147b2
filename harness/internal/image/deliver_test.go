package image

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// registryServer runs go-containerregistry's in-process registry on
// 127.0.0.1, behind wrap (nil for none), and returns its host:port.
func registryServer(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// dockerConfig points the default keychain at a docker config of the
// test's own, holding credentials for host when user is not empty, and
// away from the real user's ~/.docker.
func dockerConfig(t *testing.T, host, user, password string) {
	t.Helper()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("REGISTRY_AUTH_FILE", "")
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	auths := map[string]any{}
	if user != "" {
		auths[host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// basicAuth admits only requests carrying user:password, answering others
// 401 with a Basic challenge, as a registry behind basic auth does.
func basicAuth(user, password string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || u != user || p != password {
				w.Header().Set("WWW-Authenticate", `Basic realm="meshproof-test"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// readOnly refuses every write with 403, as a registry does to an account
// that may pull but not push.
func readOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func deliverContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestDeliverPushesByDigestAndResolvesRefs(t *testing.T) {
	built := sharedBuild(t)
	host := registryServer(t, nil)
	dockerConfig(t, host, "", "")
	ctx := deliverContext(t)
	repo := host + "/team/meshproof-echo"

	ref, err := Deliver(ctx, built, PushTo(repo))
	if err != nil {
		t.Fatal(err)
	}
	if want := repo + "@" + built.Digest; ref != want {
		t.Errorf("Deliver = %s, want %s", ref, want)
	}
	// What the cluster would pull: the manifest behind the digest, the
	// built image's config, and the tag the push left for humans.
	d, err := name.NewDigest(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(d)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if cfg, err := img.ConfigName(); err != nil || cfg.String() != built.ConfigDigest {
		t.Errorf("pulled config %v (%v), want %s", cfg, err, built.ConfigDigest)
	}
	tagged := repo + ":" + tagOf(built.Ref)
	tagRef, err := name.NewTag(tagged)
	if err != nil {
		t.Fatal(err)
	}
	if desc, err := remote.Head(tagRef); err != nil || desc.Digest.String() != built.Digest {
		t.Errorf("tag %s -> %v (%v), want %s", tagged, desc, err, built.Digest)
	}

	// A published image by tag resolves to its digest; by digest it is
	// checked and kept; the built image is not needed.
	for _, published := range []string{tagged, ref} {
		got, err := Deliver(ctx, nil, UseRef(published))
		if err != nil {
			t.Fatalf("UseRef(%s): %v", published, err)
		}
		if got != ref {
			t.Errorf("UseRef(%s) = %s, want %s", published, got, ref)
		}
	}
	_, err = Deliver(ctx, nil, UseRef(repo+":no-such-tag"))
	wantErr(t, err, "could not find "+repo+":no-such-tag", "registry "+host+" does not have it (404 Not Found)")
}

func TestDeliverAuthenticatedPush(t *testing.T) {
	built := sharedBuild(t)
	host := registryServer(t, basicAuth("ci-bot", "s3cret"))
	repo := host + "/team/echo"
	ctx := deliverContext(t)

	dockerConfig(t, host, "ci-bot", "s3cret")
	ref, err := Deliver(ctx, built, PushTo(repo))
	if err != nil {
		t.Fatalf("push with the docker config's credentials: %v", err)
	}
	if ref != repo+"@"+built.Digest {
		t.Errorf("Deliver = %s", ref)
	}
	if got, err := Deliver(ctx, nil, UseRef(repo+":"+tagOf(built.Ref))); err != nil || got != ref {
		t.Errorf("UseRef with credentials = %s, %v; want %s", got, err, ref)
	}

	for _, tc := range []struct{ name, user, password string }{{"no credentials", "", ""}, {"wrong password", "ci-bot", "guess"}} {
		t.Run(tc.name, func(t *testing.T) {
			dockerConfig(t, host, tc.user, tc.password)
			_, err := Deliver(ctx, built, PushTo(repo))
			wantErr(t, err, "could not push the echo image to "+repo+":", "registry "+host+" wants credentials", "401 Unauthorized", "docker login "+host)
		})
	}
}

func TestDeliverPushRefused(t *testing.T) {
	built := sharedBuild(t)
	host := registryServer(t, readOnly)
	dockerConfig(t, host, "", "")
	_, err := Deliver(deliverContext(t), built, PushTo(host+"/team/echo"))
	wantErr(t, err, "could not push the echo image to "+host+"/team/echo:", "registry "+host+" denied it (403 Forbidden)", "may not write to this repository")
}

func TestDeliverUnreachableRegistry(t *testing.T) {
	built := sharedBuild(t)
	// A port that was just free and is closed now: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	dockerConfig(t, host, "", "")
	ctx := deliverContext(t)
	_, err = Deliver(ctx, built, PushTo(host+"/team/echo"))
	wantErr(t, err, "could not push the echo image to "+host+"/team/echo:", "registry "+host+" is unreachable from here", "connection refused")
	_, err = Deliver(ctx, nil, UseRef(host+"/team/echo:v1"))
	wantErr(t, err, "could not find "+host+"/team/echo:v1", "is unreachable")
}

func TestDeliverUsageErrors(t *testing.T) {
	ctx := deliverContext(t)
	for _, tc := range []struct {
		name string
		opts []DeliverOption
		want string
	}{
		{"neither", nil, "set exactly one of PushTo"},
		{"both", []DeliverOption{PushTo("r.example/e"), UseRef("r.example/e:1")}, "set exactly one of PushTo"},
		{"tagged repository", []DeliverOption{PushTo("r.example/e:v1")}, `"r.example/e:v1" is not a repository to push to`},
		{"bad ref", []DeliverOption{UseRef("R.example/UPPER:x")}, "is not an image reference"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Deliver(ctx, &Result{TarballPath: "unused"}, tc.opts...)
			wantErr(t, err, tc.want)
		})
	}
	_, err := Deliver(ctx, nil, PushTo("r.example/e"))
	wantErr(t, err, "the echo image was not built")
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one saying %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q\ndoes not say %q", err, p)
		}
	}
	t.Logf("error as the user sees it: %v", err)
}
