// Package identity carries the verified caller identity that the edge and
// the sidecars forward to services in the x-petmesh-subject and
// x-petmesh-roles headers. Services trust these headers only because the
// sidecar in front of them strips client-sent copies and sets them from a
// verified token.
package identity

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/petmesh/petmesh/internal/httpx"
)

// Header names.
const (
	HeaderSubject = "X-Petmesh-Subject"
	HeaderRoles   = "X-Petmesh-Roles"
	// HeaderPrefix is the prefix of every identity header; proxies strip
	// all client-sent headers with it.
	HeaderPrefix = "X-Petmesh-"
)

// Well-known roles.
const (
	RoleViewer = "viewer"
	RoleAdmin  = "admin"
	RoleSync   = "sync"
)

// Identity is a verified caller.
type Identity struct {
	Subject string
	Roles   []string
}

// Has reports whether the identity holds role.
func (id Identity) Has(role string) bool { return slices.Contains(id.Roles, role) }

// HasAny reports whether the identity holds one of roles.
func (id Identity) HasAny(roles ...string) bool {
	for _, r := range roles {
		if id.Has(r) {
			return true
		}
	}
	return false
}

// FromHeaders reads the identity headers; a missing subject means anonymous.
func FromHeaders(h http.Header) (Identity, bool) {
	sub := h.Get(HeaderSubject)
	if sub == "" {
		return Identity{}, false
	}
	var roles []string
	for _, r := range strings.Split(h.Get(HeaderRoles), ",") {
		if r = strings.TrimSpace(r); r != "" {
			roles = append(roles, r)
		}
	}
	return Identity{Subject: sub, Roles: roles}, true
}

// SetHeaders writes id into h, replacing any existing identity headers.
func SetHeaders(h http.Header, id Identity) {
	h.Set(HeaderSubject, id.Subject)
	h.Set(HeaderRoles, strings.Join(id.Roles, ","))
}

// StripHeaders removes every x-petmesh-* header from h.
func StripHeaders(h http.Header) {
	for k := range h {
		if len(k) >= len(HeaderPrefix) && strings.EqualFold(k[:len(HeaderPrefix)], HeaderPrefix) {
			delete(h, k)
		}
	}
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity carried by ctx.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// Require checks that the request carries an identity with one of roles:
// 401 without an identity, 403 naming the roles when none is held. On
// success it returns the identity.
func Require(r *http.Request, roles ...string) (Identity, error) {
	id, ok := FromHeaders(r.Header)
	if !ok {
		return Identity{}, httpx.Unauthenticated("authentication required")
	}
	if len(roles) > 0 && !id.HasAny(roles...) {
		return id, httpx.Forbidden("requires role %s", strings.Join(roles, " or "))
	}
	return id, nil
}
