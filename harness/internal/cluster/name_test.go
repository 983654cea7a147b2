package cluster

import (
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	valid := []string{"meshproof", "a", "kind", "mp-1.2", "0abc9", strings.Repeat("a", MaxNameLength)}
	for _, name := range valid {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
	invalid := []struct{ name, want string }{
		{"", "cluster name is empty"},
		{strings.Repeat("a", MaxNameLength+1), "is 51 characters long: at most 50"},
		{"Mesh", `has 'M' at position 1`},
		{"mesh_proof", `has '_' at position 5`},
		{"mesh proof", `has ' ' at position 5`},
		{"mesh/proof", `has '/' at position 5`},
		{"-mesh", "must begin and end with a lower-case letter or digit"},
		{"mesh.", "must begin and end with a lower-case letter or digit"},
	}
	for _, tc := range invalid {
		err := ValidateName(tc.name)
		if err == nil {
			t.Errorf("ValidateName(%q) = nil, want error containing %q", tc.name, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateName(%q) = %q, want it to contain %q", tc.name, err, tc.want)
		}
	}
}
