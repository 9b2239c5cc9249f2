// Package jwtauth issues and verifies the JSON Web Tokens that petmesh uses
// between clients, the edge, the sidecars and the control-plane API.
//
// The pieces are:
//
//   - KeyStore: ES256 signing keys on disk (0600 files, atomic writes),
//     rotated on an interval; the next key is published before it signs and
//     a retired key keeps verifying until every token it signed has expired.
//     It serves the JWKS document (JWKSHandler).
//   - Issuer and TokenHandler: POST /auth/token for users (JSON username and
//     password) and service accounts (OAuth2 client_credentials), bcrypt
//     with a constant-time failure path and a login rate limit.
//   - Verifier: verifies tokens from the local issuer and from remote JWKS
//     issuers (RemoteJWKS, FileJWKS) with an algorithm allow-list, time
//     checks with leeway, iss/aud checks, a size limit and a bounded
//     verification cache. Every failure is one of the sentinel errors below.
//   - Middleware and RequireRoles: the HTTP layer (401/403/431).
package jwtauth

import "errors"

// Verification errors. Every error returned by Verifier.Verify matches
// exactly one of these with errors.Is; the HTTP middleware maps ErrTooLarge
// to 431 and every other one to 401.
var (
	ErrMissingToken   = errors.New("missing bearer token")
	ErrMalformed      = errors.New("malformed token")
	ErrTooLarge       = errors.New("token too large")
	ErrAlgorithm      = errors.New("token algorithm not allowed")
	ErrCritical       = errors.New("token has unsupported critical header")
	ErrUnknownKey     = errors.New("token signed by unknown key")
	ErrBadSignature   = errors.New("token signature invalid")
	ErrExpired        = errors.New("token expired")
	ErrNotYetValid    = errors.New("token not valid yet")
	ErrMissingClaim   = errors.New("token missing required claim")
	ErrBadIssuer      = errors.New("token issuer not accepted")
	ErrBadAudience    = errors.New("token audience not accepted")
	ErrQueryToken     = errors.New("token in query string not accepted")
	ErrInvalidRequest = errors.New("invalid authorization header")
)

// Issuing errors.
var (
	// ErrInvalidCredentials is returned for a wrong password, an unknown
	// user or an unknown client alike: callers cannot tell them apart.
	ErrInvalidCredentials = errors.New("invalid credentials")
)
