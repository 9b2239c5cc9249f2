package jwtauth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/petmesh/petmesh/internal/httpx"
)

// DefaultTokenTTL is the lifetime of issued tokens when IssuerConfig.TTL is 0.
const DefaultTokenTTL = 15 * time.Minute

// IssuerConfig configures an Issuer.
type IssuerConfig struct {
	// Issuer is the "iss" claim, e.g. the edge's public URL.
	Issuer string
	// Audience is the "aud" claim of every token; at least one value.
	Audience []string
	// TTL is the token lifetime; at most the key store's MaxTokenLifetime.
	TTL time.Duration
	// Keys signs the tokens with its active key.
	Keys *KeyStore
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Issuer signs access tokens with the active key of a KeyStore.
// It is safe for concurrent use.
type Issuer struct {
	cfg IssuerConfig
}

// NewIssuer validates cfg and returns an Issuer.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("issuer: issuer is required")
	}
	if len(cfg.Audience) == 0 {
		return nil, errors.New("issuer: at least one audience is required")
	}
	for _, a := range cfg.Audience {
		if a == "" {
			return nil, errors.New("issuer: audience must not be empty")
		}
	}
	if cfg.Keys == nil {
		return nil, errors.New("issuer: key store is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = min(DefaultTokenTTL, cfg.Keys.cfg.MaxTokenLifetime)
	}
	if cfg.TTL < time.Second || cfg.TTL > cfg.Keys.cfg.MaxTokenLifetime {
		return nil, fmt.Errorf("issuer: ttl %s: want between 1s and the key store's max token lifetime %s", cfg.TTL, cfg.Keys.cfg.MaxTokenLifetime)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Issuer{cfg: cfg}, nil
}

// Name returns the issuer ("iss") name.
func (is *Issuer) Name() string { return is.cfg.Issuer }

// TTL returns the lifetime of issued tokens.
func (is *Issuer) TTL() time.Duration { return is.cfg.TTL }

// Keys returns the key store, which is also the issuer's KeySource.
func (is *Issuer) Keys() *KeyStore { return is.cfg.Keys }

// tokenClaims is the JSON payload of an issued token.
type tokenClaims struct {
	jwt.RegisteredClaims
	Roles []string `json:"roles"`
}

// Token is an issued access token.
type Token struct {
	Raw       string
	ExpiresAt time.Time
	ID        string
	KID       string
}

// Issue signs a token for subject with roles.
func (is *Issuer) Issue(subject string, roles []string) (Token, error) {
	if subject == "" {
		return Token{}, errors.New("issue token: subject is required")
	}
	k, err := is.cfg.Keys.signer()
	if err != nil {
		return Token{}, fmt.Errorf("issue token: %w", err)
	}
	var idb [16]byte
	_, _ = rand.Read(idb[:])
	now := is.cfg.Now().Truncate(time.Second)
	exp := now.Add(is.cfg.TTL)
	if roles == nil {
		roles = []string{}
	}
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    is.cfg.Issuer,
			Subject:   subject,
			Audience:  jwt.ClaimStrings(is.cfg.Audience),
			ExpiresAt: jwt.NewNumericDate(exp),
			NotBefore: jwt.NewNumericDate(now),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        base64.RawURLEncoding.EncodeToString(idb[:]),
		},
		Roles: roles,
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, c)
	t.Header["kid"] = k.KID
	raw, err := t.SignedString(k.priv)
	if err != nil {
		return Token{}, fmt.Errorf("issue token: %w", err)
	}
	return Token{Raw: raw, ExpiresAt: exp, ID: c.ID, KID: k.KID}, nil
}

func writeMethodNotAllowed(w http.ResponseWriter, method string) {
	httpx.WriteError(w, &httpx.Error{
		Status:  http.StatusMethodNotAllowed,
		Code:    httpx.CodeMethodNotAllowed,
		Message: fmt.Sprintf("method %s not allowed", strings.ToUpper(method)),
	})
}
