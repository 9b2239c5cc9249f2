package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var updateFuzzCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite testdata/fuzz/FuzzVerify seeds")

// fuzzKeyPEM is a test-only P-256 key, fixed so that the committed seed
// corpus holds tokens that verify.
const fuzzKeyPEM = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqj3UiKexpaYDpQUj
fIQPv/g0kLXcztBiCPAZNFgdJPahRANCAAT1okFwP9YmFCwOnlhJrEZ4hfgsqtUh
xGK9aUdcCWnQnJGK4aEnXPnWxHYo03ozCV2BN2b64FJ1hlMXyXmII1p8
-----END PRIVATE KEY-----
`

// fuzzNow is the fixed clock of the fuzz verifier.
var fuzzNow = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

func fuzzKey(t testing.TB) (*ecdsa.PrivateKey, string) {
	t.Helper()
	block, _ := pem.Decode([]byte(fuzzKeyPEM))
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	must(t, err)
	priv := k.(*ecdsa.PrivateKey)
	kid, err := Thumbprint(&priv.PublicKey)
	must(t, err)
	return priv, kid
}

func fuzzSeeds(t testing.TB) []string {
	priv, kid := fuzzKey(t)
	claims := func(mut func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"iss": testIssuer, "sub": "alice", "aud": testAudience, "roles": []string{"viewer"},
			"exp": fuzzNow.Add(time.Hour).Unix(), "iat": fuzzNow.Unix(), "nbf": fuzzNow.Unix(),
		}
		if mut != nil {
			mut(c)
		}
		return c
	}
	good := sign(t, priv, map[string]any{"kid": kid}, claims(nil))
	p := strings.Split(good, ".")
	return []string{
		good,
		sign(t, priv, map[string]any{"kid": kid}, claims(func(c jwt.MapClaims) { c["aud"] = []string{"x", testAudience} })),
		sign(t, priv, map[string]any{"kid": kid}, claims(func(c jwt.MapClaims) { c["exp"] = 1.5e9 })),
		sign(t, priv, map[string]any{"kid": kid, "crit": []string{"b64"}}, claims(nil)),
		sign(t, priv, map[string]any{"kid": kid, "jku": "http://127.0.0.1:1/jwks"}, claims(nil)),
		rawToken(`{"alg":"none","kid":"`+kid+`"}`, `{"sub":"admin"}`, nil),
		rawToken(`{"alg":"HS256"}`, `{}`, []byte("sig")),
		p[0] + "." + p[1] + ".",
		p[0] + "." + p[1],
		"..",
		"",
		"e30.e30.e30",
		"\x00.\xff.\n",
	}
}

// FuzzVerify feeds arbitrary strings to the verifier and to the HTTP
// middleware: they must never panic, a success must carry claims, every
// failure must match one of the package's sentinels, and the middleware
// must answer only 200, 401 or 431.
func FuzzVerify(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	priv, kid := fuzzKey(f)
	src := KeySourceFunc(func(_ context.Context, id string) (*PublicKey, error) {
		if id == kid {
			return &PublicKey{KID: kid, Alg: AlgES256, Key: &priv.PublicKey}, nil
		}
		return nil, ErrUnknownKey
	})
	v, err := NewVerifier(VerifierConfig{
		Issuers:    []TrustedIssuer{{Issuer: testIssuer, Audiences: []string{testAudience}, Keys: src}},
		Algorithms: []string{AlgES256, AlgES384, AlgRS256},
		Now:        func() time.Time { return fuzzNow },
	})
	must(f, err)
	sentinels := []error{
		ErrMissingToken, ErrMalformed, ErrTooLarge, ErrAlgorithm, ErrCritical, ErrUnknownKey, ErrBadSignature,
		ErrExpired, ErrNotYetValid, ErrMissingClaim, ErrBadIssuer, ErrBadAudience, ErrQueryToken, ErrInvalidRequest,
	}
	h := Middleware(v, MiddlewareOptions{})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		switch {
		case err == nil && (c == nil || c.Subject == "" || c.ExpiresAt.IsZero()):
			t.Fatalf("success without claims: %+v", c)
		case err != nil && c != nil:
			t.Fatal("claims returned with an error")
		case err != nil:
			matched := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					matched++
				}
			}
			if matched != 1 {
				t.Fatalf("error %q matches %d sentinels; want 1", err, matched)
			}
		}
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header["Authorization"] = []string{"Bearer " + token}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusUnauthorized, http.StatusRequestHeaderFieldsTooLarge:
		default:
			t.Fatalf("middleware answered %d", rec.Code)
		}
		if (rec.Code == http.StatusOK) != (err == nil) && !strings.ContainsAny(token, " \t") && strings.TrimLeft(token, " ") == token {
			t.Fatalf("middleware %d disagrees with Verify %v", rec.Code, err)
		}
	})
}

// TestWriteFuzzCorpus regenerates the committed seed corpus:
//
//	go test ./internal/jwtauth -run TestWriteFuzzCorpus -update-fuzz-corpus
func TestWriteFuzzCorpus(t *testing.T) {
	if !*updateFuzzCorpus {
		t.Skip("run with -update-fuzz-corpus to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	must(t, os.MkdirAll(dir, 0o755))
	for i, s := range fuzzSeeds(t) {
		data := fmt.Sprintf("go test fuzz v1\nstring(%q)\n", s)
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(data), 0o644))
	}
}
