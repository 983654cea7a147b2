// Package repocheck holds the checks of the repository as a whole, as
// tests: packages import only downward along the layers of layers.go
// (nothing under harness/internal imports the composition root, the engine
// has one importer, the CLI links no test support), every package has a
// package doc, the README's Layout section is generated from those
// docs in the layers' order (`make generate` rewrites it), and make test
// runs every time the packages whose tests read what Go's test cache
// cannot see (they run go, or need CAP_NET_RAW). It has no code of its
// own.
package repocheck
