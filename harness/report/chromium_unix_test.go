//go:build unix

package report

import (
	"bytes"
	"context"
	"fmt"
	"image/color"
	"image/png"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chromiumBinary is Debian's Chromium launcher; MESHPROOF_CHROMIUM points
// the test at another build.
const chromiumBinary = "/usr/bin/chromium"

// chromiumTimeout bounds each Chromium invocation; it takes about a second
// on an idle machine, far longer on a loaded two-core CI runner.
const chromiumTimeout = 2 * time.Minute

// chromium returns the Chromium to render with. Without one the test fails
// in CI, where it must run, and is skipped elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	bin := chromiumBinary
	if env := os.Getenv("MESHPROOF_CHROMIUM"); env != "" {
		bin = env
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("headless Chromium is needed to render report.html and %s is missing (%v): apt-get install chromium (Debian), or set MESHPROOF_CHROMIUM to a Chromium binary", bin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// runChromium runs one headless Chromium with a fresh profile and HOME in
// dir and returns its standard output.
func runChromium(t *testing.T, bin, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), chromiumTimeout)
	defer cancel()
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	args = append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + filepath.Join(dir, "profile"),
	}, args...)
	cmd := exec.CommandContext(ctx, bin, args...)
	// Chromium writes crash reports and caches under HOME; keep them in
	// the test's folder.
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	// Its helpers (zygote, renderer, GPU process) share its process group,
	// so a timeout kills them all, and none may outlive the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		// Helpers still exiting when the browser returned; the error is
		// ESRCH when none is left.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	t.Logf("chromium %s: %s", strings.Join(args[len(args)-2:], " "), time.Since(start).Round(time.Millisecond))
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (killed after %s)", err, chromiumTimeout)
		}
		t.Fatalf("%s %s: %v\nstderr:\n%s", bin, strings.Join(args, " "), err, tail(stderr.String(), 4000))
	}
	return stdout.Bytes()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// A real browser renders the page a run writes on Close: the DOM it
// builds holds the matrices with their labels, and the screenshot shows
// the outcome colours.
func TestChromiumRendersTheReport(t *testing.T) {
	bin := chromium(t)
	dir := t.TempDir()
	r, err := Open(filepath.Join(dir, "reports"), "run-1")
	if err != nil {
		t.Fatal(err)
	}
	c := syntheticRun()
	for _, o := range c.Observations {
		r.Record(o)
	}
	for _, e := range c.Events {
		r.RecordEvent(e)
	}
	for _, v := range c.Verdicts {
		r.RecordVerdict(v)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	page := (&url.URL{Scheme: "file", Path: r.HTMLPath()}).String()

	dom := runChromium(t, bin, filepath.Join(dir, "dom"), "--dump-dom", page)
	doc := parse(t, dom)
	for _, c := range []struct{ step, from, target, text string }{
		{"strict-on", "service-a", "service-b:8080", "mtls 3✓ expected mtls"},
		{"strict-on", "legacy", "service-b:9090", "fail (reset) 3✓ expected fail (any reason)"},
		{"port-exception", "legacy", "service-b:9090", "plaintext 3fail (timeout) 1✗ expected fail (reset): 4 of 4 differ"},
		{"migrate", "legacy", "service-b:8080", "plaintext 10fail (reset) 10✗ expected fail (reset) / plaintext: 2 of 20 differ"},
	} {
		td := cell(t, stepSection(t, doc, c.step), c.from, c.target)
		if got := text(td); got != c.text {
			t.Errorf("%s: %s -> %s renders %q, want %q", c.step, c.from, c.target, got, c.text)
		}
		if l := attr(td, "aria-label"); !strings.HasPrefix(l, c.from+" to "+c.target+": observed ") {
			t.Errorf("%s: %s -> %s aria-label %q", c.step, c.from, c.target, l)
		}
	}
	if b := findAll(doc, byTagClass("div", "banner-failed")); len(b) != 1 || !strings.HasPrefix(text(b[0]), "FAILED 3 scenarios, 6 steps: 4 passed, 1 failed, 1 skipped") {
		t.Errorf("the rendered banner reads %q", texts(b))
	}
	if n := len(findAll(doc, byTagClass("svg", "timeline"))); n != 2 {
		t.Errorf("the rendered DOM has %d timelines, want 2", n)
	}

	shot := filepath.Join(dir, "report.png")
	runChromium(t, bin, filepath.Join(dir, "shot"), "--screenshot="+shot, "--window-size=1280,4000", page)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("Chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 4000 {
		t.Errorf("screenshot is %dx%d, want 1280x4000", b.Dx(), b.Dy())
	}
	colours := map[color.RGBA]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), 255}]++
		}
	}
	if len(colours) < 16 {
		t.Fatalf("the screenshot has %d distinct colours: nothing was drawn", len(colours))
	}
	// The stylesheet applied: the solid mtls bars of the timeline and the
	// badges' backgrounds are on screen.
	for name, want := range map[string]color.RGBA{
		"mtls timeline bar": {0x2d, 0xa4, 0x4e, 255},
		"mtls badge":        {0xda, 0xfb, 0xe1, 255},
		"fail badge":        {0xff, 0xeb, 0xe9, 255},
		"plaintext badge":   {0xff, 0xf1, 0xb3, 255},
	} {
		if n := near(colours, want); n < 50 {
			t.Errorf("%s colour %v covers %d pixels, want a visible area", name, want, n)
		}
	}
}

// near counts the pixels within a small distance of c (colour management
// may shift a channel by a step or two).
func near(colours map[color.RGBA]int, c color.RGBA) int {
	const tolerance = 4
	d := func(a, b uint8) int { return max(int(a)-int(b), int(b)-int(a)) }
	n := 0
	for k, count := range colours {
		if d(k.R, c.R) <= tolerance && d(k.G, c.G) <= tolerance && d(k.B, c.B) <= tolerance {
			n += count
		}
	}
	return n
}
