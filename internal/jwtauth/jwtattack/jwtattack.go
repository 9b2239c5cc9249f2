// Package jwtattack is the JWT attack table of the security issue, shared by
// every test that must refuse forged tokens: internal/jwtauth checks each
// case against its Verifier and middleware, the edge and sidecar tests send
// the same tokens over real sockets to real processes. One table, so a new
// attack is added once and checked everywhere.
//
// It is a test helper: it depends only on golang-jwt and the standard
// library (not on jwtauth, whose own tests import it), and it knows the
// jwtauth key file format (README of internal/jwtauth) so that tests can
// sign with a running issuer's key and plant a retired key.
package jwtattack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Reason is why a case must be refused; each maps to one jwtauth sentinel
// error (jwtauth's attack test keeps that map and checks it is complete).
type Reason string

// Reasons. Pass is a control case that must be accepted.
const (
	Pass         Reason = "pass"
	Algorithm    Reason = "algorithm"     // jwtauth.ErrAlgorithm
	BadSignature Reason = "bad-signature" // jwtauth.ErrBadSignature
	Expired      Reason = "expired"       // jwtauth.ErrExpired
	NotYetValid  Reason = "not-yet-valid" // jwtauth.ErrNotYetValid
	BadIssuer    Reason = "bad-issuer"    // jwtauth.ErrBadIssuer
	BadAudience  Reason = "bad-audience"  // jwtauth.ErrBadAudience
	MissingClaim Reason = "missing-claim" // jwtauth.ErrMissingClaim
	Malformed    Reason = "malformed"     // jwtauth.ErrMalformed
	UnknownKey   Reason = "unknown-key"   // jwtauth.ErrUnknownKey
	Critical     Reason = "critical"      // jwtauth.ErrCritical
	TooLarge     Reason = "too-large"     // jwtauth.ErrTooLarge
	QueryToken   Reason = "query-token"   // jwtauth.ErrQueryToken
)

// Case is one attack: a token, where to put it, and the expected outcome.
type Case struct {
	Name  string
	Token string
	// InQuery: send the token as ?access_token= instead of the
	// Authorization header.
	InQuery bool
	Reason  Reason
	// Status is what an HTTP layer must answer: 200 for the controls,
	// 431 for an oversized token, 401 otherwise. Never a 5xx.
	Status int
}

// Config describes the issuer under attack. Key/KID are the issuer's active
// signing key (the attacker does not have it; the table needs it to build
// tokens that are valid but for one property).
type Config struct {
	Key      *ecdsa.PrivateKey
	KID      string
	Issuer   string
	Audience string
	Subject  string   // default "alice"
	Roles    []string // default [viewer]
	// Now is the verifier's clock (default time.Now()).
	Now time.Time
	// Leeway is the verifier's clock skew allowance (default 30s).
	Leeway time.Duration
	// MaxTokenSize is the verifier's size limit (default 8192).
	MaxTokenSize int
	// Retired, RetiredKID: a key retired past its grace period (optional;
	// without it that case is left out). See PlantRetiredKey.
	Retired    *ecdsa.PrivateKey
	RetiredKID string
	// AttackerURL is where jku/x5u point (an httptest server counting hits:
	// it must receive none). Default http://127.0.0.1:1.
	AttackerURL string
}

var b64 = base64.RawURLEncoding

// Cases builds the attack table for cfg.
func Cases(cfg Config) ([]Case, error) {
	if cfg.Key == nil || cfg.KID == "" || cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("jwtattack: Key, KID, Issuer and Audience are required")
	}
	if cfg.Subject == "" {
		cfg.Subject = "alice"
	}
	if cfg.Roles == nil {
		cfg.Roles = []string{"viewer"}
	}
	if cfg.Now.IsZero() {
		cfg.Now = time.Now()
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.MaxTokenSize == 0 {
		cfg.MaxTokenSize = 8192
	}
	if cfg.AttackerURL == "" {
		cfg.AttackerURL = "http://127.0.0.1:1"
	}
	evil, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	evilKID := Thumbprint(&evil.PublicKey)
	evilJWK := PublicJWK(evilKID, &evil.PublicKey)

	now := cfg.Now
	claims := func() jwt.MapClaims {
		return jwt.MapClaims{
			"iss": cfg.Issuer, "sub": cfg.Subject, "aud": []string{cfg.Audience},
			"exp": now.Add(10 * time.Minute).Unix(), "nbf": now.Add(-time.Second).Unix(), "iat": now.Add(-time.Second).Unix(),
			"jti": "jwtattack", "roles": cfg.Roles,
		}
	}
	with := func(k string, v any) jwt.MapClaims {
		c := claims()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	var firstErr error
	sign := func(priv *ecdsa.PrivateKey, hdr map[string]any, c jwt.MapClaims) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, c)
		for k, v := range hdr {
			tok.Header[k] = v
		}
		s, err := tok.SignedString(priv)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return s
	}
	kid := map[string]any{"kid": cfg.KID}
	good := sign(cfg.Key, kid, claims())
	parts := strings.Split(good, ".")
	payload, err := json.Marshal(claims())
	if err != nil {
		return nil, err
	}
	raw := func(header string, payload []byte, sig []byte) string {
		return b64.EncodeToString([]byte(header)) + "." + b64.EncodeToString(payload) + "." + b64.EncodeToString(sig)
	}

	// Algorithm confusion: HS256 keyed with what the attacker can read,
	// the issuer's public key (PEM, and its JWK as published in the JWKS).
	pubDER, err := x509.MarshalPKIXPublicKey(&cfg.Key.PublicKey)
	if err != nil {
		return nil, err
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	pubJWK, err := json.Marshal(PublicJWK(cfg.KID, &cfg.Key.PublicKey))
	if err != nil {
		return nil, err
	}
	hsInput := b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT","kid":"`+cfg.KID+`"}`)) + "." + parts[1]
	hsPEM, err := jwt.SigningMethodHS256.Sign(hsInput, pubPEM)
	if err != nil {
		return nil, err
	}
	hsJWK, err := jwt.SigningMethodHS256.Sign(hsInput, pubJWK)
	if err != nil {
		return nil, err
	}
	otherSig, err := b64.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	forged, err := json.Marshal(with("sub", "admin"))
	if err != nil {
		return nil, err
	}
	pad := strings.Repeat("A", cfg.MaxTokenSize+1024)

	c := []Case{
		{Name: "control: valid token passes", Token: good, Reason: Pass},
		{Name: "alg none", Token: raw(`{"alg":"none","kid":"`+cfg.KID+`"}`, payload, nil), Reason: Algorithm},
		{Name: "alg None", Token: raw(`{"alg":"None","kid":"`+cfg.KID+`"}`, payload, nil), Reason: Algorithm},
		{Name: "alg NONE", Token: raw(`{"alg":"NONE","kid":"`+cfg.KID+`"}`, payload, nil), Reason: Algorithm},
		{Name: "alg none with the real signature", Token: b64.EncodeToString([]byte(`{"alg":"none","kid":"`+cfg.KID+`"}`)) + "." + parts[1] + "." + parts[2], Reason: Algorithm},
		{Name: "HS256 keyed with the issuer's public key PEM", Token: hsInput + "." + b64.EncodeToString(hsPEM), Reason: Algorithm},
		{Name: "HS256 keyed with the issuer's public JWK", Token: hsInput + "." + b64.EncodeToString(hsJWK), Reason: Algorithm},
		{Name: "signature stripped", Token: parts[0] + "." + parts[1] + ".", Reason: BadSignature},
		{Name: "signature of another token", Token: parts[0] + "." + b64.EncodeToString(forged) + "." + parts[2], Reason: BadSignature},
		{Name: "signature truncated", Token: parts[0] + "." + parts[1] + "." + b64.EncodeToString(otherSig[:len(otherSig)-4]), Reason: BadSignature},
		{Name: "expired", Token: sign(cfg.Key, kid, with("exp", now.Add(-cfg.Leeway-time.Minute).Unix())), Reason: Expired},
		{Name: "control: expired within leeway passes", Token: sign(cfg.Key, kid, with("exp", now.Add(-cfg.Leeway/3).Unix())), Reason: Pass},
		{Name: "nbf in the future", Token: sign(cfg.Key, kid, with("nbf", now.Add(time.Hour).Unix())), Reason: NotYetValid},
		{Name: "iat in the future beyond leeway", Token: sign(cfg.Key, kid, with("iat", now.Add(cfg.Leeway+90*time.Second).Unix())), Reason: NotYetValid},
		{Name: "wrong iss", Token: sign(cfg.Key, kid, with("iss", "https://evil.test")), Reason: BadIssuer},
		{Name: "missing iss", Token: sign(cfg.Key, kid, with("iss", nil)), Reason: BadIssuer},
		{Name: "wrong aud", Token: sign(cfg.Key, kid, with("aud", "other")), Reason: BadAudience},
		{Name: "missing aud", Token: sign(cfg.Key, kid, with("aud", nil)), Reason: BadAudience},
		{Name: "missing exp", Token: sign(cfg.Key, kid, with("exp", nil)), Reason: MissingClaim},
		{Name: "exp as a string", Token: sign(cfg.Key, kid, with("exp", "tomorrow")), Reason: Malformed},
		{Name: "missing sub", Token: sign(cfg.Key, kid, with("sub", nil)), Reason: MissingClaim},
		{Name: "role with a comma (header injection)", Token: sign(cfg.Key, kid, with("roles", []string{"viewer,admin"})), Reason: Malformed},
		{Name: "no kid", Token: sign(cfg.Key, nil, claims()), Reason: UnknownKey},
		{Name: "unknown kid", Token: sign(cfg.Key, map[string]any{"kid": "nope"}, claims()), Reason: UnknownKey},
		{Name: "kid path traversal", Token: sign(cfg.Key, map[string]any{"kid": "../../../../etc/passwd"}, claims()), Reason: UnknownKey},
		{Name: "kid path traversal to a key file", Token: sign(cfg.Key, map[string]any{"kid": "../" + cfg.KID}, claims()), Reason: UnknownKey},
		{Name: "kid SQL injection", Token: sign(cfg.Key, map[string]any{"kid": "' OR 1=1 --"}, claims()), Reason: UnknownKey},
		{Name: "kid not a string", Token: sign(cfg.Key, map[string]any{"kid": 7}, claims()), Reason: Malformed},
		{Name: "jku to attacker with attacker key", Token: sign(evil, map[string]any{"kid": evilKID, "jku": cfg.AttackerURL + "/jwks.json"}, claims()), Reason: UnknownKey},
		{Name: "x5u to attacker with attacker key", Token: sign(evil, map[string]any{"kid": evilKID, "x5u": cfg.AttackerURL + "/cert.pem"}, claims()), Reason: UnknownKey},
		{Name: "embedded jwk of attacker", Token: sign(evil, map[string]any{"kid": evilKID, "jwk": evilJWK}, claims()), Reason: UnknownKey},
		{Name: "jku to attacker with real kid", Token: sign(evil, map[string]any{"kid": cfg.KID, "jku": cfg.AttackerURL + "/jwks.json"}, claims()), Reason: BadSignature},
		{Name: "embedded jwk with real kid", Token: sign(evil, map[string]any{"kid": cfg.KID, "jwk": evilJWK}, claims()), Reason: BadSignature},
		{Name: "x5c with attacker key", Token: sign(evil, map[string]any{"kid": cfg.KID, "x5c": []string{"MIIB"}}, claims()), Reason: BadSignature},
		{Name: "crit with unknown extension", Token: sign(cfg.Key, map[string]any{"kid": cfg.KID, "crit": []string{"petmesh-ext"}, "petmesh-ext": true}, claims()), Reason: Critical},
		{Name: "crit empty", Token: sign(cfg.Key, map[string]any{"kid": cfg.KID, "crit": []string{}}, claims()), Reason: Critical},
		{Name: "token over 8 KB", Token: sign(cfg.Key, kid, with("pad", pad)), Reason: TooLarge},
		{Name: "malformed base64 header", Token: "!!!." + parts[1] + "." + parts[2], Reason: Malformed},
		{Name: "padded base64", Token: parts[0] + "=." + parts[1] + "." + parts[2], Reason: Malformed},
		{Name: "malformed JSON header", Token: b64.EncodeToString([]byte(`{"alg":`)) + "." + parts[1] + "." + parts[2], Reason: Malformed},
		{Name: "header is an array", Token: b64.EncodeToString([]byte(`["ES256"]`)) + "." + parts[1] + "." + parts[2], Reason: Malformed},
		{Name: "malformed JSON payload", Token: parts[0] + "." + b64.EncodeToString([]byte(`{"sub":`)) + "." + parts[2], Reason: Malformed},
		{Name: "malformed base64 signature", Token: parts[0] + "." + parts[1] + ".***", Reason: Malformed},
		{Name: "two segments", Token: parts[0] + "." + parts[1], Reason: Malformed},
		{Name: "four segments", Token: good + ".x", Reason: Malformed},
		{Name: "empty segments", Token: "..", Reason: Malformed},
		{Name: "not a JWT", Token: "hello", Reason: Malformed},
		{Name: "token in the query string", Token: good, InQuery: true, Reason: QueryToken},
	}
	if cfg.Retired != nil {
		c = append(c, Case{Name: "retired key after its grace period", Token: sign(cfg.Retired, map[string]any{"kid": cfg.RetiredKID}, claims()), Reason: UnknownKey})
	}
	if firstErr != nil {
		return nil, firstErr
	}
	for i := range c {
		switch c[i].Reason {
		case Pass:
			c[i].Status = http.StatusOK
		case TooLarge:
			c[i].Status = http.StatusRequestHeaderFieldsTooLarge
		default:
			c[i].Status = http.StatusUnauthorized
		}
	}
	return c, nil
}

// Request builds the HTTP request of case c to url (a protected URL of the
// server under test): the token in the Authorization header, or in the
// query string for InQuery cases. A client-sent identity header is added
// to every request: it must never be believed.
func (c Case) Request(method, url string) (*http.Request, error) {
	if c.InQuery {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		url += sep + "access_token=" + c.Token
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	if !c.InQuery {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	req.Header.Set("X-Petmesh-Subject", "root")
	req.Header.Set("X-Petmesh-Roles", "admin")
	return req, nil
}

// Secret is the part of the token a response must never echo (its payload
// segment, or the whole token when it has none).
func (c Case) Secret() string {
	parts := strings.Split(c.Token, ".")
	if len(parts) >= 2 && len(parts[1]) >= 16 {
		return parts[1]
	}
	return c.Token
}

// JWK is the public JWK of an EC key, as published in a JWKS.
type JWK struct {
	Kty string `json:"kty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	KID string `json:"kid,omitempty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// PublicJWK returns the JWK of a P-256 public key.
func PublicJWK(kid string, pub *ecdsa.PublicKey) JWK {
	x, y := pubXY(pub)
	return JWK{Kty: "EC", Use: "sig", Alg: "ES256", KID: kid, Crv: "P-256", X: b64.EncodeToString(x), Y: b64.EncodeToString(y)}
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint of a P-256 public key,
// which jwtauth uses as the kid.
func Thumbprint(pub *ecdsa.PublicKey) string {
	x, y := pubXY(pub)
	canonical := fmt.Appendf(nil, `{"crv":"P-256","kty":"EC","x":%q,"y":%q}`, b64.EncodeToString(x), b64.EncodeToString(y))
	sum := sha256.Sum256(canonical)
	return b64.EncodeToString(sum[:])
}

func pubXY(pub *ecdsa.PublicKey) (x, y []byte) {
	b, err := pub.Bytes() // uncompressed point 0x04 || X || Y
	if err != nil || len(b) != 65 {
		return nil, nil
	}
	return b[1:33], b[33:]
}

// keyFile is jwtauth's key file format (internal/jwtauth/README.md).
type keyFile struct {
	KID         string     `json:"kid"`
	Alg         string     `json:"alg"`
	CreatedAt   time.Time  `json:"created_at"`
	ActivatedAt *time.Time `json:"activated_at,omitempty"`
	RetiredAt   *time.Time `json:"retired_at,omitempty"`
	PrivateKey  string     `json:"private_key"`
}

// ActiveKey reads a jwtauth key directory and returns the active signing
// key (activated, not retired; the most recently activated one) and its kid.
func ActiveKey(dir string) (*ecdsa.PrivateKey, string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", err
	}
	var best *keyFile
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, "", err
		}
		var kf keyFile
		if err := json.Unmarshal(b, &kf); err != nil {
			return nil, "", fmt.Errorf("%s: %w", e.Name(), err)
		}
		if kf.ActivatedAt == nil || kf.RetiredAt != nil {
			continue
		}
		if best == nil || kf.ActivatedAt.After(*best.ActivatedAt) {
			best = &kf
		}
	}
	if best == nil {
		return nil, "", fmt.Errorf("no active key in %s", dir)
	}
	blk, _ := pem.Decode([]byte(best.PrivateKey))
	if blk == nil {
		return nil, "", fmt.Errorf("key %s: no PEM block", best.KID)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("key %s: %w", best.KID, err)
	}
	priv, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, "", fmt.Errorf("key %s: %T, want ECDSA", best.KID, k)
	}
	return priv, best.KID, nil
}

// PlantRetiredKey writes a new key into a jwtauth key directory (created
// 0700 if missing) that was retired at retiredAt: when retiredAt is more than
// the issuer's grace (max token lifetime + leeway) ago, the issuer removes
// it when it opens the directory, and tokens it signed must be refused.
func PlantRetiredKey(dir string, retiredAt time.Time) (*ecdsa.PrivateKey, string, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, "", err
	}
	kid := Thumbprint(&priv.PublicKey)
	created := retiredAt.Add(-48 * time.Hour).UTC()
	activated := retiredAt.Add(-24 * time.Hour).UTC()
	retired := retiredAt.UTC()
	b, err := json.MarshalIndent(keyFile{
		KID: kid, Alg: "ES256", CreatedAt: created, ActivatedAt: &activated, RetiredAt: &retired,
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
	}, "", "  ")
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, kid+".json"), b, 0o600); err != nil {
		return nil, "", err
	}
	return priv, kid, nil
}
