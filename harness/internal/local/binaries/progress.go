package binaries

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// progressEvery is how often a build in progress says it is still running:
// a first-use build of kube-apiserver or istiod is silent for minutes.
var progressEvery = 30 * time.Second

// buildFunc compiles one binary into target (buildOne); tests replace it.
var buildFunc = buildOne

// progress numbers the first-use builds of one call ("3 of 7") in the
// order they begin, says how long each and all of them have taken at a
// steady pace, what builds beside each and what has not begun. Builds of
// different wrapper modules run at once (EnsureAll), so it is safe for
// concurrent use.
type progress struct {
	log   io.Writer
	names []string // every binary to build, in the order builds begin one at a time
	start time.Time

	mu      sync.Mutex // the counts below, and log lines from the tickers and the builders
	begun   []string   // builds begun, in order
	running map[string]bool
	done    int
}

func newProgress(log io.Writer, names []string) *progress {
	return &progress{log: log, names: names, start: time.Now(), running: map[string]bool{}}
}

// sayLocked writes one line; p.mu is held.
func (p *progress) sayLocked(format string, args ...any) {
	fmt.Fprintf(p.log, format, args...)
}

// leftLocked names what builds beside name and the builds not begun yet;
// p.mu is held.
func (p *progress) leftLocked(name string) string {
	var beside, left []string
	for _, n := range p.begun {
		if n != name && p.running[n] {
			beside = append(beside, n)
		}
	}
	for _, n := range p.names {
		if !slices.Contains(p.begun, n) {
			left = append(left, n)
		}
	}
	out := "nothing after it"
	if len(left) > 0 {
		out = "left after it: " + strings.Join(left, ", ")
	}
	if len(beside) > 0 {
		out = "beside it: " + strings.Join(beside, ", ") + "; " + out
	}
	return out
}

// building reports the start of b's build and, until the returned stop is
// called, every progressEvery that it still runs.
func (p *progress) building(b binary) (stop func(err error)) {
	p.mu.Lock()
	p.begun = append(p.begun, b.name)
	p.running[b.name] = true
	k, n := len(p.begun), len(p.names)
	p.sayLocked("binaries: building %d of %d: %s (%s), first use only (minutes each on a cold Go build cache); %s\n", k, n, b.name, b.pkg, p.leftLocked(b.name))
	p.mu.Unlock()
	began := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				p.mu.Lock()
				p.sayLocked("binaries: still building %s (%d of %d): %s on it, %s in all; %s\n", b.name, k, n,
					time.Since(began).Round(time.Second), time.Since(p.start).Round(time.Second), p.leftLocked(b.name))
				p.mu.Unlock()
			}
		}
	}()
	return func(err error) {
		close(done)
		wg.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.running[b.name] = false
		if err != nil {
			return
		}
		p.done++
		p.sayLocked("binaries: built %s in %s (%d of %d done, %s in all)\n", b.name, time.Since(began).Round(time.Second), p.done, n, time.Since(p.start).Round(time.Second))
	}
}

// EnsureAll makes sure kube-apiserver, etcd and every one of tools are
// built, building what the cache lacks with numbered progress (build k of
// n, a line every 30 s, what builds beside it and what is left), and
// returns the assets directory (Ensure's) and the tools' paths in order. A
// binary $KUBEBUILDER_ASSETS or $MESHPROOF_TOOLS provides is used as is.
//
// The binaries of different wrapper modules build at once, parallelBuilds
// at a time; those of one module one after another (buildConcurrently).
func EnsureAll(ctx context.Context, log io.Writer, tools ...Tool) (string, []string, error) {
	var jobs []buildJob
	assets, fromEnv := os.LookupEnv(AssetsEnv)
	if !fromEnv || assets == "" {
		dir, err := Dir()
		if err != nil {
			return "", nil, err
		}
		for _, b := range binariesToBuild {
			if checkExecutable(filepath.Join(dir, b.name)) != nil {
				jobs = append(jobs, buildJob{dir, b})
			}
		}
	}
	for _, t := range tools {
		if env := os.Getenv(ToolsEnv); env != "" && checkExecutable(filepath.Join(env, t.name)) == nil {
			continue
		}
		dir, err := ToolDir(t)
		if err != nil {
			return "", nil, err
		}
		if checkExecutable(filepath.Join(dir, t.name)) != nil {
			jobs = append(jobs, buildJob{dir, t.binary})
		}
	}
	if len(jobs) > 0 {
		root, err := mainModuleRoot(ctx)
		if err != nil {
			return "", nil, err
		}
		if err := buildConcurrently(ctx, root, jobs, log); err != nil {
			return "", nil, err
		}
	}
	dir, err := EnsureWithLog(ctx, log)
	if err != nil {
		return "", nil, err
	}
	paths := make([]string, len(tools))
	for i, t := range tools {
		if paths[i], err = EnsureTool(ctx, t, log); err != nil {
			return "", nil, err
		}
	}
	return dir, paths, nil
}

// buildJob is one binary to build into its cache directory.
type buildJob struct {
	dir string
	bin binary
}

// parallelBuilds is how many wrapper modules build at once. One go build
// leaves a core idle much of the time (module downloads, the linker, the
// few large packages the rest waits for); two builds side by side keep two
// cores busy.
var parallelBuilds = 2

// buildConcurrently builds jobs, those of one wrapper module one after
// another (each reuses what the one before compiled, instead of compiling
// it again beside it: kube-controller-manager after kube-apiserver,
// pilot-agent after pilot-discovery) and up to parallelBuilds modules at
// once, in the order the modules first appear in jobs. The first failure
// stops the other builds.
func buildConcurrently(ctx context.Context, root string, jobs []buildJob, log io.Writer) error {
	var modules [][]buildJob
	at := map[string]int{}
	for _, j := range jobs {
		i, ok := at[j.bin.module]
		if !ok {
			i = len(modules)
			at[j.bin.module] = i
			modules = append(modules, nil)
		}
		modules[i] = append(modules[i], j)
	}
	var names []string
	queue := make(chan []buildJob, len(modules))
	for _, m := range modules {
		for _, j := range m {
			names = append(names, j.bin.name)
		}
		queue <- m
	}
	close(queue)
	p := newProgress(log, names)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(parallelBuilds, len(modules)) {
		wg.Go(func() {
			for module := range queue {
				for _, j := range module {
					if ctx.Err() != nil {
						return
					}
					if err := buildInto(ctx, root, j.dir, []binary{j.bin}, log, p); err != nil {
						mu.Lock()
						if first == nil {
							first = fmt.Errorf("building %s from source into %s: %w", j.bin.name, j.dir, err)
							cancel()
						}
						mu.Unlock()
						return
					}
				}
			}
		})
	}
	wg.Wait()
	return first
}
