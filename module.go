// Package meshproof carries the module's go.mod and go.sum, embedded so
// that a meshproof binary far from any source tree can build the echo image
// (harness/internal/image) with the very dependency versions it was built with.
package meshproof

import _ "embed"

// GoMod and GoSum are the module's go.mod and go.sum.
var (
	//go:embed go.mod
	GoMod []byte
	//go:embed go.sum
	GoSum []byte
)
