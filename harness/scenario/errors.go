package scenario

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a scenario file.
type Error struct {
	// Pos is where the problem is.
	Pos Position
	// Path is the YAML path of the offending node, e.g.
	// scenarios[0].steps[1].mtls.peerAuthentications[0].mode.
	Path string
	// Message says what is wrong and, where it can, how to fix it.
	Message string

	// combination is the matrix combination in which the problem appeared,
	// e.g. "mode=STRICT, dr=DISABLE"; empty when it appears in all of them.
	combination string
}

// Error formats the problem as file:line:col: path: message.
func (e *Error) Error() string {
	msg := e.Message
	if e.combination != "" {
		msg += " (in matrix combination " + e.combination + ")"
	}
	if e.Path == "" {
		return fmt.Sprintf("%s: %s", e.Pos, msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Pos, e.Path, msg)
}

// ErrorList is every problem found in a scenario file, sorted by position.
type ErrorList []*Error

// Error joins the problems, one per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sortAndDedupe orders errors by position and drops exact repeats, which
// arise when one mistake is reached through several YAML aliases.
func (l ErrorList) sortAndDedupe() ErrorList {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i].Pos, l[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		if a.Column != b.Column {
			return a.Column < b.Column
		}
		return l[i].Path < l[j].Path
	})
	out := l[:0]
	seen := map[string]bool{}
	for _, e := range l {
		k := e.Error()
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, e)
	}
	return out
}

// suggest returns a "did you mean" hint for a misspelt name, or "".
func suggest(got string, candidates []string) string {
	best, bestDist := "", len(got)/2+2
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(got), strings.ToLower(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
