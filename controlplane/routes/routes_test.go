package routes

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if string(want) != string(got) {
		t.Fatalf("%s differs (run with -update to accept):\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

// TestValidGolden loads every testdata/valid file and compares its
// canonical YAML with the golden file beside it; the canonical form must
// be a fixed point.
func TestValidGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*")
	files = append(files, "testdata/default.yaml")
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.yaml") {
			continue
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			tab, err := Load(data, ValidateOptions{})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			out := tab.YAML()
			golden(t, strings.TrimSuffix(f, filepath.Ext(f))+".golden.yaml", out)
			again, err := Load(out, ValidateOptions{})
			if err != nil {
				t.Fatalf("reload canonical: %v", err)
			}
			if !Equal(tab, again) || tab.Hash() != again.Hash() {
				t.Fatal("canonical YAML does not round-trip")
			}
			// JSON round trip through the strict UnmarshalJSON.
			var viaJSON Table
			if err := json.Unmarshal(tab.JSON(), &viaJSON); err != nil {
				t.Fatalf("json round trip: %v", err)
			}
			if !Equal(tab, &viaJSON) {
				t.Fatal("canonical JSON does not round-trip")
			}
		})
	}
	if n < 3 {
		t.Fatalf("found %d valid files", n)
	}
}

// TestInvalidGolden checks the full error list of every testdata/invalid
// file against its golden .errors file.
func TestInvalidGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*")
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, ".errors") {
			continue
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			opts := ValidateOptions{}
			if strings.Contains(f, "unknown-service") {
				opts.KnownServices = []string{"pets", "sync"}
			}
			_, err = Load(data, opts)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Load err = %v, want *ValidationError", err)
			}
			var b strings.Builder
			for _, fe := range ve.Errors {
				b.WriteString(fe.Error())
				if fe.Line > 0 {
					b.WriteString(" (line ")
					b.WriteString(strconv.Itoa(fe.Line))
					b.WriteString(")")
				}
				b.WriteString("\n")
			}
			golden(t, strings.TrimSuffix(f, filepath.Ext(f))+".errors", []byte(b.String()))
		})
	}
	if n < 5 {
		t.Fatalf("found %d invalid files", n)
	}
}

func TestValidateErrors(t *testing.T) {
	base := func() *Table {
		return &Table{Routes: []Route{{
			Name:    "r",
			Match:   Match{Prefix: "/"},
			Targets: []Target{{Service: "a", Weight: 50}, {Service: "a", Subset: "v2", Weight: 50}},
		}}}
	}
	tests := []struct {
		desc   string
		mutate func(*Table)
		want   []string // exact error strings, in order
	}{
		{desc: "valid", mutate: func(*Table) {}},
		{
			desc:   "weights do not sum to 100",
			mutate: func(t *Table) { t.Routes[0].Targets[1].Weight = 40 },
			want:   []string{"routes[0].targets[1].weight: weights must sum to 100, got 90"},
		},
		{
			desc: "duplicate names and several errors at once",
			mutate: func(t *Table) {
				t.Routes = append(t.Routes, t.Routes[0], t.Routes[0])
				t.Routes[2].Match = Match{}
			},
			want: []string{
				"routes[1].name: duplicate route name \"r\" (also routes[0])",
				"routes[2].name: duplicate route name \"r\" (also routes[0])",
				"routes[2].match: exactly one of prefix, path or regex is required, got 0",
			},
		},
		{
			desc: "per-try timeout above route timeout",
			mutate: func(t *Table) {
				t.Routes[0].Timeout = Dur(time.Second)
				t.Routes[0].Retries = &Retries{PerTryTimeout: Dur(2 * time.Second)}
			},
			want: []string{"routes[0].retries.per_try_timeout: 2s exceeds the route timeout 1s"},
		},
		{
			desc:   "negative timeout",
			mutate: func(t *Table) { t.Routes[0].Timeout = Dur(-time.Second) },
			want:   []string{"routes[0].timeout: must be between 0s and 1h0m0s, got -1s"},
		},
		{
			desc:   "edge must be alone",
			mutate: func(t *Table) { t.Routes[0].Targets[0].Service = "edge" },
			want:   []string{"routes[0].targets[0].service: \"edge\" must be the only target"},
		},
		{
			desc: "subject rate limit on a public route",
			mutate: func(t *Table) {
				t.Routes[0].Auth = &Auth{Public: true}
				t.Routes[0].RateLimit = &RateLimit{RPS: 1, Key: "subject"}
			},
			want: []string{"routes[0].rate_limit.key: subject needs an authenticated route (auth.public is true)"},
		},
		{
			desc:   "timeout 0s (disabled) is allowed when written",
			mutate: func(t *Table) { t.Routes[0].Timeout = Dur(0) },
		},
		{
			desc:   "max_body_bytes 0 (unlimited) on an authenticated route",
			mutate: func(t *Table) { t.Routes[0].MaxBodyBytes = ptr[int](0) },
		},
		{
			desc: "max_body_bytes 0 (unlimited) on a public route",
			mutate: func(t *Table) {
				t.Routes[0].Auth = &Auth{Public: true}
				t.Routes[0].MaxBodyBytes = ptr[int](0)
			},
			want: []string{"routes[0].max_body_bytes: 0 (unlimited) is not allowed on a public route (auth.public is true): set a limit"},
		},
		{
			desc: "max_body_bytes limit on a public route",
			mutate: func(t *Table) {
				t.Routes[0].Auth = &Auth{Public: true}
				t.Routes[0].MaxBodyBytes = ptr[int](65536)
			},
		},
		{
			desc:   "max_body_bytes negative",
			mutate: func(t *Table) { t.Routes[0].MaxBodyBytes = ptr[int](-1) },
			want:   []string{"routes[0].max_body_bytes: must be 0-1073741824 (0: unlimited), got -1"},
		},
		{
			desc:   "max_body_bytes above 1 GiB",
			mutate: func(t *Table) { t.Routes[0].MaxBodyBytes = ptr[int](MaxMaxBodyBytes + 1) },
			want:   []string{"routes[0].max_body_bytes: must be 0-1073741824 (0: unlimited), got 1073741825"},
		},
		{
			desc:   "panic_threshold 0 disables panic mode",
			mutate: func(t *Table) { t.Services = map[string]Service{"a": {PanicThreshold: ptr(0.0)}} },
		},
		{
			desc:   "panic_threshold 100",
			mutate: func(t *Table) { t.Services = map[string]Service{"a": {PanicThreshold: ptr(100.0)}} },
		},
		{
			desc:   "panic_threshold above 100",
			mutate: func(t *Table) { t.Services = map[string]Service{"a": {PanicThreshold: ptr(100.5)}} },
			want:   []string{"services.a.panic_threshold: must be 0-100, got 100.5"},
		},
		{
			desc:   "panic_threshold negative",
			mutate: func(t *Table) { t.Services = map[string]Service{"a": {PanicThreshold: ptr(-1.0)}} },
			want:   []string{"services.a.panic_threshold: must be 0-100, got -1"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			tab := base()
			tc.mutate(tab)
			err := tab.Validate(ValidateOptions{})
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("err = %v, want *ValidationError", err)
			}
			var got []string
			for _, fe := range ve.Errors {
				got = append(got, fe.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestCanonicalAndHash(t *testing.T) {
	a, err := Load([]byte(`
routes:
  - name: r
    match: {prefix: /, methods: [post, get]}
    auth: {roles: [b, a]}
    targets: [{service: s}]
`), ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load([]byte(`{"routes":[{"name":"r","match":{"prefix":"/","methods":["GET","POST"]},"auth":{"roles":["a","b"]},"targets":[{"service":"s","weight":100}]}]}`), ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !Equal(a, b) || a.Hash() != b.Hash() {
		t.Fatalf("equivalent tables differ:\n%s\n%s", a.JSON(), b.JSON())
	}
	c := b.Clone()
	c.Routes[0].Targets[0].Service = "t"
	if Equal(b, c) || b.Hash() == c.Hash() {
		t.Fatal("different tables compare equal")
	}
	if b.Routes[0].Targets[0].Service != "s" {
		t.Fatal("Clone shares memory")
	}
}

func TestSetWeights(t *testing.T) {
	def := Default()
	tests := []struct {
		desc    string
		weights map[string]int
		want    []Target
		wantErr string
	}{
		{
			desc:    "subsets of the only service",
			weights: map[string]int{"v1": 90, "v2": 10},
			want:    []Target{{Service: "pets", Subset: "v1", Weight: 90}, {Service: "pets", Subset: "v2", Weight: 10}},
		},
		{
			desc:    "service and explicit subset",
			weights: map[string]int{"pets": 50, "pets~v2": 50},
			want:    []Target{{Service: "pets", Weight: 50}, {Service: "pets", Subset: "v2", Weight: 50}},
		},
		{desc: "empty", weights: map[string]int{}, wantErr: "weights: at least one weight is required"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := def.SetWeights("pets", tc.weights)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := got.Route("pets")
			if jsonOf(r.Targets) != jsonOf(tc.want) {
				t.Fatalf("targets = %s, want %s", jsonOf(r.Targets), jsonOf(tc.want))
			}
			if err := got.Validate(ValidateOptions{}); err != nil {
				t.Fatal(err)
			}
			if def.Route("pets").Targets[0].Subset != "" {
				t.Fatal("SetWeights modified its receiver")
			}
		})
	}
	if _, err := def.SetWeights("nope", map[string]int{"v1": 100}); err == nil {
		t.Fatal("unknown route accepted")
	}
}

func jsonOf(v any) string { b, _ := json.Marshal(v); return string(b) }

func TestDefault(t *testing.T) {
	d := Default()
	for _, name := range []string{"auth", "well-known", "pets", "sync", "stats"} {
		if d.Route(name) == nil {
			t.Fatalf("default table lacks route %q", name)
		}
	}
	if d.Route("auth").Targets[0].Service != EdgeService {
		t.Fatal("auth is not served by the edge")
	}
	if err := d.Validate(ValidateOptions{KnownServices: []string{"pets", "sync", "stats"}}); err != nil {
		t.Fatal(err)
	}
}

func TestParseLimits(t *testing.T) {
	big := make([]byte, MaxSize+1)
	if _, err := Parse(big); err == nil {
		t.Fatal("oversized table accepted")
	}
	if _, err := Parse([]byte("routes: []\n---\nroutes: []\n")); err == nil || !strings.Contains(err.Error(), "more than one") {
		t.Fatalf("two documents: %v", err)
	}
	tab, err := Parse([]byte("  \n"))
	if err != nil || len(tab.Routes) != 0 {
		t.Fatalf("blank: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
