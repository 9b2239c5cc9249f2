package routes

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultYAML is the default route table of `make run` (testdata/default.yaml).
//
//go:embed testdata/default.yaml
var DefaultYAML []byte

// Default returns a fresh copy of the default route table.
func Default() *Table {
	t, err := Load(DefaultYAML, ValidateOptions{})
	if err != nil {
		panic(fmt.Sprintf("routes: embedded default table is invalid: %v", err))
	}
	return t
}

// Clone returns a deep copy of t.
func (t *Table) Clone() *Table {
	b, err := json.Marshal(t)
	if err != nil {
		panic(fmt.Sprintf("routes: clone: %v", err))
	}
	var c Table
	if err := json.Unmarshal(b, &c); err != nil {
		panic(fmt.Sprintf("routes: clone: %v", err))
	}
	return &c
}

// Canonical returns a normalised deep copy of t: methods upper case, header
// names and retry conditions lower case, lists that are sets sorted and
// deduplicated, a single target's omitted weight made 100, empty lists and
// maps dropped. Route order is kept (it is significant). Defaults are not
// filled in, so the canonical form stays what its author wrote. Two tables
// with the same meaning and spelling differences have equal canonical forms.
func (t *Table) Canonical() *Table {
	c := t.Clone()
	if c.Routes == nil {
		c.Routes = []Route{}
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		r.Match.Methods = sortedSet(r.Match.Methods, strings.ToUpper)
		for j := range r.Match.Headers {
			r.Match.Headers[j].Name = strings.ToLower(r.Match.Headers[j].Name)
		}
		if len(r.Match.Headers) == 0 {
			r.Match.Headers = nil
		}
		if r.Auth != nil {
			r.Auth.Roles = sortedSet(r.Auth.Roles, nil)
			if !r.Auth.Public && len(r.Auth.Roles) == 0 {
				r.Auth = nil // same as no auth block: authenticated
			}
		}
		if len(r.Targets) == 1 && r.Targets[0].Weight == 0 {
			r.Targets[0].Weight = 100
		}
		if len(r.Targets) == 0 {
			r.Targets = nil
		}
		if rt := r.Retries; rt != nil {
			rt.RetryOn = sortedSet(rt.RetryOn, strings.ToLower)
			slices.Sort(rt.RetriableStatusCodes)
			rt.RetriableStatusCodes = slices.Compact(rt.RetriableStatusCodes)
			if len(rt.RetriableStatusCodes) == 0 {
				rt.RetriableStatusCodes = nil
			}
		}
		if rl := r.RateLimit; rl != nil {
			rl.Key = strings.ToLower(rl.Key)
		}
	}
	if len(c.Services) == 0 {
		c.Services = nil
	}
	for name, s := range c.Services {
		s.LB = strings.ToLower(s.LB)
		c.Services[name] = s
	}
	return c
}

func sortedSet(in []string, f func(string) string) []string {
	if len(in) == 0 {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		if f != nil {
			s = f(s)
		}
		out[i] = s
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// JSON returns t's canonical JSON (indented, map keys sorted), the form
// stored and hashed.
func (t *Table) JSON() []byte {
	b, err := json.MarshalIndent(t.Canonical(), "", "  ")
	if err != nil {
		panic(fmt.Sprintf("routes: marshal: %v", err))
	}
	return append(b, '\n')
}

// YAML returns t's canonical YAML (two-space indent), the form diffed.
func (t *Table) YAML() []byte {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(t.Canonical()); err != nil {
		panic(fmt.Sprintf("routes: marshal: %v", err))
	}
	_ = enc.Close()
	return buf.Bytes()
}

// Hash returns the hex SHA-256 of t's canonical JSON: equal for tables with
// equal canonical forms.
func (t *Table) Hash() string {
	sum := sha256.Sum256(t.JSON())
	return hex.EncodeToString(sum[:])
}

// Equal reports whether a and b have the same canonical form.
func Equal(a, b *Table) bool { return bytes.Equal(a.JSON(), b.JSON()) }

// Route returns the route named name, or nil.
func (t *Table) Route(name string) *Route {
	for i := range t.Routes {
		if t.Routes[i].Name == name {
			return &t.Routes[i]
		}
	}
	return nil
}

// SetWeights returns a copy of t whose route name sends traffic to the
// given targets with the given weights (the canary operation). Keys are
// "<subset>" (the route's only service), "<service>" (every instance) or
// "<service>~<subset>". The result is not validated; call Validate.
func (t *Table) SetWeights(name string, weights map[string]int) (*Table, error) {
	c := t.Clone()
	r := c.Route(name)
	if r == nil {
		return nil, &ValidationError{Errors: []FieldError{{Path: "route", Message: fmt.Sprintf("no route named %q", name)}}}
	}
	if len(weights) == 0 {
		return nil, &ValidationError{Errors: []FieldError{{Path: "weights", Message: "at least one weight is required"}}}
	}
	services := map[string]bool{}
	for _, tg := range r.Targets {
		services[tg.Service] = true
	}
	var only string
	if len(services) == 1 {
		for s := range services {
			only = s
		}
	}
	var e errs
	targets := make([]Target, 0, len(weights))
	for _, key := range slicesSortedKeys(weights) {
		svc, subset, hasSep := strings.Cut(key, "~")
		switch {
		case hasSep:
		case services[key]:
			subset = ""
		case only != "":
			svc, subset = only, key
		default:
			e.add("weights."+key, "route %q has several services: use <service> or <service>~<subset>", name)
			continue
		}
		targets = append(targets, Target{Service: svc, Subset: subset, Weight: weights[key]})
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	r.Targets = targets
	r.DirectResponse = nil
	return c, nil
}

func slicesSortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
