package scenario

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxCombinations bounds a matrix: more would be a typo, not a test plan.
const maxCombinations = 256

var variableRef = regexp.MustCompile(`\$\{([^}]*)\}`)

// decodeScenarios reads the scenarios list, expanding matrix scenarios into
// one scenario per combination. Expansion works on the YAML tree, so every
// expanded node keeps the position it was written at.
func (d *decoder) decodeScenarios(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "must be a list, got %s", describe(n))
		return
	}
	var out []Scenario
	for i, item := range n.Content {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		item, ok := d.resolve(item)
		if !ok {
			continue
		}
		matrixNode := mappingValue(item, "matrix")
		if matrixNode == nil {
			s := Scenario{path: ipath}
			d.decode(item, reflect.ValueOf(&s).Elem(), ipath)
			s.path = ipath
			out = append(out, s)
			continue
		}
		out = append(out, d.expandMatrix(item, matrixNode, ipath)...)
	}
	v.Set(reflect.ValueOf(out))
}

func (d *decoder) expandMatrix(item, matrixNode *yaml.Node, path string) []Scenario {
	var m Matrix
	d.decode(matrixNode, reflect.ValueOf(&m).Elem(), join(path, "matrix"))
	if size := m.size(); size > maxCombinations {
		d.errorf(matrixNode, join(path, "matrix"), "%d combinations; at most %d are allowed", size, maxCombinations)
		d.failed["scenarios"] = true
		return nil
	}
	combos := m.Combinations()
	for _, i := range m.excludeErr {
		d.errorf(matrixNode, fmt.Sprintf("%s.matrix.exclude[%d]", path, i), "exclude %s matches no combination of the matrix", formatEntry(m.Exclude[i]))
		if i < len(m.excludeAt) {
			e := d.errs[len(d.errs)-1]
			e.Pos = m.excludeAt[i]
		}
	}
	if len(combos) == 0 {
		d.errorf(matrixNode, join(path, "matrix"), "a matrix needs at least one variable with values")
		d.failed["scenarios"] = true
		return nil
	}
	body := withoutKey(item, "matrix")
	start := len(d.errs)
	var out []Scenario
	for _, combo := range combos {
		d.combination = combo.String()
		clone := d.substitute(body, combo, path)
		var s Scenario
		d.decode(clone, reflect.ValueOf(&s).Elem(), path)
		s.Matrix = &m
		s.MatrixValues = combo.values
		s.Name = fmt.Sprintf("%s[%s]", s.Name, combo.label(m.Variables))
		s.path = path
		out = append(out, s)
	}
	d.combination = ""
	d.errs = append(d.errs[:start], mergeCombinationErrors(d.errs[start:], len(combos))...)
	return out
}

// mergeCombinationErrors reports a mistake that every combination makes
// once, without naming a combination, and keeps the others per combination.
func mergeCombinationErrors(errs ErrorList, combos int) ErrorList {
	type key struct {
		pos           Position
		path, message string
	}
	count := map[key]int{}
	for _, e := range errs {
		count[key{e.Pos, e.Path, e.Message}]++
	}
	var out ErrorList
	done := map[key]bool{}
	for _, e := range errs {
		k := key{e.Pos, e.Path, e.Message}
		if count[k] >= combos {
			if !done[k] {
				done[k] = true
				out = append(out, &Error{Pos: e.Pos, Path: e.Path, Message: e.Message})
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// Combination is one assignment of values to matrix variables.
type Combination struct {
	names  []string
	values map[string]string
}

func (c Combination) String() string {
	parts := make([]string, len(c.names))
	for i, n := range c.names {
		parts[i] = n + "=" + c.values[n]
	}
	return strings.Join(parts, ", ")
}

// label names a combination by the matrix's own variables only (values that
// include adds to a combination describe it, they do not tell it apart).
func (c Combination) label(vars map[string][]string) string {
	var parts []string
	for _, n := range c.names {
		if _, ok := vars[n]; ok {
			parts = append(parts, n+"="+c.values[n])
		}
	}
	if len(parts) == 0 {
		return strings.ReplaceAll(c.String(), ", ", ",")
	}
	return strings.Join(parts, ",")
}

// size is the number of combinations before include adds any, computed
// without building them.
func (m *Matrix) size() int {
	if len(m.Variables) == 0 {
		return 0
	}
	n := 1
	for _, vals := range m.Variables {
		n *= len(vals)
		if n > 1<<20 {
			return n
		}
	}
	return n
}

// Combinations expands the matrix like GitHub Actions does: the cartesian
// product of the variables, less the combinations an exclude entry matches,
// then each include entry adds its extra variables to every combination it
// matches, or is added as a combination of its own when it matches none
// (so an include can bring back an excluded combination).
func (m *Matrix) Combinations() []Combination {
	names := m.order
	if len(names) != len(m.Variables) { // built in Go rather than decoded
		names = names[:0:0]
		for n := range m.Variables {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	var combos []Combination
	if len(names) > 0 {
		combos = []Combination{{names: nil, values: map[string]string{}}}
		for _, n := range names {
			var next []Combination
			for _, c := range combos {
				for _, val := range m.Variables[n] {
					next = append(next, c.with(n, val))
				}
			}
			combos = next
		}
	}
	m.excludeErr = nil
	for i, ex := range m.Exclude {
		kept := combos[:0:0]
		for _, c := range combos {
			if !c.matchesAll(ex) {
				kept = append(kept, c)
			}
		}
		if len(kept) == len(combos) {
			m.excludeErr = append(m.excludeErr, i)
		}
		combos = kept
	}
	base := len(combos)
	for _, inc := range m.Include {
		keys := sortedKeys(inc)
		matched := false
		for i := 0; i < base; i++ {
			if !combos[i].matches(inc, m.Variables) {
				continue
			}
			matched = true
			for _, k := range keys {
				if _, isVar := m.Variables[k]; !isVar {
					combos[i] = combos[i].with(k, inc[k])
				}
			}
		}
		if !matched && len(keys) > 0 {
			c := Combination{values: map[string]string{}}
			for _, k := range keys {
				c = c.with(k, inc[k])
			}
			combos = append(combos, c)
		}
	}
	return combos
}

func (c Combination) with(name, value string) Combination {
	values := make(map[string]string, len(c.values)+1)
	for k, v := range c.values {
		values[k] = v
	}
	names := append([]string(nil), c.names...)
	if _, ok := values[name]; !ok {
		names = append(names, name)
	}
	values[name] = value
	return Combination{names: names, values: values}
}

func (c Combination) matches(inc map[string]string, vars map[string][]string) bool {
	for k, v := range inc {
		if _, isVar := vars[k]; isVar && c.values[k] != v {
			return false
		}
	}
	return true
}

// matchesAll reports whether every variable of an exclude entry has the
// entry's value in the combination.
func (c Combination) matchesAll(entry map[string]string) bool {
	for k, v := range entry {
		if got, ok := c.values[k]; !ok || got != v {
			return false
		}
	}
	return len(entry) > 0
}

// formatEntry writes an include or exclude entry as it reads in a file.
func formatEntry(entry map[string]string) string {
	parts := make([]string, 0, len(entry))
	for _, k := range sortedKeys(entry) {
		parts = append(parts, k+": "+entry[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// substitute deep-copies a node tree with ${var} replaced in every scalar
// value. Aliases are expanded in the copy.
func (d *decoder) substitute(n *yaml.Node, c Combination, path string) *yaml.Node {
	null := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
	if n.Kind == yaml.AliasNode {
		target, ok := d.resolve(n)
		if !ok || !d.enter(target, n, path) {
			return null
		}
		defer delete(d.active, target)
	}
	n, ok := d.resolve(n)
	if !ok {
		return null
	}
	cp := *n
	cp.Anchor = ""
	if n.Kind == yaml.ScalarNode {
		if strings.Contains(n.Value, "${") {
			cp.Value = variableRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
				name := ref[2 : len(ref)-1]
				v, ok := c.values[name]
				if !ok {
					d.errorf(n, path, "unknown matrix variable %q%s; this scenario's matrix defines %s", name, suggest(name, c.names), strings.Join(c.names, ", "))
					if d.unresolved == nil {
						d.unresolved = map[*yaml.Node]bool{}
					}
					d.unresolved[&cp] = true // its value would only repeat the mistake
					return ref
				}
				return v
			})
			d.substituted[&cp] = true
		}
		return &cp
	}
	cp.Content = make([]*yaml.Node, len(n.Content))
	for i, child := range n.Content {
		childPath := path
		switch {
		case n.Kind == yaml.SequenceNode:
			childPath = fmt.Sprintf("%s[%d]", path, i)
		case n.Kind == yaml.MappingNode && i%2 == 1:
			childPath = join(path, n.Content[i-1].Value)
		}
		cp.Content[i] = d.substitute(child, c, childPath)
	}
	return &cp
}

// mappingValue returns the value of key in a mapping node, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// withoutKey returns a shallow copy of a mapping node without key.
func withoutKey(n *yaml.Node, key string) *yaml.Node {
	cp := *n
	cp.Content = nil
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != key {
			cp.Content = append(cp.Content, n.Content[i], n.Content[i+1])
		}
	}
	return &cp
}
