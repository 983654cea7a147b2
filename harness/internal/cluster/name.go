package cluster

import (
	"fmt"
	"regexp"
)

// MaxNameLength is the longest cluster name accepted. kind names the control
// plane container "<name>-control-plane" and uses it as the node's hostname,
// which Linux limits to 64 characters; kind itself only warns past 50, we
// refuse, because the failure it leads to is obscure and late.
const MaxNameLength = 50

// validNameRE is kind's own rule (lower-case letters, digits, '.' and '-'),
// tightened to begin and end with a letter or digit, because the name
// becomes the prefix of container names and host names, which may not start
// with '-' or '.'.
var validNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

// ValidateName reports whether name can be used as a kind cluster name, and
// if not, says why in terms a user can act on.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("cluster name is empty: give a name such as %q", DefaultName)
	case len(name) > MaxNameLength:
		return fmt.Errorf("cluster name %q is %d characters long: at most %d are allowed, because kind appends \"-control-plane\" to it to make a host name",
			name, len(name), MaxNameLength)
	case validNameRE.MatchString(name):
		return nil
	}
	for i, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-') {
			return fmt.Errorf("cluster name %q has %q at position %d: only lower-case letters, digits, '.' and '-' are allowed", name, r, i+1)
		}
	}
	return fmt.Errorf("cluster name %q must begin and end with a lower-case letter or digit", name)
}
