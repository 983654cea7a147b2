package proctree

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

// A child started here is listed below this process while it runs, and is
// not alive once it has been waited for.
func TestDescendantsListsAChildUntilItEnds(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ps, err := Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var child *Process
	for i := range ps {
		if ps[i].Pid == cmd.Process.Pid {
			child = &ps[i]
		}
	}
	if child == nil || child.Name != "sleep" || !child.Alive() {
		t.Fatalf("descendants %+v, want the running sleep %d", ps, cmd.Process.Pid)
	}
	if Names(ps)["sleep"] != 1 {
		t.Errorf("names %v, want one sleep", Names(ps))
	}
	if !slices.Equal(child.Args, []string{"sleep", "30"}) || Running(ps)["sleep"] != 1 {
		t.Errorf("command line %q (running %v), want sleep 30, counted as sleep", child.Args, Running(ps))
	}
	if got := Running([]Process{{Name: "echo", Args: []string{"/x/echo", "serve", "--ports"}}, {Name: "etcd", Args: []string{"etcd", "--name=x"}}}); got["echo serve"] != 1 || got["etcd"] != 1 {
		t.Errorf("running %v, want echo serve and etcd", got)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if child.Alive() {
		t.Error("the killed child is still alive")
	}
}
