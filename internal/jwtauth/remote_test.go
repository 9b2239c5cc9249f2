package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
)

// jwksServer is a real HTTP JWKS endpoint whose answer tests can change.
type jwksServer struct {
	*httptest.Server
	mu       sync.Mutex
	body     []byte
	status   int
	requests atomic.Int64
}

func newJWKSServer(t *testing.T, keys ...*ecdsa.PrivateKey) *jwksServer {
	t.Helper()
	s := &jwksServer{status: http.StatusOK}
	s.setKeys(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		if status == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(t *testing.T, keys ...*ecdsa.PrivateKey) {
	t.Helper()
	doc := JWKS{Keys: []JWK{}}
	for _, k := range keys {
		kid, err := Thumbprint(&k.PublicKey)
		must(t, err)
		j, err := publicJWK(kid, AlgES256, &k.PublicKey)
		must(t, err)
		doc.Keys = append(doc.Keys, j)
	}
	b, err := json.Marshal(doc)
	must(t, err)
	s.set(http.StatusOK, b)
}

func (s *jwksServer) set(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func newKey(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	kid, err := Thumbprint(&k.PublicKey)
	must(t, err)
	return k, kid
}

// runOwned runs f in a goroutine owned by the test: cancelled and waited
// for at cleanup.
func runOwned(t *testing.T, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

func TestRemoteJWKSBackgroundRefresh(t *testing.T) {
	a, kidA := newKey(t)
	b, kidB := newKey(t)
	srv := newJWKSServer(t, a)
	// A huge cooldown: unknown kids never trigger a fetch, so only the
	// background refresh can discover key B.
	r, err := NewRemoteJWKS(RemoteJWKSConfig{URL: srv.URL, RefreshInterval: time.Second, RefetchCooldown: time.Hour})
	must(t, err)
	runOwned(t, r.Run)
	testutil.Eventually(t, 5*time.Second, func() error {
		if !r.Ready() {
			return errors.New("no keys yet")
		}
		return nil
	})
	ctx := context.Background()
	if _, err := r.PublicKey(ctx, kidA); err != nil {
		t.Fatal(err)
	}
	if _, err := r.PublicKey(ctx, kidB); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("kid B before the server has it: %v", err)
	}
	srv.setKeys(t, a, b)
	testutil.Eventually(t, 10*time.Second, func() error {
		_, err := r.PublicKey(ctx, kidB)
		return err
	})
	if n := srv.requests.Load(); n < 2 {
		t.Fatalf("%d requests; want the initial fetch and a refresh", n)
	}
}

// expectLookup looks kid up in r and checks the outcome (wantErr nil: the
// key is found) and how many fetches srv has served in all.
func expectLookup(t *testing.T, r *RemoteJWKS, srv *jwksServer, desc, kid string, wantErr error, wantFetch int64) {
	t.Helper()
	_, err := r.PublicKey(context.Background(), kid)
	if !errors.Is(err, wantErr) || (wantErr == nil && err != nil) {
		t.Fatalf("%s: %v; want %v", desc, err, wantErr)
	}
	if n := srv.requests.Load(); n != wantFetch {
		t.Fatalf("%s: %d fetches; want %d", desc, n, wantFetch)
	}
}

func TestRemoteJWKSUnknownKidRefetchWithCooldown(t *testing.T) {
	a, kidA := newKey(t)
	b, kidB := newKey(t)
	srv := newJWKSServer(t, a)
	clock := newFakeClock()
	r, err := NewRemoteJWKS(RemoteJWKSConfig{URL: srv.URL, RefetchCooldown: 30 * time.Second, Now: clock.Now})
	must(t, err)
	ctx := context.Background()
	steps := []struct {
		desc      string
		kid       string
		advance   time.Duration
		addB      bool
		wantErr   error
		wantFetch int64
	}{
		{desc: "first lookup fetches", kid: kidA, wantFetch: 1},
		{desc: "known kid is served from memory", kid: kidA, wantFetch: 1},
		{desc: "new key within cooldown: no fetch", kid: kidB, addB: true, wantErr: ErrUnknownKey, wantFetch: 1},
		{desc: "random kid within cooldown: no fetch", kid: "random", advance: 29 * time.Second, wantErr: ErrUnknownKey, wantFetch: 1},
		{desc: "after the cooldown an unknown kid refetches", kid: kidB, advance: time.Second, wantFetch: 2},
		{desc: "attacker kid right after: no fetch", kid: "../../etc/passwd", wantErr: ErrUnknownKey, wantFetch: 2},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		if s.addB {
			srv.setKeys(t, a, b)
		}
		expectLookup(t, r, srv, s.desc, s.kid, s.wantErr, s.wantFetch)
	}
	// Concurrent misses after the cooldown share one fetch.
	clock.Advance(time.Minute)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = r.PublicKey(ctx, fmt.Sprintf("flood-%d", i))
		}()
	}
	wg.Wait()
	if n := srv.requests.Load(); n != 3 {
		t.Fatalf("%d fetches after a flood of unknown kids; want exactly one more (3)", n)
	}
}

func TestRemoteJWKSKeepsKeysWhenRefreshFails(t *testing.T) {
	a, kidA := newKey(t)
	srv := newJWKSServer(t, a)
	r, err := NewRemoteJWKS(RemoteJWKSConfig{URL: srv.URL, MaxBytes: 4096})
	must(t, err)
	ctx := context.Background()
	must(t, r.Refresh(ctx))
	tests := []struct {
		desc    string
		status  int
		body    string
		wantErr string
	}{
		{"server error", http.StatusInternalServerError, `oops`, "status 500"},
		{"not JSON", http.StatusOK, `<html>`, "decode jwks"},
		{"no keys member", http.StatusOK, `{}`, "missing"},
		{"empty key set", http.StatusOK, `{"keys":[]}`, "no usable signing keys"},
		{"private key material", http.StatusOK, `{"keys":[{"kty":"EC","kid":"x","crv":"P-256","x":"a","y":"b","d":"c"}]}`, "private key"},
		{"oversized body", http.StatusOK, `{"keys":[` + strings.Repeat(" ", 5000) + `]}`, "larger than 4096"},
		{"redirect not followed", http.StatusFound, ``, "status 302"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			srv.set(tt.status, []byte(tt.body))
			err := r.Refresh(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Refresh = %v; want %q", err, tt.wantErr)
			}
			if _, err := r.PublicKey(ctx, kidA); err != nil {
				t.Fatalf("cached key lost after a failed refresh: %v", err)
			}
		})
	}
}

// TestRemoteIssuerEndToEnd runs a real edge-side key store behind an HTTP
// JWKS endpoint and a verifier that knows it only by URL: tokens verify,
// rotation needs no refetch (the next key was published ahead), and the
// attack of pointing jku elsewhere changes nothing.
func TestRemoteIssuerEndToEnd(t *testing.T) {
	env := newTestEnv(t, nil)
	var hits atomic.Int64
	jwks := env.keys.JWKSHandler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		jwks.ServeHTTP(w, r)
	}))
	defer srv.Close()
	remote, err := NewRemoteJWKS(RemoteJWKSConfig{URL: srv.URL, Now: env.clock.Now})
	must(t, err)
	v, err := NewVerifier(VerifierConfig{
		Issuers: []TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: remote}},
		Now:     env.clock.Now,
	})
	must(t, err)
	ctx := context.Background()
	tok, err := env.issuer.Issue("alice", []string{"viewer"})
	must(t, err)
	if _, err := v.Verify(ctx, tok.Raw); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Second)
	must(t, env.keys.Rotate())
	tok2, err := env.issuer.Issue("bob", nil)
	must(t, err)
	if tok2.KID == tok.KID {
		t.Fatal("rotation did not change the signing key")
	}
	if _, err := v.Verify(ctx, tok2.Raw); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d JWKS fetches; want 1 (the next key was published before it signed)", n)
	}
	if _, err := v.Verify(ctx, tok.Raw); err != nil {
		t.Fatalf("token of the retired key within its grace: %v", err)
	}
}

func TestFileJWKS(t *testing.T) {
	a, kidA := newKey(t)
	b, kidB := newKey(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "jwks.json")
	write := func(keys ...*ecdsa.PrivateKey) {
		doc := JWKS{}
		for _, k := range keys {
			kid, _ := Thumbprint(&k.PublicKey)
			j, _ := publicJWK(kid, AlgES256, &k.PublicKey)
			doc.Keys = append(doc.Keys, j)
		}
		data, _ := json.Marshal(doc)
		must(t, os.WriteFile(p, data, 0o600))
	}
	write(a)
	f, err := NewFileJWKS(p, time.Second, nil)
	must(t, err)
	ctx := context.Background()
	if _, err := f.PublicKey(ctx, kidA); err != nil {
		t.Fatal(err)
	}
	write(a, b)
	// Force a different mtime so the change is seen on coarse filesystems.
	future := time.Now().Add(time.Minute)
	must(t, os.Chtimes(p, future, future))
	changed, err := f.Reload()
	must(t, err)
	if !changed {
		t.Fatal("reload did not notice the change")
	}
	if _, err := f.PublicKey(ctx, kidB); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(p, []byte("{broken"), 0o600))
	must(t, os.Chtimes(p, future.Add(time.Minute), future.Add(time.Minute)))
	if _, err := f.Reload(); err == nil {
		t.Fatal("broken file accepted")
	}
	if _, err := f.PublicKey(ctx, kidB); err != nil {
		t.Fatalf("keys lost after a bad reload: %v", err)
	}
	if _, err := NewFileJWKS(filepath.Join(dir, "missing.json"), 0, nil); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestNewRemoteJWKSValidation(t *testing.T) {
	tests := []struct {
		desc string
		cfg  RemoteJWKSConfig
	}{
		{"no url", RemoteJWKSConfig{}},
		{"relative url", RemoteJWKSConfig{URL: "/jwks.json"}},
		{"file scheme", RemoteJWKSConfig{URL: "file:///etc/passwd"}},
		{"tiny refresh", RemoteJWKSConfig{URL: "http://127.0.0.1/jwks", RefreshInterval: time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if _, err := NewRemoteJWKS(tt.cfg); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

// A verifier started before its issuer: the first fetches fail, and a valid
// token arriving right after the issuer comes up must not wait a whole
// cooldown (the control plane's API refused the edge's tokens for 15 s when
// it started first). While no key set is held, misses refetch after 100 ms;
// after a failed fetch with keys held, after 1 s; otherwise the cooldown.
func TestRemoteJWKSRefetchSoonerAfterFailures(t *testing.T) {
	a, kidA := newKey(t)
	b, kidB := newKey(t)
	srv := newJWKSServer(t, a)
	srv.set(http.StatusServiceUnavailable, []byte(`{}`))
	clock := newFakeClock()
	r, err := NewRemoteJWKS(RemoteJWKSConfig{URL: srv.URL, RefetchCooldown: 30 * time.Second, Now: clock.Now})
	must(t, err)
	ctx := context.Background()
	if err := r.Refresh(ctx); err == nil {
		t.Fatal("refresh against a failing issuer succeeded")
	}
	steps := []struct {
		desc      string
		advance   time.Duration
		issuerUp  bool
		fail      bool
		kid       string
		wantErr   error
		wantFetch int64
	}{
		{desc: "no keys, 50 ms after the failure: no fetch", advance: 50 * time.Millisecond, kid: kidA, wantErr: ErrUnknownKey, wantFetch: 1},
		{desc: "no keys, 100 ms after: fetches and finds the key", advance: 50 * time.Millisecond, issuerUp: true, kid: kidA, wantFetch: 2},
		{desc: "keys held, last fetch fine: the cooldown holds", advance: 2 * time.Second, kid: kidB, wantErr: ErrUnknownKey, wantFetch: 2},
		{desc: "keys held, after the cooldown the fetch fails", advance: 30 * time.Second, fail: true, kid: kidB, wantErr: ErrUnknownKey, wantFetch: 3},
		{desc: "keys held, failed fetch 500 ms ago: no fetch", advance: 500 * time.Millisecond, kid: kidB, wantErr: ErrUnknownKey, wantFetch: 3},
		{desc: "keys held, failed fetch 1 s ago: fetches", advance: 500 * time.Millisecond, issuerUp: true, kid: kidB, wantFetch: 4},
		{desc: "the old key still verifies", kid: kidA, wantFetch: 4},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		switch {
		case s.fail:
			srv.set(http.StatusServiceUnavailable, []byte(`{}`))
		case s.issuerUp && s.kid == kidA:
			srv.setKeys(t, a)
		case s.issuerUp:
			srv.setKeys(t, a, b)
		}
		expectLookup(t, r, srv, s.desc, s.kid, s.wantErr, s.wantFetch)
	}
}
