package controlplane

import (
	"io"
	"strings"
	"testing"
)

// TestJWTQueryParamFlag: -jwt-query-param (or CONTROLPLANE_JWT_QUERY_PARAM)
// defaults to empty (query tokens refused) and takes only a sane name.
func TestJWTQueryParamFlag(t *testing.T) {
	base := []string{"-jwks-url", "http://127.0.0.1:1/jwks.json", "-issuer", "petmesh-edge", "-registration-token", "0123456789abcdef", "-store-dir", t.TempDir()}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := parseConfig(base, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.JWTQueryParam != "" {
		t.Fatalf("default %q, want empty", c.JWTQueryParam)
	}
	if c, err = parseConfig(append(base, "-jwt-query-param", "jwt"), env(nil), io.Discard); err != nil || c.JWTQueryParam != "jwt" {
		t.Fatalf("flag: %q, %v", c.JWTQueryParam, err)
	}
	if c, err = parseConfig(base, env(map[string]string{"CONTROLPLANE_JWT_QUERY_PARAM": "access_token"}), io.Discard); err != nil || c.JWTQueryParam != "access_token" {
		t.Fatalf("env: %q, %v", c.JWTQueryParam, err)
	}
	for _, bad := range []string{"a b", "a&b", "tok=x", strings.Repeat("a", 65)} {
		if _, err := parseConfig(append(base, "-jwt-query-param", bad), env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "-jwt-query-param") {
			t.Fatalf("%q: err = %v, want a -jwt-query-param error", bad, err)
		}
	}
}

// TestOmitResilienceFieldsFlag: off by default; the flag or
// CONTROLPLANE_OMIT_RESILIENCE_FIELDS turns it on.
func TestOmitResilienceFieldsFlag(t *testing.T) {
	base := []string{"-jwks-url", "http://127.0.0.1:1/jwks.json", "-issuer", "petmesh-edge", "-registration-token", "0123456789abcdef", "-store-dir", t.TempDir()}
	for _, tc := range []struct {
		desc string
		args []string
		env  map[string]string
		want bool
	}{
		{desc: "default", want: false},
		{desc: "flag", args: []string{"-omit-resilience-fields"}, want: true},
		{desc: "environment variable", env: map[string]string{"CONTROLPLANE_OMIT_RESILIENCE_FIELDS": "true"}, want: true},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c, err := parseConfig(append(append([]string{}, base...), tc.args...), func(k string) string { return tc.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.OmitResilienceFields != tc.want {
				t.Fatalf("OmitResilienceFields %v, want %v", c.OmitResilienceFields, tc.want)
			}
		})
	}
}
