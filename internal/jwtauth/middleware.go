package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
)

// MiddlewareOptions configures Middleware.
type MiddlewareOptions struct {
	// AllowQueryToken accepts a token in the QueryParam query parameter
	// when there is no Authorization header (RFC 6750 §2.3). Off by
	// default: URLs end up in logs. When accepted, the parameter is removed
	// from the URL before the request goes on.
	AllowQueryToken bool
	// QueryParam is the query parameter name; default "access_token".
	QueryParam string
	// Realm is the WWW-Authenticate realm; default "petmesh".
	Realm string
	// Logger receives one debug line per rejected request (reason only;
	// never the token).
	Logger *slog.Logger
}

type claimsKey struct{}

// NewContext returns ctx carrying verified claims.
func NewContext(ctx context.Context, c *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFromContext returns the claims put in the context by Middleware.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// Middleware authenticates every request with v. On failure it answers 401
// with WWW-Authenticate (RFC 6750) and the JSON error body, or 431 for an
// oversized token, and does not call next. On success it removes every
// client-sent X-Petmesh-* header, sets the verified identity headers
// (identity.SetHeaders), keeps the Authorization header for the next hop,
// and puts the claims and the identity in the request context.
func Middleware(v *Verifier, opts MiddlewareOptions) func(http.Handler) http.Handler {
	if opts.QueryParam == "" {
		opts.QueryParam = "access_token"
	}
	if opts.Realm == "" {
		opts.Realm = "petmesh"
	}
	opts.Realm = quotable(opts.Realm)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, err := bearerToken(r, v.maxSize, opts)
			var c *Claims
			if err == nil {
				c, err = v.Verify(r.Context(), token)
			}
			if err != nil {
				opts.Logger.DebugContext(r.Context(), "authentication failed", "reason", err.Error())
				WriteAuthError(w, opts.Realm, err)
				return
			}
			identity.StripHeaders(r.Header)
			id := c.Identity()
			identity.SetHeaders(r.Header, id)
			ctx := identity.NewContext(NewContext(r.Context(), c), id)
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// bearerToken extracts the token from the Authorization header, or from
// the query when allowed. Two ways at once, or two headers, are refused.
func bearerToken(r *http.Request, maxSize int, opts MiddlewareOptions) (string, error) {
	vals := r.Header.Values("Authorization")
	inQuery := r.URL.RawQuery != "" && r.URL.Query().Has(opts.QueryParam)
	switch {
	case len(vals) > 1:
		return "", fmt.Errorf("%w: %s", ErrInvalidRequest, "more than one Authorization header")
	case len(vals) == 1 && inQuery:
		return "", fmt.Errorf("%w: %s", ErrInvalidRequest, "token sent both in the header and in the query")
	case len(vals) == 0 && inQuery:
		if !opts.AllowQueryToken {
			return "", ErrQueryToken
		}
		q := r.URL.Query()
		tok := q.Get(opts.QueryParam)
		q.Del(opts.QueryParam)
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
		if len(tok) > maxSize {
			return "", ErrTooLarge
		}
		return tok, nil
	case len(vals) == 0:
		return "", ErrMissingToken
	}
	h := vals[0]
	const prefix = "bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", fmt.Errorf("%w: %s", ErrInvalidRequest, "authorization scheme is not Bearer")
	}
	tok := strings.TrimLeft(h[len(prefix):], " ")
	if len(tok) > maxSize {
		return "", ErrTooLarge
	}
	if tok == "" || strings.ContainsAny(tok, " \t") {
		return "", ErrMalformed
	}
	return tok, nil
}

// authDescription is the client-facing text for each sentinel: fixed
// strings, so no claim value or token text ever reaches a response.
var authDescription = []struct {
	err  error
	desc string
}{
	{ErrMissingToken, "bearer token required"},
	{ErrInvalidRequest, "malformed Authorization header"},
	{ErrQueryToken, "tokens in the query string are not accepted; use the Authorization header"},
	{ErrTooLarge, "token too large"},
	{ErrMalformed, "malformed token"},
	{ErrAlgorithm, "token algorithm not allowed"},
	{ErrCritical, "token has unsupported critical header parameters"},
	{ErrUnknownKey, "token signed by an unknown key"},
	{ErrBadSignature, "token signature invalid"},
	{ErrExpired, "token expired"},
	{ErrNotYetValid, "token not valid yet"},
	{ErrMissingClaim, "token missing a required claim"},
	{ErrBadIssuer, "token issuer not accepted"},
	{ErrBadAudience, "token audience not accepted"},
}

// WriteAuthError writes the response for a verification error: 431 for
// ErrTooLarge, otherwise 401, with WWW-Authenticate per RFC 6750 (no error
// code when the token is missing, invalid_request for a malformed header or
// a refused query-string token, invalid_token otherwise) and the JSON
// error body. Errors that match no sentinel are answered as invalid_token
// too: an authentication failure is never a 5xx.
func WriteAuthError(w http.ResponseWriter, realm string, err error) {
	desc := "invalid token"
	for _, d := range authDescription {
		if errors.Is(err, d.err) {
			desc = d.desc
			break
		}
	}
	status := http.StatusUnauthorized
	code := httpx.CodeUnauthenticated
	var challenge string
	switch {
	case errors.Is(err, ErrMissingToken):
		challenge = `Bearer realm="` + realm + `"`
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrQueryToken):
		challenge = `Bearer realm="` + realm + `", error="invalid_request", error_description="` + desc + `"`
	default:
		challenge = `Bearer realm="` + realm + `", error="invalid_token", error_description="` + desc + `"`
	}
	if errors.Is(err, ErrTooLarge) {
		status = http.StatusRequestHeaderFieldsTooLarge
		code = httpx.CodeTooLarge
	}
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Cache-Control", "no-store")
	httpx.WriteError(w, &httpx.Error{Status: status, Code: code, Message: desc, Field: "Authorization"})
}

// RequireRoles lets a request through only when the verified claims in its
// context (see Middleware) hold every one of roles; otherwise 403 naming the
// first missing role (401 when there are no claims at all).
func RequireRoles(roles ...string) func(http.Handler) http.Handler {
	return requireRoles(roles, true)
}

// RequireAnyRole lets a request through when the claims hold at least one
// of roles; otherwise 403 naming them.
func RequireAnyRole(roles ...string) func(http.Handler) http.Handler {
	return requireRoles(roles, false)
}

func requireRoles(roles []string, all bool) func(http.Handler) http.Handler {
	roles = append([]string(nil), roles...)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, ok := ClaimsFromContext(r.Context())
			if !ok {
				WriteAuthError(w, "petmesh", ErrMissingToken)
				return
			}
			var msg string
			if all {
				for _, role := range roles {
					if !c.HasRole(role) {
						msg = "requires role " + role
						break
					}
				}
			} else if len(roles) > 0 && !c.Identity().HasAny(roles...) {
				msg = "requires role " + strings.Join(roles, " or ")
			}
			if msg != "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh", error="insufficient_scope", error_description="`+quotable(msg)+`"`)
				httpx.WriteError(w, httpx.Forbidden("%s", msg))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// quotable drops the characters that cannot appear inside an HTTP
// quoted-string without escaping (quote, backslash, controls).
func quotable(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '"' || r == '\\' || r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
