package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/identity"
)

func TestIssueVerifyRoundTrip(t *testing.T) {
	env := newTestEnv(t, nil)
	tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
	must(t, err)
	c, err := env.verifier.Verify(context.Background(), tok.Raw)
	must(t, err)
	now := env.clock.Now()
	if c.Subject != "alice" || c.Issuer != testIssuer || !slices.Equal(c.Audience, []string{testAudience}) ||
		!slices.Equal(c.Roles, []string{"viewer", "admin"}) || !c.ExpiresAt.Equal(now.Add(15*time.Minute)) ||
		!c.IssuedAt.Equal(now) || !c.NotBefore.Equal(now) || c.ID != tok.ID || c.ID == "" ||
		c.KeyID != env.activeKey(t).KID || c.Algorithm != AlgES256 {
		t.Fatalf("claims %+v", c)
	}
	if !tok.ExpiresAt.Equal(c.ExpiresAt) {
		t.Errorf("token expiry %v vs claims %v", tok.ExpiresAt, c.ExpiresAt)
	}
	// Two tokens never share a jti.
	tok2, err := env.issuer.Issue("alice", nil)
	must(t, err)
	if tok2.ID == tok.ID {
		t.Fatal("jti reused")
	}
	c2, err := env.verifier.Verify(context.Background(), tok2.Raw)
	must(t, err)
	if c2.Roles == nil || len(c2.Roles) != 0 {
		t.Fatalf("roles %v; want empty", c2.Roles)
	}
	// At expiry (plus leeway) the token is refused, even though cached.
	env.clock.Advance(15*time.Minute + 30*time.Second)
	if _, err := env.verifier.Verify(context.Background(), tok.Raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: %v; want ErrExpired", err)
	}
}

func TestIssuerConfigValidation(t *testing.T) {
	env := newTestEnv(t, nil)
	tests := []struct {
		desc string
		cfg  IssuerConfig
	}{
		{"no issuer", IssuerConfig{Audience: []string{"a"}, Keys: env.keys}},
		{"no audience", IssuerConfig{Issuer: "i", Keys: env.keys}},
		{"empty audience", IssuerConfig{Issuer: "i", Audience: []string{""}, Keys: env.keys}},
		{"no keys", IssuerConfig{Issuer: "i", Audience: []string{"a"}}},
		{"ttl above the key store's max lifetime", IssuerConfig{Issuer: "i", Audience: []string{"a"}, Keys: env.keys, TTL: 2 * time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := NewIssuer(tt.cfg); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestVerifierConfigValidation(t *testing.T) {
	env := newTestEnv(t, nil)
	iss := []TrustedIssuer{{Issuer: "i", Audiences: []string{"a"}, Keys: env.keys}}
	tests := []struct {
		desc string
		cfg  VerifierConfig
	}{
		{"no issuers", VerifierConfig{}},
		{"HS256 never allowed", VerifierConfig{Issuers: iss, Algorithms: []string{"HS256"}}},
		{"none never allowed", VerifierConfig{Issuers: iss, Algorithms: []string{"none"}}},
		{"issuer without audience", VerifierConfig{Issuers: []TrustedIssuer{{Issuer: "i", Keys: env.keys}}}},
		{"issuer without keys", VerifierConfig{Issuers: []TrustedIssuer{{Issuer: "i", Audiences: []string{"a"}}}}},
		{"duplicate issuer", VerifierConfig{Issuers: append(slices.Clone(iss), iss[0])}},
		{"huge leeway", VerifierConfig{Issuers: iss, Leeway: time.Hour}},
		{"tiny max size", VerifierConfig{Issuers: iss, MaxTokenSize: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := NewVerifier(tt.cfg); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestVerifierAlgorithmAllowList(t *testing.T) {
	// An ES384 issuer is refused by default and accepted when listed.
	k384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(t, err)
	kid, err := Thumbprint(&k384.PublicKey)
	must(t, err)
	src := KeySourceFunc(func(_ context.Context, id string) (*PublicKey, error) {
		if id == kid {
			return &PublicKey{KID: kid, Alg: AlgES384, Key: &k384.PublicKey}, nil
		}
		return nil, ErrUnknownKey
	})
	env := newTestEnv(t, nil)
	tokES384 := signES384(t, k384, kid, env.validClaims())
	tests := []struct {
		desc    string
		algs    []string
		wantErr error
	}{
		{"default ES256 only", nil, ErrAlgorithm},
		{"ES384 allowed", []string{AlgES256, AlgES384}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			v, err := NewVerifier(VerifierConfig{
				Issuers:    []TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: src}},
				Algorithms: tt.algs, Now: env.clock.Now,
			})
			must(t, err)
			_, err = v.Verify(context.Background(), tokES384)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Verify = %v; want %v", err, tt.wantErr)
			}
		})
	}
	// An ES256 token may not name a P-384 key.
	v, err := NewVerifier(VerifierConfig{
		Issuers:    []TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: src}},
		Algorithms: []string{AlgES256, AlgES384}, Now: env.clock.Now,
	})
	must(t, err)
	confused := sign(t, env.activeKey(t).priv, map[string]any{"kid": kid}, env.validClaims())
	if _, err := v.Verify(context.Background(), confused); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("ES256 token with an ES384 key: %v; want ErrAlgorithm", err)
	}
}

func TestVerifierMultipleIssuers(t *testing.T) {
	a := newTestEnv(t, nil)
	b := newTestEnv(t, nil)
	v, err := NewVerifier(VerifierConfig{
		Issuers: []TrustedIssuer{
			{Issuer: "issuer-a", Audiences: []string{"x"}, Keys: a.keys},
			{Issuer: "issuer-b", Audiences: []string{"y"}, Keys: b.keys},
		},
		Now: a.clock.Now,
	})
	must(t, err)
	claims := func(iss, aud string) map[string]any {
		c := a.validClaims()
		c["iss"], c["aud"] = iss, aud
		return c
	}
	tests := []struct {
		desc    string
		token   string
		wantErr error
	}{
		{"a signs for a", sign(t, a.activeKey(t).priv, map[string]any{"kid": a.activeKey(t).KID}, claims("issuer-a", "x")), nil},
		{"b signs for b", sign(t, b.activeKey(t).priv, map[string]any{"kid": b.activeKey(t).KID}, claims("issuer-b", "y")), nil},
		{"a's key claiming to be b", sign(t, a.activeKey(t).priv, map[string]any{"kid": a.activeKey(t).KID}, claims("issuer-b", "y")), ErrUnknownKey},
		{"b's audience for a", sign(t, a.activeKey(t).priv, map[string]any{"kid": a.activeKey(t).KID}, claims("issuer-a", "y")), ErrBadAudience},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Verify = %v; want %v", err, tt.wantErr)
			}
		})
	}
}

func TestVerifyCache(t *testing.T) {
	env := newTestEnv(t, func(c *VerifierConfig) { c.CacheSize = 64; c.CacheTTL = time.Minute })
	ctx := context.Background()
	tok, err := env.issuer.Issue("alice", []string{"viewer"})
	must(t, err)
	c1, err := env.verifier.Verify(ctx, tok.Raw)
	must(t, err)
	c2, err := env.verifier.Verify(ctx, tok.Raw)
	must(t, err)
	st := env.verifier.Stats()
	if st.CacheHits != 1 || st.SignatureChecks != 1 || c1 != c2 {
		t.Fatalf("stats %+v; want one signature check and one hit", st)
	}
	// After the cache TTL the token is verified again.
	env.clock.Advance(time.Minute)
	_, err = env.verifier.Verify(ctx, tok.Raw)
	must(t, err)
	if st := env.verifier.Stats(); st.SignatureChecks != 2 {
		t.Fatalf("stats %+v; want re-verification after the cache TTL", st)
	}
	// A different token (same claims, other signature) is not a hit.
	k := env.activeKey(t)
	other := sign(t, k.priv, map[string]any{"kid": k.KID}, env.validClaims())
	_, err = env.verifier.Verify(ctx, other)
	must(t, err)
	// The cache is bounded.
	for i := range 500 {
		c := env.validClaims()
		c["jti"] = strconv.Itoa(i)
		_, err := env.verifier.Verify(ctx, sign(t, k.priv, map[string]any{"kid": k.KID}, c))
		must(t, err)
	}
	if n := env.verifier.cache.len(); n > 64+cacheShards {
		t.Fatalf("cache holds %d entries; bound is about 64", n)
	}
	// Failures are never cached.
	bad := sign(t, k.priv, map[string]any{"kid": "nope"}, env.validClaims())
	for range 2 {
		if _, err := env.verifier.Verify(ctx, bad); !errors.Is(err, ErrUnknownKey) {
			t.Fatal(err)
		}
	}
}

func TestCacheEntryNeverOutlivesToken(t *testing.T) {
	env := newTestEnv(t, func(c *VerifierConfig) { c.CacheTTL = time.Hour; c.Leeway = -1 })
	k := env.activeKey(t)
	c := env.validClaims()
	c["exp"] = env.clock.Now().Add(10 * time.Second).Unix()
	tok := sign(t, k.priv, map[string]any{"kid": k.KID}, c)
	_, err := env.verifier.Verify(context.Background(), tok)
	must(t, err)
	env.clock.Advance(10 * time.Second)
	if _, err := env.verifier.Verify(context.Background(), tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("Verify after exp = %v; want ErrExpired (cache entry must expire with the token)", err)
	}
}

func TestMiddlewareSuccess(t *testing.T) {
	env := newTestEnv(t, nil)
	tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
	must(t, err)
	var got http.Header
	var gotClaims *Claims
	var gotID identity.Identity
	var gotQuery string
	h := Middleware(env.verifier, MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		gotClaims, _ = ClaimsFromContext(r.Context())
		gotID, _ = identity.FromContext(r.Context())
		gotQuery = r.URL.RawQuery
	}))
	tests := []struct {
		desc   string
		header string
	}{
		{"canonical", "Bearer " + tok.Raw},
		{"lower-case scheme", "bearer " + tok.Raw},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/x?a=1", nil)
			req.Header.Set("Authorization", tt.header)
			req.Header.Set("X-Petmesh-Subject", "root")
			req.Header.Set("x-petmesh-roles", "admin,superuser")
			req.Header.Set("X-Petmesh-Internal", "1")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got.Get(identity.HeaderSubject) != "alice" || got.Get(identity.HeaderRoles) != "viewer,admin" {
				t.Fatalf("identity headers %v", got)
			}
			if got.Get("X-Petmesh-Internal") != "" || len(got.Values(identity.HeaderSubject)) != 1 {
				t.Fatalf("client identity headers not stripped: %v", got)
			}
			if got.Get("Authorization") == "" {
				t.Fatal("Authorization header must be forwarded")
			}
			if gotClaims == nil || gotClaims.Subject != "alice" || gotID.Subject != "alice" || gotQuery != "a=1" {
				t.Fatalf("context claims %+v identity %+v query %q", gotClaims, gotID, gotQuery)
			}
		})
	}
}

func TestMiddlewareRequestShapes(t *testing.T) {
	env := newTestEnv(t, nil)
	tok, err := env.issuer.Issue("alice", nil)
	must(t, err)
	var gotQuery string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { gotQuery = r.URL.RawQuery })
	strict := Middleware(env.verifier, MiddlewareOptions{})(next)
	lenient := Middleware(env.verifier, MiddlewareOptions{AllowQueryToken: true})(next)
	tests := []struct {
		desc      string
		h         http.Handler
		target    string
		auth      []string
		want      int
		challenge string
		wantQuery string
	}{
		{desc: "no token", h: strict, target: "/", want: 401, challenge: `Bearer realm="petmesh"`},
		{desc: "basic scheme", h: strict, target: "/", auth: []string{"Basic YTpi"}, want: 401, challenge: `error="invalid_request"`},
		{desc: "two Authorization headers", h: strict, target: "/", auth: []string{"Bearer " + tok.Raw, "Bearer " + tok.Raw}, want: 401, challenge: `error="invalid_request"`},
		{desc: "empty bearer", h: strict, target: "/", auth: []string{"Bearer "}, want: 401, challenge: `error="invalid_token"`},
		{desc: "query token refused by default", h: strict, target: "/?access_token=" + tok.Raw, want: 401, challenge: `error="invalid_request"`},
		{desc: "header and query at once", h: lenient, target: "/?access_token=" + tok.Raw, auth: []string{"Bearer " + tok.Raw}, want: 401, challenge: `error="invalid_request"`},
		{desc: "query token when enabled, parameter stripped", h: lenient, target: "/?b=2&access_token=" + tok.Raw, want: 200, wantQuery: "b=2"},
		{desc: "oversized header", h: strict, target: "/", auth: []string{"Bearer " + strings.Repeat("a", 9000)}, want: 431, challenge: `error="invalid_token"`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, tt.target, nil)
			for _, a := range tt.auth {
				req.Header.Add("Authorization", a)
			}
			rec := httptest.NewRecorder()
			tt.h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d; want %d (%s)", rec.Code, tt.want, rec.Body)
			}
			if !strings.Contains(rec.Header().Get("WWW-Authenticate"), tt.challenge) {
				t.Fatalf("WWW-Authenticate %q; want %q", rec.Header().Get("WWW-Authenticate"), tt.challenge)
			}
			if tt.want == 200 && gotQuery != tt.wantQuery {
				t.Fatalf("forwarded query %q; want %q", gotQuery, tt.wantQuery)
			}
		})
	}
}

func TestRequireRoles(t *testing.T) {
	env := newTestEnv(t, nil)
	tok, err := env.issuer.Issue("alice", []string{"viewer"})
	must(t, err)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	mw := Middleware(env.verifier, MiddlewareOptions{})
	tests := []struct {
		desc    string
		h       http.Handler
		want    int
		message string
	}{
		{"has the role", mw(RequireRoles("viewer")(ok)), 200, ""},
		{"missing admin", mw(RequireRoles("viewer", "admin")(ok)), 403, "requires role admin"},
		{"any of", mw(RequireAnyRole("admin", "viewer")(ok)), 200, ""},
		{"none of", mw(RequireAnyRole("admin", "sync")(ok)), 403, "requires role admin or sync"},
		{"without the middleware", RequireRoles("viewer")(ok), 401, ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Header.Set("Authorization", "Bearer "+tok.Raw)
			rec := httptest.NewRecorder()
			tt.h.ServeHTTP(rec, req)
			if rec.Code != tt.want || !strings.Contains(rec.Body.String(), tt.message) {
				t.Fatalf("status %d body %s; want %d %q", rec.Code, rec.Body, tt.want, tt.message)
			}
			if tt.want == 403 && !strings.Contains(rec.Header().Get("WWW-Authenticate"), "insufficient_scope") {
				t.Fatalf("WWW-Authenticate %q", rec.Header().Get("WWW-Authenticate"))
			}
		})
	}
}
