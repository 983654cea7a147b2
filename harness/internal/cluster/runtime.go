package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	kindcluster "sigs.k8s.io/kind/pkg/cluster"
)

// ErrNoContainerRuntime is returned (wrapped, with what exactly is missing)
// by every Kind operation when no container engine answers. Test with
// errors.Is.
var ErrNoContainerRuntime = errors.New("meshproof needs a container runtime for kind: install Docker or Podman and make sure `docker info` (or `podman info`) works")

// engineProbeTimeout bounds each `<engine> info` call. A healthy local engine
// answers in well under a second; a dead socket fails at once; a hung remote
// engine must not hold the run for long.
const engineProbeTimeout = 15 * time.Second

// runtimeCheck decides which container engine kind drives, or fails with
// ErrNoContainerRuntime. It is a field of Kind so tests can replace it.
type runtimeCheck func(ctx context.Context) (kindcluster.ProviderOption, error)

// engine is one container engine kind can use: the client binary, the
// `info` template that prints a non-empty server version only when the
// engine answers, and kind's provider option for it.
type engine struct {
	binary     string
	infoFormat string
	option     func() kindcluster.ProviderOption
}

// engines are in kind's detection order (DetectNodeProvider).
var engines = []engine{
	{"docker", "{{.ServerVersion}}", kindcluster.ProviderWithDocker},
	{"nerdctl", "{{.ServerVersion}}", func() kindcluster.ProviderOption { return kindcluster.ProviderWithNerdctl("nerdctl") }},
	{"finch", "{{.ServerVersion}}", func() kindcluster.ProviderOption { return kindcluster.ProviderWithNerdctl("finch") }},
	{"podman", "{{.Version.Version}}", kindcluster.ProviderWithPodman},
}

// checkContainerRuntime is the real runtimeCheck. kind's DetectNodeProvider
// only looks for a client binary (`docker -v`), which succeeds on a machine
// with the docker CLI but no engine; kind would then fail much later with a
// long, confusing error. So after kind's detection, each installed client is
// asked to reach its engine, and the first one that answers is used. Like
// the kind CLI, KIND_EXPERIMENTAL_PROVIDER restricts the choice to one
// engine.
func checkContainerRuntime(ctx context.Context) (kindcluster.ProviderOption, error) {
	candidates := engines
	if forced := os.Getenv("KIND_EXPERIMENTAL_PROVIDER"); forced != "" {
		candidates = nil
		for _, e := range engines {
			if e.binary == forced || forced == "nerdctl.lima" && e.binary == "nerdctl" {
				candidates = []engine{e}
			}
		}
		if candidates == nil {
			return nil, fmt.Errorf("%w: KIND_EXPERIMENTAL_PROVIDER=%q is not one of docker, podman, nerdctl, finch; unset it or fix it",
				ErrNoContainerRuntime, forced)
		}
	} else if _, err := kindcluster.DetectNodeProvider(); err != nil {
		return nil, fmt.Errorf("%w: none of docker, podman, nerdctl or finch is on PATH", ErrNoContainerRuntime)
	}

	var problems []string
	for _, e := range candidates {
		if _, err := exec.LookPath(e.binary); err != nil {
			continue
		}
		err := probeEngine(ctx, e)
		if err == nil {
			return e.option(), nil
		}
		problems = append(problems, err.Error())
	}
	if len(problems) == 0 {
		return nil, fmt.Errorf("%w: %s is not on PATH", ErrNoContainerRuntime, candidates[0].binary)
	}
	return nil, fmt.Errorf("%w: %s; start the engine (e.g. `sudo systemctl start docker`) or point DOCKER_HOST/CONTAINER_HOST at one that runs",
		ErrNoContainerRuntime, strings.Join(problems, "; "))
}

// probeEngine runs `<binary> info --format <version template>` and succeeds
// when the engine reports its server version; otherwise the error quotes
// what the client said.
func probeEngine(ctx context.Context, e engine) error {
	ctx, cancel := context.WithTimeout(ctx, engineProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.binary, "info", "--format", e.infoFormat)
	// A client may leave a helper holding the output pipes; do not wait for
	// it past the timeout.
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	version := strings.TrimSpace(stdout.String())
	if err == nil && version != "" && version != "<no value>" {
		return nil
	}
	said := firstLine(stderr.String())
	if said == "" {
		said = firstLine(stdout.String())
	}
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("the %s client is installed but `%s info` did not answer within %s", e.binary, e.binary, engineProbeTimeout)
	case said == "" && err != nil:
		return fmt.Errorf("the %s client is installed but `%s info` failed: %v", e.binary, e.binary, err)
	case said == "":
		return fmt.Errorf("the %s client is installed but `%s info` reported no server version", e.binary, e.binary)
	}
	return fmt.Errorf("the %s client is installed but its engine does not answer: `%s info` said: %s", e.binary, e.binary, said)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
