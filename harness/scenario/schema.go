package scenario

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"sync"
)

// The API types' own source is embedded so that their doc comments become
// the descriptions in the JSON schema and the README reference: one place
// to document a field, and the generated files can never disagree with it.
//
//go:embed types.go
var typesSource string

//go:embed values.go
var valuesSource string

// docs holds the doc comments of the API types ("Suite") and their fields
// ("Suite.Clusters").
var docs = sync.OnceValue(func() map[string]string {
	out := map[string]string{}
	fset := token.NewFileSet()
	for name, src := range map[string]string{"types.go": typesSource, "values.go": valuesSource} {
		f, err := parser.ParseFile(fset, name, src, parser.ParseComments)
		if err != nil {
			panic(fmt.Sprintf("scenario: embedded %s does not parse: %v", name, err))
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				out[ts.Name.Name] = cleanDoc(gd.Doc, ts.Doc)
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, field := range st.Fields.List {
					for _, n := range field.Names {
						out[ts.Name.Name+"."+n.Name] = cleanDoc(field.Doc)
					}
				}
			}
		}
	}
	return out
})

func cleanDoc(groups ...*ast.CommentGroup) string {
	for _, g := range groups {
		if g != nil {
			return strings.Join(strings.Fields(g.Text()), " ")
		}
	}
	return ""
}

// schemaID is where editors find the schema when the file is published.
const schemaID = "https://meshproof.dev/schemas/v1alpha1/scenarios.schema.json"

// matrixRefPattern matches a string holding a ${variable} reference, which a
// matrix replaces before the value is checked.
const matrixRefPattern = `\$\{[A-Za-z][-_A-Za-z0-9]*\}`

// durationPattern is a Go duration in the units the loader accepts: no
// nanoseconds or microseconds, which no timeout or interval can mean.
const durationPattern = `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`

var durationType = reflect.TypeOf(Duration{})

// JSONSchema returns the JSON schema (draft 2020-12) of a scenario file,
// generated from the API types. It is what scenarios.schema.json holds.
func JSONSchema() []byte {
	g := &schemaGen{defs: map[string]any{}}
	root := g.structSchema(reflect.TypeOf(Suite{}))
	root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	root["$id"] = schemaID
	root["title"] = "meshproof scenario file (" + APIVersion + ")"
	g.defs["matrixRef"] = map[string]any{
		"type": "string", "pattern": matrixRefPattern,
		"description": "A ${variable} that a matrix replaces with one of its values.",
	}
	root["$defs"] = g.defs
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(root); err != nil {
		panic(err) // only maps, slices and strings: cannot fail
	}
	return buf.Bytes()
}

type schemaGen struct {
	defs map[string]any
	// inMatrix is set while generating the types of a matrix scenario,
	// the only place where ${variable} may stand for a typed value: the
	// loader substitutes nothing anywhere else.
	inMatrix bool
}

// matrixSuffix names the definitions of types inside a matrix scenario.
const matrixSuffix = "InMatrix"

// orMatrixRef lets a typed value also be written as a ${variable} inside a
// matrix scenario.
func (g *schemaGen) orMatrixRef(s map[string]any) map[string]any {
	if !g.inMatrix {
		return s
	}
	return map[string]any{"anyOf": []any{s, map[string]any{"$ref": "#/$defs/matrixRef"}}}
}

func (g *schemaGen) typeSchema(t reflect.Type) map[string]any {
	switch t {
	case durationType:
		pattern := durationPattern
		if g.inMatrix {
			pattern += "|" + matrixRefPattern
		}
		return map[string]any{"type": "string", "pattern": pattern,
			"description": "A Go duration such as 90s, 2m or 1h30m; at least 1ms."}
	case reflect.TypeOf(Values{}):
		return map[string]any{"type": "object"}
	case reflect.TypeOf(ExpectStep{}):
		return map[string]any{"oneOf": []any{
			map[string]any{"type": "array", "items": g.ref(reflect.TypeOf(Expectation{}))},
			map[string]any{"const": "auto"},
		}}
	case reflect.TypeOf(Matrix{}):
		values := map[string]any{"type": "array", "minItems": 1, "items": map[string]any{"type": []any{"string", "number", "boolean"}}}
		entries := map[string]any{"type": "array", "items": map[string]any{"type": "object", "additionalProperties": map[string]any{"type": []any{"string", "number", "boolean"}}}}
		return map[string]any{
			"type":                 "object",
			"properties":           map[string]any{"include": entries, "exclude": entries},
			"propertyNames":        map[string]any{"pattern": "^[A-Za-z][-_A-Za-z0-9]*$"},
			"additionalProperties": values,
		}
	}
	if e, ok := reflect.Zero(t).Interface().(enum); ok {
		vals := make([]any, 0, len(e.Values()))
		for _, v := range e.Values() {
			vals = append(vals, v)
		}
		return g.orMatrixRef(map[string]any{"type": "string", "enum": vals})
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.typeSchema(t.Elem())
	case reflect.Struct:
		return g.ref(t)
	case reflect.Slice:
		if t == scenariosType {
			return map[string]any{"type": "array", "items": g.scenarioSchema()}
		}
		return map[string]any{"type": "array", "items": g.typeSchema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.typeSchema(t.Elem())}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Int:
		return g.orMatrixRef(map[string]any{"type": "integer"})
	case reflect.Bool:
		return g.orMatrixRef(map[string]any{"type": "boolean"})
	}
	panic(fmt.Sprintf("scenario: no schema for %s", t))
}

func (g *schemaGen) ref(t reflect.Type) map[string]any {
	name := t.Name()
	if g.inMatrix {
		name += matrixSuffix
	}
	if _, ok := g.defs[name]; !ok {
		g.defs[name] = nil // reserve: types may refer to themselves
		g.defs[name] = g.structSchema(t)
	}
	return map[string]any{"$ref": "#/$defs/" + name}
}

// scenarioSchema picks a scenario's definition by whether it has a matrix:
// only a matrix scenario may write ${variable} for a typed value.
func (g *schemaGen) scenarioSchema() map[string]any {
	t := reflect.TypeOf(Scenario{})
	plain := g.ref(t)
	g.inMatrix = true
	inMatrix := g.ref(t)
	g.inMatrix = false
	return map[string]any{
		"if":   map[string]any{"type": "object", "required": []any{"matrix"}},
		"then": inMatrix,
		"else": plain,
	}
}

func (g *schemaGen) structSchema(t reflect.Type) map[string]any {
	info := infoOf(t)
	props := map[string]any{}
	var required []any
	for _, f := range info.fields {
		s := g.typeSchema(t.Field(f.index).Type)
		if d := docs()[t.Name()+"."+t.Field(f.index).Name]; d != "" {
			s = withDescription(s, d)
		}
		props[f.name] = s
		if f.required {
			required = append(required, f.name)
		}
	}
	s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
	switch t {
	case reflect.TypeOf(Suite{}):
		// One apiVersion and one kind: say so, so that editors complete them.
		props["apiVersion"] = withDescription(map[string]any{"const": APIVersion}, docs()["Suite.APIVersion"])
		props["kind"] = withDescription(map[string]any{"const": SuiteKind}, docs()["Suite.Kind"])
	case reflect.TypeOf(Step{}):
		// Exactly one kind per step, from the table of step kinds.
		var oneOf []any
		for _, k := range stepKinds {
			oneOf = append(oneOf, map[string]any{"required": []any{k.name}})
		}
		s["oneOf"] = oneOf
	}
	if d := docs()[t.Name()]; d != "" {
		s["description"] = d
	}
	if len(required) > 0 {
		s["required"] = required
	}
	return s
}

// withDescription adds a description without touching a shared $ref map.
func withDescription(s map[string]any, d string) map[string]any {
	out := make(map[string]any, len(s)+1)
	for k, v := range s {
		out[k] = v
	}
	out["description"] = d
	return out
}

// Reference returns the scenario language reference in Markdown, generated
// from the API types: a table of fields for each type, in the order a
// reader meets them. The README holds a copy, kept in step by a test.
func Reference() string {
	var b strings.Builder
	seen := map[reflect.Type]bool{}
	queue := []reflect.Type{reflect.TypeOf(Suite{})}
	for len(queue) > 0 {
		t := queue[0]
		queue = queue[1:]
		if seen[t] {
			continue
		}
		seen[t] = true
		fmt.Fprintf(&b, "#### %s\n\n%s\n\n", t.Name(), docs()[t.Name()])
		info := infoOf(t)
		if len(info.fields) == 0 {
			continue
		}
		b.WriteString("| field | type | description |\n|---|---|---|\n")
		for _, f := range info.fields {
			ft := t.Field(f.index).Type
			desc := docs()[t.Name()+"."+t.Field(f.index).Name]
			if f.required {
				desc = "**Required.** " + desc
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", f.name, typeName(ft), strings.ReplaceAll(desc, "|", `\|`))
			queue = append(queue, referenced(ft)...)
		}
		b.WriteString("\n")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

// referenced lists the API struct types a field type leads to.
func referenced(t reflect.Type) []reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeOf(ExpectStep{}):
		return []reflect.Type{reflect.TypeOf(Expectation{})}
	case durationType, reflect.TypeOf(Values{}), reflect.TypeOf(Matrix{}):
		return nil
	}
	if t.Kind() == reflect.Struct {
		return []reflect.Type{t}
	}
	return nil
}

// typeName describes a field's type for the reference.
func typeName(t reflect.Type) string {
	switch t {
	case durationType:
		return "duration"
	case reflect.TypeOf(Values{}):
		return "Helm values"
	case reflect.TypeOf(ExpectStep{}):
		return "list of [Expectation](#expectation), or `auto`"
	case reflect.TypeOf(Matrix{}):
		return "variable: [values], exclude: [...], include: [...]"
	}
	if e, ok := reflect.Zero(t).Interface().(enum); ok {
		vals := append([]string(nil), e.Values()...)
		for i, v := range vals {
			vals[i] = "`" + v + "`"
		}
		return strings.Join(vals, " \\| ")
	}
	switch t.Kind() {
	case reflect.Pointer:
		return typeName(t.Elem())
	case reflect.Slice:
		return "list of " + typeName(t.Elem())
	case reflect.Struct:
		return fmt.Sprintf("[%s](#%s)", t.Name(), strings.ToLower(t.Name()))
	case reflect.Map:
		return "map of string to " + typeName(t.Elem())
	case reflect.Int:
		return "integer"
	case reflect.Bool:
		return "boolean"
	}
	return t.Kind().String()
}
