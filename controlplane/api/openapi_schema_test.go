package api

import (
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// TestOpenAPIRouteTableSchema keeps the RouteTable schema of openapi.json
// in step with routes.Table: every struct's fields are exactly the
// schema's properties (closed with additionalProperties: false), with
// matching JSON types, all the way down.
func TestOpenAPIRouteTableSchema(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	s := &schemaWalk{t: t, schemas: doc.Components.Schemas}
	s.check(map[string]any{"$ref": "#/components/schemas/RouteTable"}, reflect.TypeFor[routes.Table](), "RouteTable")
	if s.structs < 15 {
		t.Fatalf("walked %d structs, want every struct of routes.Table", s.structs)
	}
}

type schemaWalk struct {
	t       *testing.T
	schemas map[string]map[string]any
	structs int
}

// resolve follows $ref and a single-element allOf (used to describe a
// referenced schema).
func (s *schemaWalk) resolve(sc map[string]any, path string) map[string]any {
	for range 4 {
		if r, ok := sc["$ref"].(string); ok {
			name := strings.TrimPrefix(r, "#/components/schemas/")
			next, ok := s.schemas[name]
			if !ok {
				s.t.Fatalf("%s: $ref %s does not exist", path, r)
			}
			sc = next
			continue
		}
		if all, ok := sc["allOf"].([]any); ok && len(all) == 1 {
			sc, _ = all[0].(map[string]any)
			continue
		}
		return sc
	}
	s.t.Fatalf("%s: $ref loop", path)
	return nil
}

var durationType = reflect.TypeFor[routes.Duration]()

func (s *schemaWalk) check(sc map[string]any, ty reflect.Type, path string) {
	sc = s.resolve(sc, path)
	for ty.Kind() == reflect.Pointer {
		ty = ty.Elem()
	}
	want := map[reflect.Kind]string{
		reflect.Struct: "object", reflect.Map: "object", reflect.Slice: "array", reflect.String: "string",
		reflect.Bool: "boolean", reflect.Int: "integer", reflect.Float64: "number",
	}[ty.Kind()]
	if ty == durationType {
		want = "string"
	}
	if got, _ := sc["type"].(string); got != want {
		s.t.Errorf("%s: schema type %q, want %q (Go %s)", path, got, want, ty)
		return
	}
	switch {
	case ty == durationType:
	case ty.Kind() == reflect.Struct:
		s.structs++
		if ap, ok := sc["additionalProperties"].(bool); !ok || ap {
			s.t.Errorf("%s: additionalProperties must be false (unknown fields are rejected)", path)
		}
		props, _ := sc["properties"].(map[string]any)
		fields := map[string]reflect.Type{}
		for i := range ty.NumField() {
			f := ty.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		for _, name := range slices.Sorted(maps.Keys(fields)) {
			p, ok := props[name].(map[string]any)
			if !ok {
				s.t.Errorf("%s.%s: not in the schema", path, name)
				continue
			}
			s.check(p, fields[name], path+"."+name)
		}
		for _, name := range slices.Sorted(maps.Keys(props)) {
			if _, ok := fields[name]; !ok {
				s.t.Errorf("%s.%s: in the schema but not a field of %s", path, name, ty)
			}
		}
	case ty.Kind() == reflect.Slice:
		items, _ := sc["items"].(map[string]any)
		if items == nil {
			s.t.Errorf("%s: array without items", path)
			return
		}
		s.check(items, ty.Elem(), path+"[]")
	case ty.Kind() == reflect.Map:
		ap, _ := sc["additionalProperties"].(map[string]any)
		if ap == nil {
			s.t.Errorf("%s: map without an additionalProperties schema", path)
			return
		}
		s.check(ap, ty.Elem(), path+".*")
	}
}
