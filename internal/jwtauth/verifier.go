package jwtauth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"

	"github.com/petmesh/petmesh/internal/identity"
)

// Verifier defaults.
const (
	DefaultMaxTokenSize = 8 << 10
	DefaultCacheSize    = 10000
	DefaultCacheTTL     = time.Minute
	maxLeeway           = 5 * time.Minute
)

// KeySource resolves a kid to a verification key. Implementations must be
// safe for concurrent use, treat kid only as a lookup key, and return an
// error matching ErrUnknownKey when they have no such key. The key store,
// RemoteJWKS and FileJWKS implement it.
type KeySource interface {
	PublicKey(ctx context.Context, kid string) (*PublicKey, error)
}

// KeySourceFunc adapts a function to KeySource.
type KeySourceFunc func(ctx context.Context, kid string) (*PublicKey, error)

// PublicKey implements KeySource.
func (f KeySourceFunc) PublicKey(ctx context.Context, kid string) (*PublicKey, error) {
	return f(ctx, kid)
}

var (
	_ KeySource = (*KeyStore)(nil)
	_ KeySource = KeySourceFunc(nil)
)

// TrustedIssuer is one issuer the verifier accepts tokens from.
type TrustedIssuer struct {
	// Issuer must equal the token's "iss" exactly.
	Issuer string
	// Audiences: the token's "aud" must contain at least one of them.
	Audiences []string
	// Keys resolves the token's kid; only keys of this issuer verify its tokens.
	Keys KeySource
}

// VerifierConfig configures a Verifier. Zero values take the defaults.
type VerifierConfig struct {
	Issuers []TrustedIssuer
	// Algorithms is the allow-list; default [ES256]. Only ES256, ES384 and
	// RS256 may be listed: "none" and HMAC are never accepted.
	Algorithms []string
	// Leeway is the clock skew allowed on exp, nbf and iat (default 30s,
	// at most 5m). Use a negative value for no leeway.
	Leeway time.Duration
	// MaxTokenSize in bytes (default 8 KiB); larger tokens fail with
	// ErrTooLarge before any decoding.
	MaxTokenSize int
	// CacheSize bounds the verification cache (default 10000 entries;
	// negative disables it). CacheTTL bounds how long a verified token is
	// trusted without re-verification (default 1m); an entry never
	// outlives the token's exp.
	CacheSize int
	CacheTTL  time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Claims are the verified claims of a token. A *Claims returned by the
// Verifier may be shared with other callers (it is cached): never modify it.
type Claims struct {
	Issuer    string
	Subject   string
	Audience  []string
	Roles     []string
	ExpiresAt time.Time
	NotBefore time.Time
	IssuedAt  time.Time
	ID        string
	KeyID     string
	Algorithm string
}

// HasRole reports whether the claims hold role.
func (c *Claims) HasRole(role string) bool { return slices.Contains(c.Roles, role) }

// Identity returns the identity forwarded to services.
func (c *Claims) Identity() identity.Identity {
	return identity.Identity{Subject: c.Subject, Roles: c.Roles}
}

// VerifierStats counts verifier work since it was created.
type VerifierStats struct {
	// CacheHits are tokens answered from the cache; SignatureChecks are
	// signature verifications performed (the expensive part).
	CacheHits       uint64
	SignatureChecks uint64
	Verified        uint64
	Failed          uint64
}

// Verifier verifies bearer tokens. It is safe for concurrent use.
type Verifier struct {
	issuers map[string]*TrustedIssuer
	methods map[string]jwt.SigningMethod
	leeway  time.Duration
	maxSize int
	now     func() time.Time
	cache   *verifyCache
	ttl     time.Duration

	tooLarge error

	hits, sigChecks, verified, failed atomic.Uint64
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if len(cfg.Issuers) == 0 {
		return nil, errors.New("verifier: at least one issuer is required")
	}
	v := &Verifier{issuers: make(map[string]*TrustedIssuer), methods: make(map[string]jwt.SigningMethod)}
	for i := range cfg.Issuers {
		ti := cfg.Issuers[i]
		switch {
		case ti.Issuer == "":
			return nil, fmt.Errorf("verifier: issuers[%d]: issuer is required", i)
		case len(ti.Audiences) == 0 || slices.Contains(ti.Audiences, ""):
			return nil, fmt.Errorf("verifier: issuer %q: at least one non-empty audience is required", ti.Issuer)
		case ti.Keys == nil:
			return nil, fmt.Errorf("verifier: issuer %q: key source is required", ti.Issuer)
		}
		if _, dup := v.issuers[ti.Issuer]; dup {
			return nil, fmt.Errorf("verifier: issuer %q listed twice", ti.Issuer)
		}
		ti.Audiences = slices.Clone(ti.Audiences)
		v.issuers[ti.Issuer] = &ti
	}
	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = []string{AlgES256}
	}
	for _, a := range algs {
		switch a {
		case AlgES256:
			v.methods[a] = jwt.SigningMethodES256
		case AlgES384:
			v.methods[a] = jwt.SigningMethodES384
		case AlgRS256:
			v.methods[a] = jwt.SigningMethodRS256
		default:
			return nil, fmt.Errorf("verifier: algorithm %q not supported; allowed: ES256, ES384, RS256", a)
		}
	}
	switch {
	case cfg.Leeway == 0:
		v.leeway = DefaultLeeway
	case cfg.Leeway < 0:
		v.leeway = 0
	case cfg.Leeway > maxLeeway:
		return nil, fmt.Errorf("verifier: leeway %s: at most %s", cfg.Leeway, maxLeeway)
	default:
		v.leeway = cfg.Leeway
	}
	v.maxSize = cfg.MaxTokenSize
	if v.maxSize == 0 {
		v.maxSize = DefaultMaxTokenSize
	}
	if v.maxSize < 64 {
		return nil, fmt.Errorf("verifier: max token size %d: want at least 64", v.maxSize)
	}
	v.tooLarge = fmt.Errorf("%w: over %d bytes", ErrTooLarge, v.maxSize)
	v.now = cfg.Now
	if v.now == nil {
		v.now = time.Now
	}
	v.ttl = cfg.CacheTTL
	if v.ttl == 0 {
		v.ttl = DefaultCacheTTL
	}
	if v.ttl < 0 {
		return nil, fmt.Errorf("verifier: cache ttl %s: must not be negative", v.ttl)
	}
	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	if size > 0 {
		v.cache = newVerifyCache(size)
	}
	return v, nil
}

// MaxTokenSize returns the size limit in bytes.
func (v *Verifier) MaxTokenSize() int { return v.maxSize }

// Stats returns counters of the work done so far.
func (v *Verifier) Stats() VerifierStats {
	return VerifierStats{CacheHits: v.hits.Load(), SignatureChecks: v.sigChecks.Load(), Verified: v.verified.Load(), Failed: v.failed.Load()}
}

// Verify checks token and returns its claims. Every error matches one of
// the package's sentinel errors (ErrMalformed, ErrExpired, ...) with
// errors.Is; the error text never contains the token.
//
// Checks, in order: size; cache; structure and strict base64url; header
// (alg in the allow-list, no "crit", a kid; jku/x5u/jwk/x5c are ignored and
// never fetched); claims JSON; iss among the trusted issuers; kid among
// that issuer's keys with an algorithm matching the key; signature; exp
// (required), nbf and iat with leeway; aud; sub.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, ErrMissingToken
	}
	if len(token) > v.maxSize {
		v.failed.Add(1)
		return nil, v.tooLarge // preformatted: refusing costs no allocation
	}
	now := v.now()
	var key [32]byte
	if v.cache != nil {
		// The token is only read: hashing it in place saves a copy.
		key = sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
		if c, ok := v.cache.get(key, now); ok {
			v.hits.Add(1)
			return c, nil
		}
	}
	c, err := v.verify(ctx, token, now)
	if err != nil {
		v.failed.Add(1)
		return nil, err
	}
	v.verified.Add(1)
	if v.cache != nil {
		exp := now.Add(v.ttl)
		if c.ExpiresAt.Before(exp) {
			exp = c.ExpiresAt
		}
		v.cache.put(key, c, exp)
	}
	return c, nil
}

type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

type payload struct {
	Iss   string       `json:"iss"`
	Sub   string       `json:"sub"`
	Aud   audience     `json:"aud"`
	Exp   *numericDate `json:"exp"`
	Nbf   *numericDate `json:"nbf"`
	Iat   *numericDate `json:"iat"`
	Jti   string       `json:"jti"`
	Roles []string     `json:"roles"`
}

// audience accepts a single string or an array of strings (RFC 7519 §4.1.3).
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = audience{s}
		return nil
	}
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	*a = ss
	return nil
}

// numericDate is seconds since the epoch, integer or fractional.
type numericDate struct{ t time.Time }

// maxNumericDate is the end of year 9999.
const maxNumericDate = 253402300799

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	if f < 0 || f > maxNumericDate {
		return fmt.Errorf("numeric date %v out of range", f)
	}
	sec := int64(f)
	d.t = time.Unix(sec, int64((f-float64(sec))*1e9))
	return nil
}

func decodeSegment(s string) ([]byte, error) {
	return b64.Strict().DecodeString(s)
}

func (v *Verifier) verify(ctx context.Context, token string, now time.Time) (*Claims, error) {
	i := strings.IndexByte(token, '.')
	j := strings.LastIndexByte(token, '.')
	if i <= 0 || j == i || strings.IndexByte(token[i+1:j], '.') >= 0 {
		return nil, fmt.Errorf("%w: want three dot-separated segments", ErrMalformed)
	}
	hb, err := decodeSegment(token[:i])
	if err != nil {
		return nil, fmt.Errorf("%w: header is not base64url", ErrMalformed)
	}
	var h header
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("%w: header is not a JSON object", ErrMalformed)
	}
	method, ok := v.methods[h.Alg]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrAlgorithm, truncate(h.Alg))
	}
	if h.Crit != nil {
		return nil, fmt.Errorf("%w: no critical extensions are supported", ErrCritical)
	}
	if h.Kid == "" {
		return nil, fmt.Errorf("%w: token has no kid", ErrUnknownKey)
	}
	pb, err := decodeSegment(token[i+1 : j])
	if err != nil {
		return nil, fmt.Errorf("%w: payload is not base64url", ErrMalformed)
	}
	var p payload
	if err := json.Unmarshal(pb, &p); err != nil {
		return nil, fmt.Errorf("%w: payload is not a valid claims object", ErrMalformed)
	}
	ti, ok := v.issuers[p.Iss]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrBadIssuer, truncate(p.Iss))
	}
	k, err := ti.Keys.PublicKey(ctx, h.Kid)
	if err != nil {
		if errors.Is(err, ErrUnknownKey) {
			return nil, fmt.Errorf("%w: kid %q", ErrUnknownKey, truncate(h.Kid))
		}
		return nil, fmt.Errorf("%w: kid %q: %w", ErrUnknownKey, truncate(h.Kid), err)
	}
	if k.Alg != h.Alg {
		return nil, fmt.Errorf("%w: %s token for a %s key", ErrAlgorithm, h.Alg, k.Alg)
	}
	sig, err := decodeSegment(token[j+1:])
	if err != nil {
		return nil, fmt.Errorf("%w: signature is not base64url", ErrMalformed)
	}
	if len(sig) == 0 {
		return nil, fmt.Errorf("%w: signature missing", ErrBadSignature)
	}
	v.sigChecks.Add(1)
	if err := method.Verify(token[:j], sig, k.Key); err != nil {
		return nil, ErrBadSignature
	}
	if p.Exp == nil {
		return nil, fmt.Errorf("%w: exp", ErrMissingClaim)
	}
	if !now.Before(p.Exp.t.Add(v.leeway)) {
		return nil, ErrExpired
	}
	c := &Claims{
		Issuer: p.Iss, Subject: p.Sub, Audience: p.Aud, Roles: p.Roles, ExpiresAt: p.Exp.t,
		ID: p.Jti, KeyID: h.Kid, Algorithm: h.Alg,
	}
	if p.Nbf != nil {
		if now.Add(v.leeway).Before(p.Nbf.t) {
			return nil, fmt.Errorf("%w: nbf in the future", ErrNotYetValid)
		}
		c.NotBefore = p.Nbf.t
	}
	if p.Iat != nil {
		if now.Add(v.leeway).Before(p.Iat.t) {
			return nil, fmt.Errorf("%w: iat in the future", ErrNotYetValid)
		}
		c.IssuedAt = p.Iat.t
	}
	if !slices.ContainsFunc(p.Aud, func(a string) bool { return slices.Contains(ti.Audiences, a) }) {
		return nil, ErrBadAudience
	}
	if err := validSubject(p.Sub); err != nil {
		return nil, err
	}
	for _, r := range p.Roles {
		if validRole(r) != nil {
			return nil, fmt.Errorf("%w: invalid role", ErrMalformed)
		}
	}
	if c.Roles == nil {
		c.Roles = []string{}
	}
	return c, nil
}

// validSubject requires a subject that can travel in a header.
func validSubject(s string) error {
	if s == "" {
		return fmt.Errorf("%w: sub", ErrMissingClaim)
	}
	if len(s) > 256 {
		return fmt.Errorf("%w: sub longer than 256 bytes", ErrMalformed)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return fmt.Errorf("%w: sub has control characters", ErrMalformed)
		}
	}
	return nil
}

// truncate bounds attacker-controlled strings quoted in error messages.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
