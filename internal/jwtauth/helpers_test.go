package jwtauth

import (
	"crypto/ecdsa"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// fakeClock is a settable clock shared by the pieces under test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
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

const (
	testIssuer   = "https://edge.petmesh.test"
	testAudience = "petmesh"
)

type testEnv struct {
	clock    *fakeClock
	keys     *KeyStore
	issuer   *Issuer
	verifier *Verifier
	dir      string
}

func newTestEnv(t testing.TB, mutate func(*VerifierConfig)) *testEnv {
	t.Helper()
	clock := newFakeClock()
	dir := t.TempDir()
	ks, err := OpenKeyStore(KeyStoreConfig{
		Dir: dir, RotationInterval: 24 * time.Hour, MaxTokenLifetime: time.Hour,
		Leeway: 30 * time.Second, Now: clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	is, err := NewIssuer(IssuerConfig{Issuer: testIssuer, Audience: []string{testAudience}, TTL: 15 * time.Minute, Keys: ks, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	cfg := VerifierConfig{
		Issuers: []TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: ks}},
		Now:     clock.Now,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{clock: clock, keys: ks, issuer: is, verifier: v, dir: dir}
}

// activeKey returns the signing key currently in use.
func (e *testEnv) activeKey(t testing.TB) *signingKey {
	t.Helper()
	k, err := e.keys.signer()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// validClaims returns a claims map the verifier accepts at the env's clock.
func (e *testEnv) validClaims() jwt.MapClaims {
	now := e.clock.Now()
	return jwt.MapClaims{
		"iss": testIssuer, "sub": "alice", "aud": []string{testAudience},
		"exp": now.Add(10 * time.Minute).Unix(), "nbf": now.Unix(), "iat": now.Unix(),
		"jti": "j1", "roles": []string{"viewer"},
	}
}

// sign builds an ES256 token with arbitrary header fields and claims.
func sign(t testing.TB, priv *ecdsa.PrivateKey, hdr map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	for k, v := range hdr {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawToken assembles a token from raw JSON segments and a signature.
func rawToken(header, payload string, sig []byte) string {
	return b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString([]byte(payload)) + "." + b64.EncodeToString(sig)
}

func signES384(t testing.TB, priv *ecdsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES384, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
