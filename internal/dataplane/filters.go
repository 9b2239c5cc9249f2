package dataplane

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Typed filter config type URLs.
const (
	typeRouter    = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeFault     = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	typeRateLimit = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
	typeJwt       = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
	typeJwtRoute  = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
	typeRBAC      = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	typeHCM       = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeBuffer    = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"

	typePreviousHosts = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

// Route metadata conventions: Route.metadata.filter_metadata["petmesh"]
// may hold these keys (see README.md).
const (
	// MetadataNamespace is the filter_metadata key of petmesh's route
	// metadata.
	MetadataNamespace = "petmesh"
	// MetaRoles (list of strings): the caller needs one of these roles
	// (403 otherwise); checked after jwt_authn verified the caller.
	MetaRoles = "roles"
	// MetaRateLimitKey ("ip" or "subject", default "ip"): what the local
	// rate limit's token buckets are keyed by.
	MetaRateLimitKey = "ratelimit_key"
	// MetaRetryNonIdempotent (bool): retry non-idempotent methods (POST,
	// PATCH) too; by default only GET, HEAD, OPTIONS, TRACE, PUT and DELETE
	// are retried.
	MetaRetryNonIdempotent = "retry_non_idempotent"
	// MetaRouteName (string): the route table's route name; informational
	// (Route.name carries it too).
	MetaRouteName = "route"
)

// AuthRequirement is what a route requires of the caller, taken from the
// jwt_authn configuration: the requirement (providers, combinations) and
// the roles from the route metadata.
type AuthRequirement struct {
	// Name is the requirement_map key, or "rules[i]" for a rule's inline
	// requirement.
	Name        string
	Requirement *jwtv3.JwtRequirement
	// Roles: the identity must hold one of them; empty means any
	// authenticated caller. The data plane checks them (403).
	Roles []string
}

// Authenticator verifies a request's credentials. It returns the verified
// identity, a zero Identity and nil when the requirement allows a missing
// token and none was sent, or an error: an *httpx.Error is written as it
// is (401 gets a WWW-Authenticate challenge), anything else becomes 401.
// It is called concurrently.
type Authenticator interface {
	Authenticate(r *http.Request, req *AuthRequirement) (identity.Identity, error)
}

// AuthenticatorFunc adapts a function to Authenticator.
type AuthenticatorFunc func(r *http.Request, req *AuthRequirement) (identity.Identity, error)

// Authenticate implements Authenticator.
func (f AuthenticatorFunc) Authenticate(r *http.Request, req *AuthRequirement) (identity.Identity, error) {
	return f(r, req)
}

var _ Authenticator = AuthenticatorFunc(nil)

// AuthFactory builds the authenticator for one jwt_authn filter config
// (providers, JWKS sources). It is called on every build; implementations
// should reuse verifiers (and their JWKS caches) for an unchanged config.
type AuthFactory func(cfg *jwtv3.JwtAuthentication) (Authenticator, error)

// authFilter runs the authenticator with the route's requirement and
// forwards the verified identity headers (client-sent ones were stripped
// at the listener).
type authFilter struct {
	next  http.Handler
	auth  Authenticator
	fixed *AuthRequirement // from PerRouteConfig; nil when rules decide
	rules []authRule
	roles []string
}

type authRule struct {
	match   pathMatcher
	headers []headerMatcher
	req     *AuthRequirement
}

func (f *authFilter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req := f.fixed
	if req == nil {
		for i := range f.rules {
			rl := &f.rules[i]
			if !rl.match.matches(r.URL.Path) {
				continue
			}
			ok := true
			for j := range rl.headers {
				if !rl.headers[j].matches(r) {
					ok = false
					break
				}
			}
			if ok {
				req = rl.req
				break
			}
		}
	}
	if req == nil {
		f.next.ServeHTTP(w, r)
		return
	}
	id, err := f.auth.Authenticate(r, req)
	if err != nil {
		var he *httpx.Error
		if !errors.As(err, &he) {
			he = httpx.Unauthenticated("invalid credentials")
		}
		if he.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh"`)
		}
		httpx.WriteError(w, he)
		return
	}
	if id.Subject == "" {
		if len(f.roles) > 0 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh"`)
			httpx.WriteError(w, httpx.Unauthenticated("authentication required"))
			return
		}
		f.next.ServeHTTP(w, r)
		return
	}
	if len(f.roles) > 0 && !id.HasAny(f.roles...) {
		httpx.WriteError(w, httpx.Forbidden("requires role %s", joinRoles(f.roles)))
		return
	}
	identity.SetHeaders(r.Header, id)
	if st := stateOf(w); st != nil {
		st.entry.Subject = id.Subject
		st.id = id
	}
	f.next.ServeHTTP(w, r)
}

func joinRoles(rs []string) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += " or "
		}
		out += r
	}
	return out
}

// faultFilter injects delays and aborts.
type faultFilter struct {
	next               http.Handler
	delay              time.Duration
	delayPct, abortPct uint64 // per million
	abortStatus        int
	rand               func(uint64) uint64
}

func (f *faultFilter) hit(pct uint64) bool {
	return pct >= 1_000_000 || (pct > 0 && f.rand(1_000_000) < pct)
}

func (f *faultFilter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.delay > 0 && f.hit(f.delayPct) {
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			writeUpstreamError(w, r, r.Context().Err())
			return
		}
	}
	if f.abortStatus > 0 && f.hit(f.abortPct) {
		httpx.WriteError(w, &httpx.Error{Status: f.abortStatus, Code: "fault_injected", Message: "fault injected"})
		return
	}
	f.next.ServeHTTP(w, r)
}

// perMillion converts an Envoy FractionalPercent.
func perMillion(fp *typev3.FractionalPercent) (uint64, error) {
	if fp == nil {
		return 0, nil
	}
	n := uint64(fp.GetNumerator())
	switch fp.GetDenominator() {
	case typev3.FractionalPercent_HUNDRED:
		n *= 10_000
	case typev3.FractionalPercent_TEN_THOUSAND:
		n *= 100
	case typev3.FractionalPercent_MILLION:
	default:
		return 0, fmt.Errorf("denominator: unsupported value %v", fp.GetDenominator())
	}
	return min(n, 1_000_000), nil
}

// rbacFilter enforces the roles of an envoy.filters.http.rbac config
// (resource.RolesRBACPerRoute's shape: ALLOW when the jwt_authn payload's
// roles claim holds one of roles) on the identity that the jwt_authn filter
// before it verified: 401 with a challenge without one, 403 without one of
// the roles.
type rbacFilter struct {
	next  http.Handler
	roles []string
}

func (f *rbacFilter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var id identity.Identity
	if st := stateOf(w); st != nil {
		id = st.id
	}
	if id.Subject == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="petmesh"`)
		httpx.WriteError(w, httpx.Unauthenticated("authentication required"))
		return
	}
	if !id.HasAny(f.roles...) {
		httpx.WriteError(w, httpx.Forbidden("requires role %s", joinRoles(f.roles)))
		return
	}
	f.next.ServeHTTP(w, r)
}

// rbacRoles reads the roles of an RBAC filter config: nil when it has no
// rules (Envoy then enforces nothing), the roles of
// resource.RolesRBACPerRoute's shape, an error for any other shape.
func rbacRoles(cfg *rbacv3.RBAC) ([]string, error) {
	if cfg.GetRules() == nil {
		return nil, nil
	}
	roles, err := resource.RolesFromRBACPerRoute(&rbacv3.RBACPerRoute{Rbac: cfg})
	if err != nil {
		return nil, err
	}
	return roles, nil
}
