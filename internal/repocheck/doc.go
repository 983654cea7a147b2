// Package repocheck holds the checks of the repository as a whole, as
// tests: packages import only downward along the layers of layers.go
// (nothing under harness/internal imports the composition root, the engine
// has one importer, the CLI links no test support), every package has a
// package doc, and the README's Layout section is generated from those
// docs in the layers' order (`make generate` rewrites it). It has no code
// of its own.
package repocheck
