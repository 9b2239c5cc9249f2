package jwtauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkVerify measures the verification hot path: "cold" verifies the
// signature every time (cache disabled), "cached" is a repeat token answered
// from the verification cache, "cached-parallel" the same from all CPUs,
// and "middleware-cached" the whole HTTP middleware on a cached token.
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	b.Run("cold", func(b *testing.B) {
		env := newTestEnv(b, func(c *VerifierConfig) { c.CacheSize = -1 })
		tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
		must(b, err)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := env.verifier.Verify(ctx, tok.Raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		env := newTestEnv(b, nil)
		tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
		must(b, err)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := env.verifier.Verify(ctx, tok.Raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached-parallel", func(b *testing.B) {
		env := newTestEnv(b, nil)
		tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
		must(b, err)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := env.verifier.Verify(ctx, tok.Raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("middleware-cached", func(b *testing.B) {
		env := newTestEnv(b, nil)
		tok, err := env.issuer.Issue("alice", []string{"viewer", "admin"})
		must(b, err)
		h := Middleware(env.verifier, MiddlewareOptions{})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
		req := httptest.NewRequest(http.MethodGet, "/pets", nil)
		req.Header.Set("Authorization", "Bearer "+tok.Raw)
		w := httptest.NewRecorder()
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, req)
		}
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	})
	b.Run("oversized-reject", func(b *testing.B) {
		env := newTestEnv(b, nil)
		big := make([]byte, 9<<10)
		for i := range big {
			big[i] = 'a'
		}
		tok := string(big)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := env.verifier.Verify(ctx, tok); err == nil {
				b.Fatal("accepted")
			}
		}
	})
}
