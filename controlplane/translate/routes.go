package translate

import (
	"regexp"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// match translates a route table match.
func match(m routes.Match) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{}
	switch {
	case m.Path != "":
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	case m.Regex != "":
		rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: m.Regex}}
	default:
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.Prefix}
	}
	if len(m.Methods) == 1 {
		rm.Headers = append(rm.Headers, stringHeader(":method", &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_Exact{Exact: strings.ToUpper(m.Methods[0])},
		}))
	} else if len(m.Methods) > 1 {
		up := make([]string, len(m.Methods))
		for i, meth := range m.Methods {
			up[i] = regexp.QuoteMeta(strings.ToUpper(meth))
		}
		rm.Headers = append(rm.Headers, stringHeader(":method", &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "^(" + strings.Join(up, "|") + ")$"}},
		}))
	}
	for _, h := range m.Headers {
		name := strings.ToLower(h.Name)
		switch {
		case h.Present != nil:
			rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: name,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: *h.Present}})
		case h.Exact != "":
			rm.Headers = append(rm.Headers, stringHeader(name, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: h.Exact}}))
		case h.Prefix != "":
			rm.Headers = append(rm.Headers, stringHeader(name, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: h.Prefix}}))
		case h.Regex != "":
			rm.Headers = append(rm.Headers, stringHeader(name, &matcher.StringMatcher{
				MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: h.Regex}},
			}))
		}
	}
	return rm
}

func stringHeader(name string, m *matcher.StringMatcher) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}
}

// targetCluster names the cluster of a target.
func targetCluster(t routes.Target) string {
	if t.Service == routes.EdgeService {
		return resource.ClusterEdgeLocal
	}
	return resource.Cluster(t.Service, t.Subset)
}

// forward is a route action to r's targets with its timeout, retries and
// rewrites; clusters collects the service clusters referenced.
func (in *input) forward(r *routes.Route, clusters clusterSet) *routev3.RouteAction {
	a := &routev3.RouteAction{}
	var weighted []*routev3.WeightedCluster_ClusterWeight
	for _, t := range r.Targets {
		if t.Service != routes.EdgeService {
			clusters.add(t.Service, t.Subset)
		}
		if len(r.Targets) > 1 && t.Weight > 0 {
			weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{Name: targetCluster(t), Weight: u32(t.Weight)})
		}
	}
	if len(r.Targets) == 1 {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: targetCluster(r.Targets[0])}
	} else {
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: weighted}}
	}
	a.Timeout = resource.Duration(durOr(r.Timeout, DefaultRouteTimeout))
	if rt := r.Retries; rt != nil {
		a.RetryPolicy = in.retryPolicy(rt)
	}
	if r.PrefixRewrite != "" {
		a.PrefixRewrite = r.PrefixRewrite
	}
	if r.HostRewrite != "" {
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: r.HostRewrite}
	}
	return a
}

func (in *input) retryPolicy(rt *routes.Retries) *routev3.RetryPolicy {
	on := rt.RetryOn
	if len(on) == 0 {
		on = DefaultRetryOn
	}
	p := &routev3.RetryPolicy{
		RetryOn:    strings.Join(on, ","),
		NumRetries: u32(intOr(rt.Attempts, DefaultRetryAttempts)),
	}
	if rt.PerTryTimeout != nil {
		p.PerTryTimeout = resource.Duration(rt.PerTryTimeout.Std())
	}
	base := DefaultBackoffBase
	if rt.Backoff != nil && rt.Backoff.Base != nil {
		base = rt.Backoff.Base.Std()
	}
	p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: resource.Duration(base)}
	if rt.Backoff != nil && rt.Backoff.Max != nil {
		p.RetryBackOff.MaxInterval = resource.Duration(rt.Backoff.Max.Std())
	}
	for _, c := range rt.RetriableStatusCodes {
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
	}
	in.avoidPreviousHosts(p)
	return p
}

// avoidPreviousHosts makes a retry pick another host than the ones that
// already failed (Envoy's previous_hosts predicate), trying up to
// HostSelectionRetryMaxAttempts picks: without it a retry can land on the
// host that just failed (with round robin over two hosts, often does).
// Not with Options.OmitResilienceFields.
func (in *input) avoidPreviousHosts(p *routev3.RetryPolicy) {
	if in.opts.OmitResilienceFields {
		return
	}
	p.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{
		Name:       resource.RetryHostPreviousHosts,
		ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: resource.MustAny(&previoushostsv3.PreviousHostsPredicate{})},
	}}
	p.HostSelectionRetryMaxAttempts = HostSelectionRetryMaxAttempts
}

// bufferPerRoute is r's request body limit: BufferPerRoute with
// max_body_bytes (DefaultMaxBodyBytes when absent), or disabled (no
// limit) for max_body_bytes 0.
func bufferPerRoute(r *routes.Route) *bufferv3.BufferPerRoute {
	if r.MaxBodyBytes != nil && *r.MaxBodyBytes == 0 {
		return &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Disabled{Disabled: true}}
	}
	n := DefaultMaxBodyBytes
	if r.MaxBodyBytes != nil {
		n = *r.MaxBodyBytes
	}
	return &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Buffer{Buffer: &bufferv3.Buffer{MaxRequestBytes: u32(n)}}}
}

// routeMetadata records the route name and the non-idempotent retry
// opt-in.
func routeMetadata(r *routes.Route) *core.Metadata {
	md := map[string]any{resource.RouteMetaName: r.Name}
	if r.Retries != nil && r.Retries.IdempotentOnly != nil && !*r.Retries.IdempotentOnly {
		md[resource.RouteMetaRetryNonIdempotent] = true
	}
	return resource.Metadata(md)
}

// edgeRoute is a route of the edge's route configuration: the action plus
// per-route jwt_authn requirement, RBAC roles, rate limit, fault and
// body limit (unless Options.OmitResilienceFields).
func (in *input) edgeRoute(r *routes.Route, clusters clusterSet) *routev3.Route {
	er := &routev3.Route{Name: r.Name, Match: match(r.Match), Metadata: routeMetadata(r)}
	if d := r.DirectResponse; d != nil {
		dr := &routev3.DirectResponseAction{Status: uint32(d.Status)}
		if d.Body != "" {
			dr.Body = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: d.Body}}
		}
		er.Action = &routev3.Route_DirectResponse{DirectResponse: dr}
	} else {
		er.Action = &routev3.Route_Route{Route: in.forward(r, clusters)}
	}
	public := r.Auth != nil && r.Auth.Public
	pf := map[string]*anypb.Any{resource.FilterJWTAuthn: jwtPerRoute(public)}
	if r.Auth != nil && len(r.Auth.Roles) > 0 {
		pf[resource.FilterRBAC] = resource.MustAny(resource.RolesRBACPerRoute(r.Auth.Roles))
	}
	if r.RateLimit != nil {
		pf[resource.FilterLocalRateLimit] = resource.MustAny(routeRateLimit(r.Name, r.RateLimit))
	}
	if r.Fault != nil {
		pf[resource.FilterFault] = resource.MustAny(httpFault(r.Fault))
	}
	if !in.opts.OmitResilienceFields {
		pf[resource.FilterBuffer] = resource.MustAny(bufferPerRoute(r))
	}
	er.TypedPerFilterConfig = pf
	return er
}

// servesOnly reports whether every target of r is service svc (any
// subset): such routes are mirrored on svc's sidecars.
func servesOnly(r *routes.Route, svc string) bool {
	if len(r.Targets) == 0 {
		return false
	}
	for _, t := range r.Targets {
		if t.Service != svc {
			return false
		}
	}
	return true
}
