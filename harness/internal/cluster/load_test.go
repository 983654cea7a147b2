package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/kind/pkg/cluster/nodes"
	"sigs.k8s.io/kind/pkg/exec"
)

// rendezvous lets every fake node's image import proceed only once all of
// them have started, so the loads can only succeed if they run in parallel.
type rendezvous struct {
	want    int32
	arrived atomic.Int32
	all     chan struct{}
}

func newRendezvous(n int) *rendezvous {
	return &rendezvous{want: int32(n), all: make(chan struct{})}
}

func (r *rendezvous) wait() error {
	if r.arrived.Add(1) == r.want {
		close(r.all)
	}
	select {
	case <-r.all:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("not every node's load started: the loads are not running in parallel")
	}
}

// fakeNode answers the two commands kind's nodeutils.LoadImageArchive runs
// on a node: `containerd config dump` and `ctr ... images import -`.
type fakeNode struct {
	name      string
	meet      *rendezvous
	importErr error

	mu         sync.Mutex
	received   []byte
	importArgv []string
}

func (n *fakeNode) Command(name string, args ...string) exec.Cmd {
	return &fakeCmd{node: n, argv: append([]string{name}, args...)}
}
func (n *fakeNode) CommandContext(_ context.Context, name string, args ...string) exec.Cmd {
	return n.Command(name, args...)
}
func (n *fakeNode) String() string               { return n.name }
func (n *fakeNode) Role() (string, error)        { return "worker", nil }
func (n *fakeNode) IP() (string, string, error)  { return "172.18.0.2", "", nil }
func (n *fakeNode) SerialLogs(w io.Writer) error { return nil }
func (n *fakeNode) got() ([]byte, []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.received, n.importArgv
}
func (n *fakeNode) record(data []byte, argv []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.received, n.importArgv = data, argv
}

type fakeCmd struct {
	node   *fakeNode
	argv   []string
	stdin  io.Reader
	stdout io.Writer
}

func (c *fakeCmd) SetEnv(...string) exec.Cmd      { return c }
func (c *fakeCmd) SetStdin(r io.Reader) exec.Cmd  { c.stdin = r; return c }
func (c *fakeCmd) SetStdout(w io.Writer) exec.Cmd { c.stdout = w; return c }
func (c *fakeCmd) SetStderr(io.Writer) exec.Cmd   { return c }
func (c *fakeCmd) Run() error {
	switch {
	case len(c.argv) >= 3 && c.argv[0] == "containerd" && c.argv[1] == "config" && c.argv[2] == "dump":
		_, err := io.WriteString(c.stdout, "version = 3\n[plugins]\n  [plugins.\"io.containerd.cri.v1.images\"]\n    snapshotter = \"overlayfs\"\n")
		return err
	case c.argv[0] == "ctr":
		data, err := io.ReadAll(c.stdin)
		if err != nil {
			return err
		}
		c.node.record(data, c.argv)
		if c.node.meet != nil {
			if err := c.node.meet.wait(); err != nil {
				return err
			}
		}
		return c.node.importErr
	}
	return fmt.Errorf("unexpected command on node %s: %q", c.node.name, c.argv)
}

func writeArchive(t *testing.T) (string, []byte) {
	t.Helper()
	data := bytes.Repeat([]byte("layer-bytes-"), 50_000) // larger than any pipe buffer
	path := filepath.Join(t.TempDir(), "images.tar")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func TestLoadArchiveIntoEveryNodeInParallel(t *testing.T) {
	archive, data := writeArchive(t)
	meet := newRendezvous(3)
	fakes := []*fakeNode{{name: "mp-control-plane", meet: meet}, {name: "mp-worker", meet: meet}, {name: "mp-worker2", meet: meet}}
	fk := &fakeKind{}
	for _, n := range fakes {
		fk.nodes = append(fk.nodes, n)
	}
	k := newTestKind(t, fk, nil)
	if err := k.LoadImageArchive(context.Background(), archive); err != nil {
		t.Fatal(err)
	}
	for _, n := range fakes {
		got, argv := n.got()
		if !bytes.Equal(got, data) {
			t.Errorf("node %s received %d bytes, want the whole %d-byte archive", n.name, len(got), len(data))
		}
		if cmd := strings.Join(argv, " "); cmd != "ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" {
			t.Errorf("node %s ran %q", n.name, cmd)
		}
	}
}

func TestLoadArchiveReportsEveryFailedNode(t *testing.T) {
	archive, data := writeArchive(t)
	ok := &fakeNode{name: "mp-control-plane"}
	bad1 := &fakeNode{name: "mp-worker", importErr: errors.New("disk full")}
	bad2 := &fakeNode{name: "mp-worker2", importErr: errors.New("ctr crashed")}
	err := loadArchiveIntoNodes(context.Background(), archive, []nodes.Node{ok, bad1, bad2})
	if err == nil {
		t.Fatal("loading succeeded although two nodes failed")
	}
	for _, want := range []string{"node mp-worker: load " + archive, "disk full", "node mp-worker2: load", "ctr crashed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "mp-control-plane") {
		t.Errorf("error names the node that succeeded: %v", err)
	}
	if got, _ := ok.got(); !bytes.Equal(got, data) {
		t.Error("a failing node stopped the load into a healthy one")
	}
}

func TestLoadArchiveNodeSelection(t *testing.T) {
	archive, data := writeArchive(t)
	cp, w1 := &fakeNode{name: "mp-control-plane"}, &fakeNode{name: "mp-worker"}
	fk := &fakeKind{nodes: []nodes.Node{cp, w1}}
	k := newTestKind(t, fk, nil)
	ctx := context.Background()

	if err := k.LoadImageArchive(ctx, archive, "mp-worker"); err != nil {
		t.Fatal(err)
	}
	if got, _ := w1.got(); !bytes.Equal(got, data) {
		t.Error("the selected node did not get the archive")
	}
	if got, _ := cp.got(); got != nil {
		t.Error("a node that was not selected got the archive")
	}

	err := k.LoadImageArchive(ctx, archive, "mp-worker9")
	if err == nil || !strings.Contains(err.Error(), `has no node "mp-worker9"; its nodes are mp-control-plane, mp-worker`) {
		t.Errorf("unknown node: %v", err)
	}
	if err := k.LoadImageArchive(ctx, filepath.Join(t.TempDir(), "missing.tar")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing archive: %v", err)
	}
	if err := k.LoadImageArchive(ctx, t.TempDir()); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("directory as archive: %v", err)
	}
	fk.nodes = nil
	if err := k.LoadImageArchive(ctx, archive); err == nil || !strings.Contains(err.Error(), `kind cluster "mp" has no nodes`) {
		t.Errorf("no nodes: %v", err)
	}
}
