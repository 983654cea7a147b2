package cluster

import (
	"errors"
	"strings"
	"testing"
)

type fakeLister struct {
	names []string
	err   error
}

func (f fakeLister) List() ([]string, error) { return f.names, f.err }

func TestDecideReuse(t *testing.T) {
	cases := []struct {
		desc      string
		lister    fakeLister
		reuse     bool
		wantReuse bool
		wantErr   string
	}{
		{"absent, reuse off: create", fakeLister{names: []string{"other"}}, false, false, ""},
		{"absent, reuse on: create", fakeLister{names: []string{"other"}}, true, false, ""},
		{"no clusters at all: create", fakeLister{}, true, false, ""},
		{"present, reuse on: reuse", fakeLister{names: []string{"other", "mp"}}, true, true, ""},
		{"present, reuse off: refuse", fakeLister{names: []string{"mp"}}, false, false, `kind cluster "mp" already exists: enable reuse`},
		{"prefix is not a match", fakeLister{names: []string{"mp2"}}, true, false, ""},
		{"list fails", fakeLister{err: errors.New("boom")}, true, false, "list kind clusters: boom"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := decideReuse(tc.lister, "mp", tc.reuse)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("decideReuse error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decideReuse: %v", err)
			}
			if got != tc.wantReuse {
				t.Errorf("decideReuse = %v, want %v", got, tc.wantReuse)
			}
		})
	}
}
