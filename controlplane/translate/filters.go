package translate

import (
	"fmt"
	"math"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	commonfault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// jwtFilter is the jwt_authn filter: every provider, and the two named
// requirements routes pick with per-route config (resource.JWTRequired,
// resource.JWTOptional).
func (in *input) jwtFilter() (*hcm.HttpFilter, error) {
	if len(in.opts.JWTProviders) == 0 {
		return nil, ErrNoJWTProvider
	}
	cfg := &jwtv3.JwtAuthentication{
		Providers:      map[string]*jwtv3.JwtProvider{},
		RequirementMap: map[string]*jwtv3.JwtRequirement{},
	}
	var anyOf []*jwtv3.JwtRequirement
	for _, p := range in.opts.JWTProviders {
		if p.Name == "" || p.Issuer == "" {
			return nil, fmt.Errorf("jwt provider %q: name and issuer are required", p.Name)
		}
		jp := &jwtv3.JwtProvider{
			Issuer:            p.Issuer,
			Audiences:         p.Audiences,
			Forward:           true,
			PayloadInMetadata: resource.JWTPayloadMetadataKey,
			ClaimToHeaders: []*jwtv3.JwtClaimToHeader{
				{HeaderName: resource.HeaderSubject, ClaimName: "sub"},
				{HeaderName: resource.HeaderRoles, ClaimName: resource.JWTRolesClaim},
			},
			ClockSkewSeconds: 30,
		}
		for _, q := range p.FromParams {
			if !resource.ValidQueryParam(q) {
				return nil, fmt.Errorf("jwt provider %q: from params: %q: want a query parameter name of letters, digits, '_', '.' and '-' (at most 64)", p.Name, q)
			}
		}
		if len(p.FromParams) > 0 {
			jp.FromParams = append([]string(nil), p.FromParams...)
		}
		switch {
		case p.LocalJWKS != "":
			jp.JwksSourceSpecifier = &jwtv3.JwtProvider_LocalJwks{LocalJwks: &core.DataSource{
				Specifier: &core.DataSource_InlineString{InlineString: p.LocalJWKS},
			}}
		case p.JWKSURI != "":
			cache := p.CacheDuration
			if cache == 0 {
				cache = DefaultJWKSCache
			}
			jp.JwksSourceSpecifier = &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{
				HttpUri: &core.HttpUri{
					Uri:              p.JWKSURI,
					HttpUpstreamType: &core.HttpUri_Cluster{Cluster: resource.JWKSCluster(p.Name)},
					Timeout:          resource.Duration(5 * time.Second),
				},
				CacheDuration: resource.Duration(cache),
				AsyncFetch:    &jwtv3.JwksAsyncFetch{},
			}}
		default:
			return nil, fmt.Errorf("jwt provider %q: jwks uri or local jwks is required", p.Name)
		}
		cfg.Providers[p.Name] = jp
		anyOf = append(anyOf, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: p.Name}})
	}
	if len(anyOf) == 1 {
		cfg.RequirementMap[resource.JWTRequired] = anyOf[0]
	} else {
		cfg.RequirementMap[resource.JWTRequired] = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
			RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: anyOf},
		}}
	}
	optional := append(append([]*jwtv3.JwtRequirement{}, anyOf...),
		&jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	cfg.RequirementMap[resource.JWTOptional] = &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
		RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: optional},
	}}
	return resource.HTTPFilter(resource.FilterJWTAuthn, cfg), nil
}

// bufferFilter is the buffer filter with the default body limit; routes
// set their own with BufferPerRoute (bufferPerRoute).
func bufferFilter() *hcm.HttpFilter {
	return resource.HTTPFilter(resource.FilterBuffer, &bufferv3.Buffer{MaxRequestBytes: u32(DefaultMaxBodyBytes)})
}

func routerFilter() *hcm.HttpFilter {
	return resource.HTTPFilter(resource.FilterRouter, &routerv3.Router{})
}

// faultFilter carries f as the filter-level fault (nil: none, routes may
// override with per-route config).
func faultFilter(f *routes.Fault) *hcm.HttpFilter {
	return resource.HTTPFilter(resource.FilterFault, httpFault(f))
}

func httpFault(f *routes.Fault) *faultv3.HTTPFault {
	h := &faultv3.HTTPFault{}
	if f == nil {
		return h
	}
	if a := f.Abort; a != nil {
		h.Abort = &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.Status)},
			Percentage: fraction(a.Percent),
		}
	}
	if d := f.Delay; d != nil {
		h.Delay = &commonfault.FaultDelay{
			FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: resource.Duration(d.Duration.Std())},
			Percentage:         fraction(d.Percent),
		}
	}
	return h
}

// fraction renders a percent (0-100, fractional) per million.
func fraction(percent float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{
		Numerator:   uint32(math.Round(percent * 10000)),
		Denominator: typev3.FractionalPercent_MILLION,
	}
}

// rbacFilter is the RBAC filter with no rules of its own: roles are
// enforced by per-route config (resource.RolesRBACPerRoute).
func rbacFilter() *hcm.HttpFilter {
	return resource.HTTPFilter(resource.FilterRBAC, &rbacfilter.RBAC{})
}

// rateLimitFilter is the local rate limit filter, enabled per route only.
func rateLimitFilter(statPrefix string) *hcm.HttpFilter {
	return resource.HTTPFilter(resource.FilterLocalRateLimit, &lrlv3.LocalRateLimit{StatPrefix: statPrefix})
}

// RateLimitMaxKeys is the number of per-key token buckets a route's rate
// limit keeps (local_ratelimit max_dynamic_descriptors). Envoy's default,
// 20, would evict the bucket of a busy client as soon as 20 others are
// active, so the limit would not hold at an edge.
const RateLimitMaxKeys = 10000

// routeRateLimit is a route's local rate limit: one token bucket per
// client IP (remote_address descriptor) or per verified subject (the
// x-petmesh-subject header jwt_authn sets), wildcard descriptor values
// giving each key its own bucket.
func routeRateLimit(name string, rl *routes.RateLimit) *lrlv3.LocalRateLimit {
	burst := rl.Burst
	if burst == 0 {
		burst = rl.RPS
	}
	bucket := &typev3.TokenBucket{
		MaxTokens:     uint32(burst),
		TokensPerFill: u32(rl.RPS),
		FillInterval:  resource.Duration(time.Second),
	}
	key := "remote_address"
	action := &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RemoteAddress_{
		RemoteAddress: &routev3.RateLimit_Action_RemoteAddress{},
	}}
	if rl.Key == "subject" {
		key = "subject"
		action = &routev3.RateLimit_Action{ActionSpecifier: &routev3.RateLimit_Action_RequestHeaders_{
			RequestHeaders: &routev3.RateLimit_Action_RequestHeaders{HeaderName: resource.HeaderSubject, DescriptorKey: key},
		}}
	}
	full := &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: 100, Denominator: typev3.FractionalPercent_HUNDRED}}
	return &lrlv3.LocalRateLimit{
		StatPrefix:     "route_" + name,
		TokenBucket:    bucket,
		FilterEnabled:  full,
		FilterEnforced: full,
		Descriptors: []*ratelimitv3.LocalRateLimitDescriptor{{
			Entries:     []*ratelimitv3.RateLimitDescriptor_Entry{{Key: key}},
			TokenBucket: bucket,
		}},
		RateLimits:                      []*routev3.RateLimit{{Actions: []*routev3.RateLimit_Action{action}}},
		AlwaysConsumeDefaultTokenBucket: wrapperspb.Bool(false),
		MaxDynamicDescriptors:           u32(RateLimitMaxKeys),
		EnableXRatelimitHeaders:         ratelimitv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03,
		EnableRetryAfterHeader:          true,
	}
}

// jwtPerRoute selects the named requirement for a route.
func jwtPerRoute(public bool) *anypb.Any {
	name := resource.JWTRequired
	if public {
		name = resource.JWTOptional
	}
	return resource.MustAny(&jwtv3.PerRouteConfig{RequirementSpecifier: &jwtv3.PerRouteConfig_RequirementName{RequirementName: name}})
}
