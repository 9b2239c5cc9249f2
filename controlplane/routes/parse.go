package routes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxSize is the largest route table Parse accepts, in bytes.
const MaxSize = 1 << 20

// FieldError is one problem with one field of a route table.
type FieldError struct {
	// Path of the field, e.g. "routes[2].targets[1].weight" ("" for the
	// whole document).
	Path    string `json:"field"`
	Message string `json:"message"`
	// Line in the source document when known (parse errors), else 0.
	Line int `json:"line,omitempty"`
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// ValidationError lists every problem found in a route table. Parse,
// Validate and Load return it (as error) so an API can answer 400 with
// all of them at once; use errors.As to get at the list.
type ValidationError struct {
	Errors []FieldError `json:"errors"`
}

func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return "invalid route table: " + strings.Join(msgs, "; ")
}

// errs collects field errors.
type errs []FieldError

func (l *errs) add(path, format string, args ...any) {
	*l = append(*l, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (l errs) err() error {
	if len(l) == 0 {
		return nil
	}
	return &ValidationError{Errors: l}
}

// Parse reads a route table from YAML or JSON (JSON is YAML). It is
// strict: unknown fields, wrong types, YAML aliases, duplicate keys and
// more than one document are errors, each reported with its path and line.
// Parse does not validate semantics; see Validate and Load.
func Parse(data []byte) (*Table, error) {
	if len(data) > MaxSize {
		return nil, (errs{{Message: fmt.Sprintf("route table larger than %d bytes", MaxSize)}}).err()
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &Table{}, nil // an empty document is an empty table
		}
		return nil, (errs{{Message: cleanYAMLError(err)}}).err()
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, (errs{{Message: "more than one YAML document", Line: extra.Line}}).err()
	} else if !errors.Is(err, io.EOF) {
		return nil, (errs{{Message: cleanYAMLError(err)}}).err()
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return &Table{}, nil
		}
		root = root.Content[0]
	}
	var e errs
	check(root, reflect.TypeFor[Table](), "", &e)
	if len(e) > 0 {
		return nil, e.err()
	}
	var t Table
	if err := root.Decode(&t); err != nil {
		// check accepts only what Decode accepts; this is a safety net.
		return nil, (errs{{Message: cleanYAMLError(err)}}).err()
	}
	return &t, nil
}

// UnmarshalJSON makes a Table embedded in a JSON document (an API body)
// go through the same strict parser.
func (t *Table) UnmarshalJSON(b []byte) error {
	p, err := Parse(b)
	if err != nil {
		return err
	}
	*t = *p
	return nil
}

// Load parses and validates a route table and returns its canonical form.
func Load(data []byte, opts ValidateOptions) (*Table, error) {
	t, err := Parse(data)
	if err != nil {
		return nil, err
	}
	// Validate what the author wrote, so list indices in paths match the
	// source; then normalise.
	if err := t.Validate(opts); err != nil {
		return nil, err
	}
	return t.Canonical(), nil
}

func cleanYAMLError(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	return strings.ReplaceAll(s, "\n", " ")
}

var durationType = reflect.TypeFor[Duration]()

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// check walks node against type t and records every shape problem:
// unknown fields, wrong node kinds and scalars that do not decode.
func check(n *yaml.Node, t reflect.Type, path string, e *errs) {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		*e = append(*e, FieldError{Path: path, Message: "YAML anchors and aliases are not supported", Line: n.Line})
		return
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // null: the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			*e = append(*e, FieldError{Path: path, Message: "must be a duration string such as \"1.5s\"", Line: n.Line})
			return
		}
		if _, err := parseDuration(n.Value); err != nil {
			*e = append(*e, FieldError{Path: path, Message: err.Error(), Line: n.Line})
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			*e = append(*e, FieldError{Path: path, Message: "must be an object", Line: n.Line})
			return
		}
		fields := structFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok || k.Kind != yaml.ScalarNode {
				*e = append(*e, FieldError{Path: join(path, k.Value), Message: "unknown field" + suggest(k.Value, fields), Line: k.Line})
				continue
			}
			check(v, f.Type, join(path, k.Value), e)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			*e = append(*e, FieldError{Path: path, Message: "must be an object", Line: n.Line})
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				*e = append(*e, FieldError{Path: path, Message: "keys must be strings", Line: k.Line})
				continue
			}
			check(v, t.Elem(), join(path, k.Value), e)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			*e = append(*e, FieldError{Path: path, Message: "must be a list", Line: n.Line})
			return
		}
		for i, c := range n.Content {
			check(c, t.Elem(), path+"["+strconv.Itoa(i)+"]", e)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			*e = append(*e, FieldError{Path: path, Message: "must be a string", Line: n.Line})
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			*e = append(*e, FieldError{Path: path, Message: "must be true or false", Line: n.Line})
		}
	case reflect.Int:
		var v int
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
			*e = append(*e, FieldError{Path: path, Message: "must be an integer", Line: n.Line})
		}
	case reflect.Float64:
		var v float64
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || n.Decode(&v) != nil {
			*e = append(*e, FieldError{Path: path, Message: "must be a number", Line: n.Line})
		}
	default:
		*e = append(*e, FieldError{Path: path, Message: "unsupported field type " + t.String(), Line: n.Line})
	}
}

// structFields maps yaml keys to fields.
func structFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		m[name] = f
	}
	return m
}

func suggest(key string, fields map[string]reflect.StructField) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return " (known: " + strings.Join(names, ", ") + ")"
}
