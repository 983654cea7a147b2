package scenario

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// subMillisecondUnit matches the units of durations too short to mean
// anything here, to suggest a unit that does.
var subMillisecondUnit = regexp.MustCompile(`(ns|us|µs)`)

// maxNodes bounds the work of one decode, so that a file of nested aliases
// (a "billion laughs" document) is an error instead of a hang.
const maxNodes = 1 << 18

// decoder turns a YAML node tree into the API types strictly: every unknown
// field, wrong type, bad enum and unparsable duration becomes an Error with
// the node's position, and decoding goes on so that all of them are found.
type decoder struct {
	file string
	errs ErrorList
	// substituted marks scalars whose text came from a matrix variable; they
	// were strings in the file but may stand for numbers.
	substituted map[*yaml.Node]bool
	// failed holds the paths that had decode errors; checks of the decoded
	// values would only repeat those errors, so they are dropped.
	failed map[string]bool
	// active holds the alias targets and merged mappings being expanded; a
	// node met again while it is active refers to itself, which would
	// otherwise recurse until the node budget runs out.
	active  map[*yaml.Node]bool
	visited int
	// combination names the matrix combination being decoded, if any.
	combination string
	// unresolved marks scalars holding a matrix variable the matrix does
	// not define: that error is theirs, their value is not checked.
	unresolved map[*yaml.Node]bool
}

func (d *decoder) pos(n *yaml.Node) Position {
	return Position{File: d.file, Line: n.Line, Column: n.Column}
}

func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	d.failed[path] = true
	d.errs = append(d.errs, &Error{Pos: d.pos(n), Path: path, Message: fmt.Sprintf(format, args...), combination: d.combination})
}

// nodeDecoder is implemented by types that read themselves from YAML.
type nodeDecoder interface {
	decodeYAML(d *decoder, n *yaml.Node, path string)
}

// enum is implemented by the string types with a closed set of values.
type enum interface{ Values() []string }

var (
	sourceType    = reflect.TypeOf(Source{})
	scenariosType = reflect.TypeOf([]Scenario(nil))
)

// resolve follows aliases and counts the work done.
func (d *decoder) resolve(n *yaml.Node) (*yaml.Node, bool) {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	d.visited++
	if d.visited > maxNodes {
		if d.visited == maxNodes+1 {
			d.errorf(n, "", "document too large or too deeply aliased (over %d nodes)", maxNodes)
		}
		return n, false
	}
	return n, n != nil
}

// enter marks an alias target or merged mapping as being expanded; it
// reports false (with an error) when it already is.
func (d *decoder) enter(n *yaml.Node, at *yaml.Node, path string) bool {
	if d.active[n] {
		d.errorf(at, path, "this alias refers to a node that contains it")
		return false
	}
	d.active[n] = true
	return true
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n != nil && n.Kind == yaml.AliasNode {
		target, ok := d.resolve(n)
		if !ok || !d.enter(target, n, path) {
			return
		}
		defer delete(d.active, target)
	}
	n, ok := d.resolve(n)
	if !ok || d.unresolved[n] {
		return
	}
	if v.CanAddr() {
		if nd, ok := v.Addr().Interface().(nodeDecoder); ok {
			nd.decodeYAML(d, n, path)
			return
		}
	}
	if v.Type() == scenariosType {
		d.decodeScenarios(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if isNull(n) {
			d.errorf(n, path, "must not be empty")
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Map:
		d.decodeStringMap(n, v, path)
	case reflect.String:
		s, ok := d.scalar(n, path, "!!str", "a string")
		if !ok {
			return
		}
		if e, isEnum := v.Interface().(enum); isEnum && !contains(e.Values(), s) {
			d.errorf(n, path, "unknown value %q; want one of %s%s", s, strings.Join(e.Values(), ", "), suggest(s, e.Values()))
			return
		}
		v.SetString(s)
	case reflect.Int:
		s, ok := d.scalar(n, path, "!!int", "an integer")
		if !ok {
			return
		}
		i, err := strconv.Atoi(s)
		if err != nil {
			d.errorf(n, path, "must be an integer, got %q", s)
			return
		}
		v.SetInt(int64(i))
	case reflect.Bool:
		s, ok := d.scalar(n, path, "!!bool", "true or false")
		if !ok {
			return
		}
		b, err := strconv.ParseBool(s)
		if err != nil {
			d.errorf(n, path, "must be true or false, got %q", s)
			return
		}
		v.SetBool(b)
	default:
		panic(fmt.Sprintf("scenario: no decoder for %s", v.Type()))
	}
}

// scalar returns the text of a scalar of the wanted tag. A substituted
// matrix value counts as any scalar type, since ${var} had to be written as
// a string.
func (d *decoder) scalar(n *yaml.Node, path, tag, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, path, "must be %s, got %s", want, describe(n))
		return "", false
	}
	if n.ShortTag() != tag && !d.substituted[n] {
		hint := ""
		if tag == "!!str" {
			hint = fmt.Sprintf("; quote it: \"%s\"", n.Value)
		}
		d.errorf(n, path, "must be %s, got %s%s", want, describe(n), hint)
		return "", false
	}
	return n.Value, true
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// describe names a node's type for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!str":
			return fmt.Sprintf("string %q", n.Value)
		case "!!int":
			return "integer " + n.Value
		case "!!float":
			return "number " + n.Value
		case "!!bool":
			return "boolean " + n.Value
		}
		return n.ShortTag() + " " + n.Value
	}
	return "an unexpected node"
}

type structField struct {
	index    int
	name     string
	required bool
}

// structInfo is what decoding needs to know of a struct type.
type structInfo struct {
	fields      []structField
	byName      map[string]structField
	names       []string
	sourceIndex int // index of the Source field, or -1
}

var structInfos sync.Map // reflect.Type → *structInfo

// infoOf lists the YAML fields of a struct type from its json tags.
func infoOf(t reflect.Type) *structInfo {
	if info, ok := structInfos.Load(t); ok {
		return info.(*structInfo)
	}
	info := &structInfo{byName: map[string]structField{}, sourceIndex: -1}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Type == sourceType {
			info.sourceIndex = i
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || name == "" || !f.IsExported() {
			continue
		}
		sf := structField{index: i, name: name, required: !strings.Contains(opts, "omitempty")}
		info.fields = append(info.fields, sf)
		info.byName[name] = sf
		info.names = append(info.names, name)
	}
	structInfos.Store(t, info)
	return info
}

// mappingPairs returns a mapping's key/value pairs, with YAML merge keys
// (<<: *anchor) expanded first so that explicit keys override them.
func (d *decoder) mappingPairs(n *yaml.Node, path string) (pairs [][2]*yaml.Node, explicit map[*yaml.Node]bool) {
	explicit = map[*yaml.Node]bool{}
	if !d.active[n] { // a mapping merging itself, directly or not
		d.active[n] = true
		defer delete(d.active, n)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			src, ok := d.resolve(val)
			if !ok {
				continue
			}
			var sources []*yaml.Node
			if src.Kind == yaml.SequenceNode {
				sources = src.Content
			} else {
				sources = []*yaml.Node{src}
			}
			for _, s := range sources {
				s, ok := d.resolve(s)
				if !ok || s.Kind != yaml.MappingNode {
					d.errorf(val, path, "a merge key (<<) must refer to a mapping")
					continue
				}
				if !d.enter(s, val, path) {
					continue
				}
				sub, _ := d.mappingPairs(s, path)
				delete(d.active, s)
				pairs = append(pairs, sub...)
			}
			continue
		}
		explicit[k] = true
		pairs = append(pairs, [2]*yaml.Node{k, val})
	}
	return pairs, explicit
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "must be a mapping, got %s", describe(n))
		return
	}
	info := infoOf(v.Type())
	src := Source{Position: d.pos(n), fields: make(map[string]Position, len(n.Content)/2)}
	if info.sourceIndex >= 0 {
		defer func() { v.Field(info.sourceIndex).Set(reflect.ValueOf(src)) }()
	}
	pairs, explicit := d.mappingPairs(n, path)
	owners := misindented(v.Type(), info, pairs)
	seen := map[string]*yaml.Node{}
	for _, kv := range pairs {
		k, val := kv[0], kv[1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "field names must be plain strings")
			continue
		}
		f, ok := info.byName[k.Value]
		if !ok {
			if owner := owners[k.Value]; owner != nil {
				// What belongs inside an empty sibling sits beside it:
				// the sibling's emptiness and what it leaves unset are
				// this one mistake.
				d.errorf(k, join(path, k.Value), "%s is a field of %s (line %d), but it is indented as a field beside it, so %s is empty: indent %s (and what follows it) further than %s",
					k.Value, owner.Value, owner.Line, owner.Value, k.Value, owner.Value)
				d.failed[path] = true
				continue
			}
			d.errorf(k, join(path, k.Value), "unknown field %q%s", k.Value, suggest(k.Value, info.names))
			continue
		}
		if isNull(val) && slices.ContainsFunc(pairs, func(p [2]*yaml.Node) bool { return owners[p[0].Value] == k }) {
			src.fields[k.Value] = d.pos(val)
			seen[k.Value] = k
			continue
		}
		if prev, dup := seen[k.Value]; dup && explicit[prev] && explicit[k] {
			d.errorf(k, join(path, k.Value), "duplicate field (first set at line %d)", prev.Line)
			continue
		}
		seen[k.Value] = k
		src.fields[k.Value] = d.pos(val)
		fv := v.Field(f.index)
		fv.Set(reflect.Zero(fv.Type())) // an explicit key overrides a merged one
		d.decode(val, fv, join(path, k.Value))
	}
	for _, f := range info.fields {
		if _, ok := seen[f.name]; !ok && f.required {
			d.errorf(n, path, "missing required field %q", f.name)
			d.failed[join(path, f.name)] = true
		}
	}
}

// misindented finds the fields of a mapping that belong inside a sibling
// left empty (a mis-indented block: "mtls:" with its fields at its own
// level): for each such unknown key, the key of the empty sibling whose
// struct type has a field of that name.
func misindented(t reflect.Type, info *structInfo, pairs [][2]*yaml.Node) map[string]*yaml.Node {
	var out map[string]*yaml.Node
	for _, kv := range pairs {
		k := kv[0]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if _, known := info.byName[k.Value]; known {
			continue
		}
		for _, sib := range pairs {
			f, ok := info.byName[sib[0].Value]
			if !ok || !isNull(sib[1]) {
				continue
			}
			ft := t.Field(f.index).Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() != reflect.Struct {
				continue
			}
			if _, has := infoOf(ft).byName[k.Value]; has {
				if out == nil {
					out = map[string]*yaml.Node{}
				}
				out[k.Value] = sib[0]
				break
			}
		}
	}
	return out
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "must be a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

// decodeStringMap reads a mapping with string keys into a map.
func (d *decoder) decodeStringMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "must be a mapping, got %s", describe(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		panic(fmt.Sprintf("scenario: no decoder for %s", v.Type()))
	}
	m := reflect.MakeMap(v.Type())
	pairs, _ := d.mappingPairs(n, path)
	for _, kv := range pairs {
		k, ok := d.scalar(kv[0], path, "!!str", "a string key")
		if !ok {
			continue
		}
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decode(kv[1], ev, join(path, k))
		m.SetMapIndex(reflect.ValueOf(k).Convert(v.Type().Key()), ev)
	}
	v.Set(m)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// decodeYAML reads a Go duration string.
func (dur *Duration) decodeYAML(d *decoder, n *yaml.Node, path string) {
	if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") && !d.substituted[n] {
		d.errorf(n, path, "a duration needs a unit: write %[1]ss (seconds), %[1]sm (minutes) or %[1]sh (hours), not the bare number %[1]s", n.Value)
		return
	}
	s, ok := d.scalar(n, path, "!!str", "a duration such as 90s or 2m")
	if !ok {
		return
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		if _, numErr := strconv.ParseFloat(s, 64); numErr == nil {
			d.errorf(n, path, "a duration needs a unit: write %[1]ss (seconds), %[1]sm (minutes) or %[1]sh (hours), not the bare number %[1]s", s)
			return
		}
		d.errorf(n, path, "invalid duration %q; write it like 90s, 2m or 1h30m", s)
		return
	}
	if v <= 0 {
		d.errorf(n, path, "must be longer than zero, got %s", s)
		return
	}
	if v < time.Millisecond {
		d.errorf(n, path, "%s is shorter than a millisecond, which no timeout, interval or wait can mean; write ms, s, m or h (e.g. %s)", s, subMillisecondUnit.ReplaceAllString(s, "s"))
		return
	}
	dur.Duration = v
}

// decodeYAML reads free-form Helm values.
func (vals *Values) decodeYAML(d *decoder, n *yaml.Node, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "must be a mapping of Helm values, got %s", describe(n))
		return
	}
	var m map[string]any
	if err := n.Decode(&m); err != nil {
		d.errorf(n, path, "invalid Helm values: %v", err)
		return
	}
	*vals = m
}

// decodeYAML reads either a table of expectations or the word auto.
func (e *ExpectStep) decodeYAML(d *decoder, n *yaml.Node, path string) {
	if n.Kind == yaml.ScalarNode && n.Value == "auto" {
		e.Auto = true
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "must be a list of expectations (or auto), got %s", describe(n))
		return
	}
	d.decodeSlice(n, reflect.ValueOf(&e.Table).Elem(), path)
}

// decodeYAML reads matrix variables (name: [values]) and include.
func (m *Matrix) decodeYAML(d *decoder, n *yaml.Node, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "must be a mapping of variable names to lists of values, got %s", describe(n))
		return
	}
	m.Variables = map[string][]string{}
	pairs, _ := d.mappingPairs(n, path)
	for _, kv := range pairs {
		k, val := kv[0], kv[1]
		name, ok := d.scalar(k, path, "!!str", "a variable name")
		if !ok {
			continue
		}
		if name == "include" {
			m.Include, _ = d.includeList(val, join(path, name))
			continue
		}
		if name == "exclude" {
			m.Exclude, m.excludeAt = d.includeList(val, join(path, name))
			continue
		}
		if !validVariable(name) {
			d.errorf(k, join(path, name), "variable names are letters, digits, - and _, starting with a letter")
			continue
		}
		values := d.scalarList(val, join(path, name))
		if len(values) == 0 {
			d.errorf(val, join(path, name), "a matrix variable needs at least one value")
			continue
		}
		m.Variables[name] = values
		m.order = append(m.order, name)
	}
}

// scalarList reads a list of scalars of any type as strings: matrix values
// are text substituted into the scenario, which decides their type.
func (d *decoder) scalarList(n *yaml.Node, path string) []string {
	n, ok := d.resolve(n)
	if !ok {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "must be a list of values, got %s", describe(n))
		return nil
	}
	var out []string
	for i, item := range n.Content {
		if s, ok := d.anyScalar(item, fmt.Sprintf("%s[%d]", path, i)); ok {
			out = append(out, s)
		}
	}
	return out
}

// includeList reads matrix.include or matrix.exclude: a list of
// variable-to-value mappings, and where each was written.
func (d *decoder) includeList(n *yaml.Node, path string) (out []map[string]string, at []Position) {
	n, ok := d.resolve(n)
	if !ok {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "must be a list of mappings, got %s", describe(n))
		return nil, nil
	}
	for i, item := range n.Content {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		item, ok := d.resolve(item)
		if !ok {
			continue
		}
		if item.Kind != yaml.MappingNode {
			d.errorf(item, ipath, "must be a mapping of variables to values, got %s", describe(item))
			continue
		}
		entry := map[string]string{}
		pairs, _ := d.mappingPairs(item, ipath)
		for _, kv := range pairs {
			k, ok := d.scalar(kv[0], ipath, "!!str", "a variable name")
			if !ok {
				continue
			}
			if !validVariable(k) {
				d.errorf(kv[0], join(ipath, k), "variable names are letters, digits, - and _, starting with a letter")
				continue
			}
			if v, ok := d.anyScalar(kv[1], join(ipath, k)); ok {
				entry[k] = v
			}
		}
		out = append(out, entry)
		at = append(at, d.pos(item))
	}
	return out, at
}

func (d *decoder) anyScalar(n *yaml.Node, path string) (string, bool) {
	n, ok := d.resolve(n)
	if !ok {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || isNull(n) {
		d.errorf(n, path, "must be a single value, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func validVariable(s string) bool {
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '-' || r == '_'):
		default:
			return false
		}
	}
	return s != ""
}
