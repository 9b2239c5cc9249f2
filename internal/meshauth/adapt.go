package meshauth

import (
	"fmt"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	lrlv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	localrl "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Adapt rewrites the few encodings in which the control plane's translator
// (controlplane/translate) and the data plane (internal/dataplane) used to
// express the same thing differently.
//
// No longer needed: the data plane now accepts translator output as is (RBAC
// roles, local_ratelimit descriptors, petmesh metadata) and honours more of
// it than this rewrite keeps (X-RateLimit headers, descriptor limits); pass
// resources to DataPlane.Apply unchanged. Adapt is kept (still correct)
// until its callers have moved off it, then removed. What it does:
//
//   - required roles: the translator emits an `envoy.filters.http.rbac`
//     RBACPerRoute (sourced_metadata on jwt_payload.roles, one principal per
//     role); the data plane reads route metadata `petmesh.roles`. The roles
//     are moved there, and the listener's empty RBAC filter (no rules) is
//     dropped. An RBAC configuration of any other shape is left alone, so
//     the data plane rejects it by name.
//   - local rate limit key: the translator emits one wildcard descriptor
//     (`remote_address` or `subject`) with a matching rate_limits action; the
//     data plane reads `petmesh.ratelimit_key` ("ip" or "subject"). Retry-After
//     and RateLimit headers, which the translator switches on, are always
//     sent by the data plane.
//   - informational metadata: route `petmesh.route` (the route name, which
//     is also Route.name) and cluster `petmesh.service`/`petmesh.version`
//     are dropped. `petmesh.cache_ttl` is kept, so a cluster asking for a
//     cache the data plane does not have is rejected, not half-applied.
//
// Messages that need a change are cloned: the input is never modified.
// Everything else passes through unchanged.
func Adapt(res *dataplane.Resources) (*dataplane.Resources, error) {
	out := &dataplane.Resources{
		Listeners: make(map[string]*listenerv3.Listener, len(res.Listeners)),
		Routes:    make(map[string]*routev3.RouteConfiguration, len(res.Routes)),
		Clusters:  make(map[string]*clusterv3.Cluster, len(res.Clusters)),
		Endpoints: res.Endpoints,
	}
	for n, l := range res.Listeners {
		nl, err := adaptListener(l)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", n, err)
		}
		out.Listeners[n] = nl
	}
	for n, rc := range res.Routes {
		nrc, err := adaptRouteConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("route configuration %q: %w", n, err)
		}
		out.Routes[n] = nrc
	}
	for n, c := range res.Clusters {
		out.Clusters[n] = adaptCluster(c)
	}
	return out, nil
}

func adaptListener(l *listenerv3.Listener) (*listenerv3.Listener, error) {
	var nl *listenerv3.Listener
	for ci, fc := range l.GetFilterChains() {
		for fi, f := range fc.GetFilters() {
			tc := f.GetTypedConfig()
			if tc == nil || !tc.MessageIs(&hcm.HttpConnectionManager{}) {
				continue
			}
			h := &hcm.HttpConnectionManager{}
			if err := tc.UnmarshalTo(h); err != nil {
				return nil, fmt.Errorf("filter_chains[%d].filters[%d]: %w", ci, fi, err)
			}
			keep := h.HttpFilters[:0:0]
			changed := false
			for _, hf := range h.GetHttpFilters() {
				if isEmptyRBAC(hf.GetTypedConfig()) {
					changed = true
					continue
				}
				keep = append(keep, hf)
			}
			if !changed {
				continue
			}
			h.HttpFilters = keep
			a, err := anypb.New(h)
			if err != nil {
				return nil, err
			}
			if nl == nil {
				nl = clone(l)
			}
			nl.FilterChains[ci].Filters[fi].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}
	}
	if nl == nil {
		return l, nil
	}
	return nl, nil
}

// isEmptyRBAC reports whether a is an RBAC filter config without rules: it
// only marks the position of per-route RBAC in the filter chain.
func isEmptyRBAC(a *anypb.Any) bool {
	if a == nil || !a.MessageIs(&rbacfilter.RBAC{}) {
		return false
	}
	var r rbacfilter.RBAC
	if err := a.UnmarshalTo(&r); err != nil {
		return false
	}
	return proto.Size(&r) == 0
}

func adaptRouteConfig(rc *routev3.RouteConfiguration) (*routev3.RouteConfiguration, error) {
	var nrc *routev3.RouteConfiguration
	for vi, vh := range rc.GetVirtualHosts() {
		for ri, rt := range vh.GetRoutes() {
			if !needsAdapt(rt) {
				continue
			}
			if nrc == nil {
				nrc = clone(rc)
			}
			if err := adaptRoute(nrc.VirtualHosts[vi].Routes[ri]); err != nil {
				return nil, fmt.Errorf("virtual_hosts[%d].routes[%d].%w", vi, ri, err)
			}
		}
	}
	if nrc == nil {
		return rc, nil
	}
	return nrc, nil
}

func needsAdapt(rt *routev3.Route) bool {
	if _, ok := rt.GetTypedPerFilterConfig()[resource.FilterRBAC]; ok {
		return true
	}
	if a, ok := rt.GetTypedPerFilterConfig()[resource.FilterLocalRateLimit]; ok && a.MessageIs(&localrl.LocalRateLimit{}) {
		return true
	}
	md := rt.GetMetadata().GetFilterMetadata()[resource.MetadataNamespace]
	return md != nil && md.Fields[resource.RouteMetaName] != nil
}

// adaptRoute edits rt (a clone) in place.
func adaptRoute(rt *routev3.Route) error {
	if md := rt.GetMetadata().GetFilterMetadata()[resource.MetadataNamespace]; md != nil {
		delete(md.Fields, resource.RouteMetaName)
		if len(md.Fields) == 0 {
			delete(rt.Metadata.FilterMetadata, resource.MetadataNamespace)
		}
	}
	if a, ok := rt.TypedPerFilterConfig[resource.FilterRBAC]; ok && a.MessageIs(&rbacfilter.RBACPerRoute{}) {
		var p rbacfilter.RBACPerRoute
		if err := a.UnmarshalTo(&p); err != nil {
			return fmt.Errorf("typed_per_filter_config[%q]: %w", resource.FilterRBAC, err)
		}
		roles, err := resource.RolesFromRBACPerRoute(&p)
		if err != nil {
			return fmt.Errorf("typed_per_filter_config[%q]: %w", resource.FilterRBAC, err)
		}
		if err := setRouteMeta(rt, dataplane.MetaRoles, roles); err != nil {
			return err
		}
		delete(rt.TypedPerFilterConfig, resource.FilterRBAC)
	}
	if a, ok := rt.TypedPerFilterConfig[resource.FilterLocalRateLimit]; ok && a.MessageIs(&localrl.LocalRateLimit{}) {
		var l localrl.LocalRateLimit
		if err := a.UnmarshalTo(&l); err != nil {
			return fmt.Errorf("typed_per_filter_config[%q]: %w", resource.FilterLocalRateLimit, err)
		}
		key, changed, err := adaptRateLimit(&l)
		if err != nil {
			return fmt.Errorf("typed_per_filter_config[%q].%w", resource.FilterLocalRateLimit, err)
		}
		if changed {
			if key != "" {
				if err := setRouteMeta(rt, dataplane.MetaRateLimitKey, key); err != nil {
					return err
				}
			}
			na, err := anypb.New(&l)
			if err != nil {
				return err
			}
			rt.TypedPerFilterConfig[resource.FilterLocalRateLimit] = na
		}
	}
	return nil
}

// adaptRateLimit turns the translator's single wildcard descriptor into a
// rate-limit key. Shapes it does not recognise are left for the data plane
// to reject.
func adaptRateLimit(l *localrl.LocalRateLimit) (key string, changed bool, err error) {
	if len(l.Descriptors) > 0 || len(l.RateLimits) > 0 {
		if len(l.Descriptors) != 1 || len(l.RateLimits) != 1 || len(l.Descriptors[0].GetEntries()) != 1 ||
			len(l.RateLimits[0].GetActions()) != 1 {
			return "", false, nil
		}
		d := l.Descriptors[0]
		e := d.GetEntries()[0]
		if e.GetValue() != "" || (d.GetTokenBucket() != nil && !proto.Equal(d.GetTokenBucket(), l.GetTokenBucket())) {
			return "", false, nil
		}
		act := l.RateLimits[0].GetActions()[0]
		switch {
		case e.GetKey() == "remote_address" && act.GetRemoteAddress() != nil:
			key = "ip"
		case e.GetKey() == "subject" && act.GetRequestHeaders() != nil &&
			strings.EqualFold(act.GetRequestHeaders().GetHeaderName(), identity.HeaderSubject) &&
			act.GetRequestHeaders().GetDescriptorKey() == "subject":
			key = "subject"
		default:
			return "", false, nil
		}
		l.Descriptors = nil
		l.RateLimits = nil
		changed = true
	}
	if v := l.GetAlwaysConsumeDefaultTokenBucket(); v != nil && !v.GetValue() {
		// false with no descriptors left means the same as unset.
		if len(l.Descriptors) == 0 {
			l.AlwaysConsumeDefaultTokenBucket = nil
			changed = true
		}
	}
	if l.EnableXRatelimitHeaders == lrlv3.XRateLimitHeadersRFCVersion_DRAFT_VERSION_03 {
		l.EnableXRatelimitHeaders = lrlv3.XRateLimitHeadersRFCVersion_OFF
		changed = true
	}
	if l.EnableRetryAfterHeader {
		l.EnableRetryAfterHeader = false
		changed = true
	}
	return key, changed, nil
}

func setRouteMeta(rt *routev3.Route, key string, v any) error {
	if sv, ok := v.([]string); ok {
		vals := make([]any, len(sv))
		for i, s := range sv {
			vals[i] = s
		}
		v = vals
	}
	val, err := structpb.NewValue(v)
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	md := rt.GetMetadata()
	if md == nil {
		md = &corev3.Metadata{}
		rt.Metadata = md
	}
	if md.FilterMetadata == nil {
		md.FilterMetadata = map[string]*structpb.Struct{}
	}
	s := md.FilterMetadata[resource.MetadataNamespace]
	if s == nil {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		md.FilterMetadata[resource.MetadataNamespace] = s
	}
	if _, dup := s.Fields[key]; dup {
		return fmt.Errorf("metadata.filter_metadata[%q].%s: set both directly and by the translator's encoding", resource.MetadataNamespace, key)
	}
	s.Fields[key] = val
	return nil
}

func adaptCluster(c *clusterv3.Cluster) *clusterv3.Cluster {
	md := c.GetMetadata().GetFilterMetadata()[resource.MetadataNamespace]
	if md == nil || (md.Fields[resource.ClusterMetaService] == nil && md.Fields[resource.ClusterMetaVersion] == nil) {
		return c
	}
	nc := clone(c)
	s := nc.Metadata.FilterMetadata[resource.MetadataNamespace]
	delete(s.Fields, resource.ClusterMetaService)
	delete(s.Fields, resource.ClusterMetaVersion)
	if len(s.Fields) == 0 {
		delete(nc.Metadata.FilterMetadata, resource.MetadataNamespace)
	}
	if len(nc.Metadata.FilterMetadata) == 0 {
		nc.Metadata = nil
	}
	return nc
}
