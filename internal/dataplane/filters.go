package dataplane

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/vulcand/oxy/v2/ratelimit"
	"github.com/vulcand/oxy/v2/utils"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
)

// Typed filter config type URLs.
const (
	typeRouter    = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeFault     = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	typeRateLimit = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
	typeJwt       = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
	typeJwtRoute  = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
	typeHCM       = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
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

// newRateLimit builds a per-key token bucket limiter (oxy's TokenLimiter,
// whose bucket map is bounded and expires idle keys) that answers 429 with
// Retry-After and RateLimit-* headers.
func newRateLimit(next http.Handler, key string, trustedHops int, maxTokens, perFill uint32, fill time.Duration, enforce bool, onLimit func()) (http.Handler, error) {
	rates := ratelimit.NewRateSet()
	if err := rates.Add(fill, int64(perFill), int64(maxTokens)); err != nil {
		return nil, fmt.Errorf("token_bucket: %w", err)
	}
	extract := utils.ExtractorFunc(func(r *http.Request) (string, int64, error) {
		if key == "subject" {
			if s := r.Header.Get(identity.HeaderSubject); s != "" {
				return "s:" + s, 1, nil
			}
		}
		return "ip:" + clientIP(r, trustedHops), 1, nil
	})
	limit := strconv.FormatUint(uint64(maxTokens), 10)
	policy := fmt.Sprintf("%d;w=%d", maxTokens, int(math.Ceil(fill.Seconds()*float64(maxTokens)/float64(perFill))))
	errHandler := utils.ErrorHandlerFunc(func(w http.ResponseWriter, r *http.Request, err error) {
		var mre *ratelimit.MaxRateError
		if !errors.As(err, &mre) {
			httpx.WriteError(w, httpx.Unavailable("rate limiter: %v", err))
			return
		}
		onLimit()
		if !enforce {
			next.ServeHTTP(w, r)
			return
		}
		secs := strconv.Itoa(max(1, int(math.Ceil(mre.Delay.Seconds()))))
		h := w.Header()
		h.Set("Retry-After", secs)
		h.Set("RateLimit-Limit", limit)
		h.Set("RateLimit-Remaining", "0")
		h.Set("RateLimit-Reset", secs)
		h.Set("RateLimit-Policy", policy)
		httpx.WriteError(w, &httpx.Error{Status: http.StatusTooManyRequests, Code: httpx.CodeRateLimited, Message: "rate limit exceeded; retry in " + secs + "s"})
	})
	return ratelimit.New(next, extract, rates, ratelimit.ErrorHandler(errHandler))
}
