package svctoken

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/internal/jwtauth"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

const (
	testIssuer   = "petmesh-edge-test"
	testAudience = "petmesh"
	testClient   = "sync"
	testSecret   = "sync-secret-for-tests"
)

// edge is a real jwtauth token endpoint on httptest, with a verifier of
// the same issuer, a switch that makes it fail, and a request counter.
type edge struct {
	srv      *httptest.Server
	verifier *jwtauth.Verifier
	failing  atomic.Bool
	requests atomic.Int64
}

func newEdge(t *testing.T, ttl time.Duration) *edge {
	t.Helper()
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: t.TempDir(), MaxTokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: testIssuer, Audience: []string{testAudience}, TTL: ttl, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	hash := secretHash(t)
	accounts, err := jwtauth.NewServiceAccounts([]jwtauth.ServiceAccount{{ClientID: testClient, SecretHash: hash, Roles: []string{"sync"}}})
	if err != nil {
		t.Fatal(err)
	}
	lim, err := jwtauth.NewRateLimiter(jwtauth.RateLimiterConfig{Burst: 1000, Per: time.Millisecond, MaxKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	// bcrypt is slow under -race: compare against the one known hash.
	compare := func(h, pw []byte) error {
		if string(h) == hash && string(pw) == testSecret {
			return nil
		}
		return errors.New("mismatch")
	}
	th, err := jwtauth.NewTokenHandler(jwtauth.TokenHandlerConfig{Issuer: is, ServiceAccounts: accounts, UserLimit: lim, IPLimit: lim, Compare: compare})
	if err != nil {
		t.Fatal(err)
	}
	v, err := jwtauth.NewVerifier(jwtauth.VerifierConfig{Issuers: []jwtauth.TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks}}, CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	e := &edge{verifier: v}
	mux := http.NewServeMux()
	mux.Handle("/auth/token", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.requests.Add(1)
		if e.failing.Load() {
			http.Error(w, `{"error":{"code":"unavailable","message":"down"}}`, http.StatusServiceUnavailable)
			return
		}
		th.ServeHTTP(w, r)
	}))
	mux.Handle("/.well-known/jwks.json", ks.JWKSHandler())
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *edge) tokenURL() string { return e.srv.URL + "/auth/token" }

// subject verifies tok and returns its subject.
func (e *edge) subject(t *testing.T, tok string) string {
	t.Helper()
	c, err := e.verifier.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("verify service token: %v", err)
	}
	return c.Subject
}

var (
	hashOnce sync.Once
	hashVal  string
	hashErr  error
)

// secretHash is the bcrypt hash of testSecret, computed once.
func secretHash(t *testing.T) string {
	hashOnce.Do(func() { hashVal, hashErr = jwtauth.HashPassword(testSecret, jwtauth.MinBcryptCost) })
	if hashErr != nil {
		t.Fatal(hashErr)
	}
	return hashVal
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	cases := []struct {
		desc string
		cfg  Config
		want string
	}{
		{"relative url", Config{TokenURL: "/auth/token", ClientID: "a", ClientSecret: "b"}, "token url"},
		{"bad scheme", Config{TokenURL: "ftp://x/auth/token", ClientID: "a", ClientSecret: "b"}, "token url"},
		{"no client id", Config{TokenURL: "http://x/auth/token", ClientSecret: "b"}, "client id"},
		{"no secret", Config{TokenURL: "http://x/auth/token", ClientID: "a"}, "exactly one"},
		{"two secrets", Config{TokenURL: "http://x/auth/token", ClientID: "a", ClientSecret: "b", ClientSecretFile: "f"}, "exactly one"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestTokenFetchAndCache(t *testing.T) {
	t.Parallel()
	e := newEdge(t, 15*time.Minute)
	clock := &fakeClock{t: time.Now()}
	reg := prometheus.NewRegistry()
	s, err := New(Config{TokenURL: e.tokenURL(), ClientID: testClient, ClientSecret: testSecret, Now: clock.Now, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready() {
		t.Fatal("ready before any fetch")
	}
	ctx := context.Background()

	// Concurrent first callers share one fetch.
	var wg sync.WaitGroup
	toks := make([]string, 8)
	errs := make([]error, 8)
	for i := range toks {
		wg.Go(func() { toks[i], errs[i] = s.Token(ctx) })
	}
	wg.Wait()
	for i := range toks {
		if errs[i] != nil {
			t.Fatalf("Token #%d: %v", i, errs[i])
		}
		if toks[i] != toks[0] {
			t.Fatalf("callers got different tokens")
		}
	}
	if n := e.requests.Load(); n != 1 {
		t.Fatalf("token endpoint called %d times for concurrent first callers, want 1", n)
	}
	if got := e.subject(t, toks[0]); got != testClient {
		t.Fatalf("subject %q, want %q", got, testClient)
	}
	if !s.Ready() {
		t.Fatal("not ready with a cached token")
	}

	// Cached while valid.
	clock.Advance(14 * time.Minute)
	tok, err := s.Token(ctx)
	if err != nil || tok != toks[0] {
		t.Fatalf("Token before expiry: %v (same token %v)", err, tok == toks[0])
	}
	if n := e.requests.Load(); n != 1 {
		t.Fatalf("token endpoint called %d times while cached, want 1", n)
	}

	// Expired: fetched again, synchronously.
	clock.Advance(2 * time.Minute)
	if s.Ready() {
		t.Fatal("ready with an expired token")
	}
	tok2, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok2 == toks[0] {
		t.Fatal("expired token served")
	}
	if got := testutil.ToFloat64(s.fetches.WithLabelValues("ok")); got != 2 {
		t.Fatalf("petmesh_svctoken_fetches_total{result=ok} = %v, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "petmesh_svctoken_fetches_total", "petmesh_svctoken_expiry_timestamp_seconds"); err != nil || n != 2 {
		t.Fatalf("registered series: %d, %v", n, err)
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	e := newEdge(t, 15*time.Minute)
	cases := []struct {
		desc   string
		cfg    Config
		before func()
		want   string
	}{
		{"wrong secret", Config{ClientID: testClient, ClientSecret: "nope-wrong"}, nil, "invalid_client"},
		{"unknown client", Config{ClientID: "nobody", ClientSecret: "x"}, nil, "invalid_client"},
		{"endpoint down", Config{ClientID: testClient, ClientSecret: testSecret}, func() { e.failing.Store(true) }, "503"},
		{"missing secret file", Config{ClientID: testClient, ClientSecretFile: filepath.Join(t.TempDir(), "missing")}, nil, "read client secret"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			e.failing.Store(false)
			if tc.before != nil {
				tc.before()
			}
			cfg := tc.cfg
			cfg.TokenURL = e.tokenURL()
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Token(context.Background())
			if !errors.Is(err, ErrNoToken) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Token: %v, want ErrNoToken containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Fatal("error leaks the secret")
			}
		})
	}
	e.failing.Store(false)
}

func TestSecretFileReRead(t *testing.T) {
	t.Parallel()
	e := newEdge(t, 15*time.Minute)
	clock := &fakeClock{t: time.Now()}
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("wrong-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{TokenURL: e.tokenURL(), ClientID: testClient, ClientSecretFile: file, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(context.Background()); err == nil {
		t.Fatal("token with a wrong secret")
	}
	if err := os.WriteFile(file, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatalf("Token after fixing the secret file: %v", err)
	}
	e.subject(t, tok)
}

func TestRunRefreshesBeforeExpiry(t *testing.T) {
	t.Parallel()
	// 2s tokens: Run refreshes half-way through the lifetime.
	e := newEdge(t, 2*time.Second)
	s, err := New(Config{TokenURL: e.tokenURL(), ClientID: testClient, ClientSecret: testSecret, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	tu.Eventually(t, 5*time.Second, func() error {
		if !s.Ready() {
			return errors.New("no token yet")
		}
		return nil
	})
	first, _ := s.Token(ctx)
	// A new token arrives before the first one expires, without a caller
	// asking for one.
	tu.Eventually(t, 1900*time.Millisecond, func() error {
		s.mu.Lock()
		cur := s.tok
		s.mu.Unlock()
		if cur == first {
			return errors.New("not refreshed yet")
		}
		return nil
	})
	second, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.subject(t, second)

	// The endpoint fails: Run retries with backoff and recovers.
	e.failing.Store(true)
	base := e.requests.Load()
	tu.Eventually(t, 5*time.Second, func() error {
		if e.requests.Load() < base+3 {
			return errors.New("fewer than 3 retries")
		}
		return nil
	})
	e.failing.Store(false)
	tu.Eventually(t, 5*time.Second, func() error {
		tok, err := s.Token(ctx)
		if err != nil {
			return err
		}
		if tok == second {
			return errors.New("still the old token")
		}
		return nil
	})
}

func TestTransportAttachesToken(t *testing.T) {
	t.Parallel()
	e := newEdge(t, 15*time.Minute)
	s, err := New(Config{TokenURL: e.tokenURL(), ClientID: testClient, ClientSecret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	var got atomic.Value
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	client := &http.Client{Transport: s.Transport(upstream.Client().Transport)}

	cases := []struct {
		desc   string
		header string
		check  func(t *testing.T, auth string)
	}{
		{"no header: service token attached", "", func(t *testing.T, auth string) {
			tok, ok := strings.CutPrefix(auth, "Bearer ")
			if !ok {
				t.Fatalf("Authorization %q, want a bearer token", auth)
			}
			if sub := e.subject(t, tok); sub != testClient {
				t.Fatalf("subject %q", sub)
			}
		}},
		{"caller's header kept", "Bearer caller-token", func(t *testing.T, auth string) {
			if auth != "Bearer caller-token" {
				t.Fatalf("Authorization %q, want the caller's", auth)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, upstream.URL, nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			tc.check(t, got.Load().(string))
			if req.Header.Get("Authorization") != tc.header {
				t.Fatal("caller's request was modified")
			}
		})
	}

	t.Run("no token: request fails", func(t *testing.T) {
		e.failing.Store(true)
		defer e.failing.Store(false)
		s2, _ := New(Config{TokenURL: e.tokenURL(), ClientID: testClient, ClientSecret: testSecret})
		c2 := &http.Client{Transport: s2.Transport(upstream.Client().Transport)}
		resp, err := c2.Get(upstream.URL)
		if err == nil {
			_ = resp.Body.Close()
			t.Fatal("request sent without a token")
		}
		if !errors.Is(err, ErrNoToken) {
			t.Fatalf("error %v, want ErrNoToken", err)
		}
	})
}
