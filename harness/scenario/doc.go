// Package scenario is meshproof's scenario language: the API types of a
// scenario file (types.go, from which scenarios.schema.json and the README's
// scenario reference are generated), the loader that reads a file into a
// Suite with every default filled in and every value's position kept, the
// expansion of matrix scenarios, and the validation that reports every
// problem of a file at once, each at its file:line:col with the YAML path
// and, where it can, a suggestion.
//
//	s, err := scenario.LoadFile("scenarios.yaml")  // err lists every problem
//
// A Suite that loaded is valid: everything downstream (plan, oracle, run)
// reads it without checking again.
package scenario
