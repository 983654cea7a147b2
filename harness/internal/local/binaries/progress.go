package binaries

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// progressEvery is how often a build in progress says it is still running:
// a first-use build of kube-apiserver or istiod is silent for minutes.
var progressEvery = 30 * time.Second

// buildFunc compiles one binary into target (buildOne); tests replace it.
var buildFunc = buildOne

// progress numbers the first-use builds of one call ("3 of 7"), says how
// long each and all of them have taken at a steady pace, and what is left.
type progress struct {
	log   io.Writer
	names []string // every binary to build, in build order
	done  int
	start time.Time
	mu    sync.Mutex // log lines from the ticker and the builder
}

func newProgress(log io.Writer, names []string) *progress {
	return &progress{log: log, names: names, start: time.Now()}
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.log, format, args...)
}

// left names the builds after the current one.
func (p *progress) left() string {
	if p.done+1 >= len(p.names) {
		return "nothing after it"
	}
	return "left after it: " + strings.Join(p.names[p.done+1:], ", ")
}

// building reports the start of b's build and, until the returned stop is
// called, every progressEvery that it still runs.
func (p *progress) building(b binary) (stop func(err error)) {
	k, n := p.done+1, len(p.names)
	p.printf("binaries: building %d of %d: %s (%s), first use only (minutes each on a cold Go build cache); %s\n", k, n, b.name, b.pkg, p.left())
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
				p.printf("binaries: still building %s (%d of %d): %s on it, %s in all; %s\n", b.name, k, n,
					time.Since(began).Round(time.Second), time.Since(p.start).Round(time.Second), p.left())
			}
		}
	}()
	return func(err error) {
		close(done)
		wg.Wait()
		if err != nil {
			return
		}
		p.done++
		p.printf("binaries: built %s in %s (%d of %d done, %s in all)\n", b.name, time.Since(began).Round(time.Second), p.done, n, time.Since(p.start).Round(time.Second))
	}
}

// EnsureAll makes sure kube-apiserver, etcd and every one of tools are
// built, building what the cache lacks one after another with numbered
// progress (build k of n, a line every 30 s, what is left), and returns the
// assets directory (Ensure's) and the tools' paths in order. A binary
// $KUBEBUILDER_ASSETS or $MESHPROOF_TOOLS provides is used as is.
func EnsureAll(ctx context.Context, log io.Writer, tools ...Tool) (string, []string, error) {
	type job struct {
		dir string
		bin binary
	}
	var jobs []job
	assets, fromEnv := os.LookupEnv(AssetsEnv)
	if !fromEnv || assets == "" {
		dir, err := Dir()
		if err != nil {
			return "", nil, err
		}
		for _, b := range binariesToBuild {
			if checkExecutable(filepath.Join(dir, b.name)) != nil {
				jobs = append(jobs, job{dir, b})
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
			jobs = append(jobs, job{dir, t.binary})
		}
	}
	if len(jobs) > 0 {
		root, err := mainModuleRoot(ctx)
		if err != nil {
			return "", nil, err
		}
		names := make([]string, len(jobs))
		for i, j := range jobs {
			names[i] = j.bin.name
		}
		p := newProgress(log, names)
		for _, j := range jobs {
			if err := buildInto(ctx, root, j.dir, []binary{j.bin}, log, p); err != nil {
				return "", nil, fmt.Errorf("building %s from source into %s: %w", j.bin.name, j.dir, err)
			}
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
