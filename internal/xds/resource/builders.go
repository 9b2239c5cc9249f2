package resource

import (
	"errors"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// MetadataNamespace is the filter_metadata key of petmesh extensions on
// routes and clusters (fields Envoy has no place for).
const MetadataNamespace = "petmesh"

// Route metadata keys (under MetadataNamespace).
const (
	// RouteMetaRetryNonIdempotent (bool) lets the data plane retry methods
	// that are not idempotent; without it only GET, HEAD, OPTIONS, PUT,
	// DELETE and TRACE are retried.
	RouteMetaRetryNonIdempotent = "retry_non_idempotent"
	// RouteMetaName (string) is the route table's route name.
	RouteMetaName = "route"
)

// Cluster metadata keys (under MetadataNamespace).
const (
	// ClusterMetaCacheTTL (duration string, e.g. "30s") enables a response
	// cache for GET requests to the cluster.
	ClusterMetaCacheTTL = "cache_ttl"
	// ClusterMetaService and ClusterMetaVersion name the service and version
	// subset a cluster stands for.
	ClusterMetaService = "service"
	ClusterMetaVersion = "version"
)

// MustAny packs m into an Any. It panics only if m cannot be marshalled,
// which for generated Envoy messages is a programming error.
func MustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("resource: pack %T: %v", m, err))
	}
	return a
}

// Duration converts d to a protobuf Duration.
func Duration(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// ADS is the config source that says "over the same ADS stream", v3.
func ADS() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// HCM returns an HttpConnectionManager that fetches route configuration
// routeName over ADS and runs filters in order.
func HCM(statPrefix, routeName string, filters ...*hcm.HttpFilter) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: statPrefix,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    ADS(),
			RouteConfigName: routeName,
		}},
		HttpFilters: filters,
	}
}

// HCMOf unpacks an HttpConnectionManager from a typed config, or returns
// nil when a is not one.
func HCMOf(a *anypb.Any) *hcm.HttpConnectionManager {
	var m hcm.HttpConnectionManager
	if a == nil || a.UnmarshalTo(&m) != nil {
		return nil
	}
	return &m
}

// HTTPFilter wraps a filter config message under name.
func HTTPFilter(name string, cfg proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(cfg)}}
}

// Metadata builds core.Metadata with fields under MetadataNamespace. Values
// must be accepted by structpb.NewValue (string, bool, numbers, lists).
func Metadata(fields map[string]any) *core.Metadata {
	s, err := structpb.NewStruct(fields)
	if err != nil {
		panic(fmt.Sprintf("resource: metadata: %v", err))
	}
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: s}}
}

// MetadataValue returns the petmesh metadata field key, or nil.
func MetadataValue(md *core.Metadata, key string) *structpb.Value {
	return md.GetFilterMetadata()[MetadataNamespace].GetFields()[key]
}

// RolesRBACPerRoute returns the per-route RBAC config that admits a request
// when the verified JWT payload's roles claim holds any of roles:
// one ALLOW policy "roles" whose principals are sourced_metadata matchers on
// jwt_authn's dynamic metadata (payload under JWTPayloadMetadataKey).
// A real Envoy enforces it as is; the Go data plane reads it back with
// RolesFromRBACPerRoute.
func RolesRBACPerRoute(roles []string) *rbacfilter.RBACPerRoute {
	principals := make([]*rbacv3.Principal, 0, len(roles))
	for _, r := range roles {
		principals = append(principals, &rbacv3.Principal{Identifier: &rbacv3.Principal_SourcedMetadata{
			SourcedMetadata: &rbacv3.SourcedMetadata{MetadataSource: rbacv3.MetadataSource_DYNAMIC, MetadataMatcher: &matcher.MetadataMatcher{
				Filter: FilterJWTAuthn,
				Path: []*matcher.MetadataMatcher_PathSegment{
					{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: JWTPayloadMetadataKey}},
					{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: JWTRolesClaim}},
				},
				Value: &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_ListMatch{ListMatch: &matcher.ListMatcher{
					MatchPattern: &matcher.ListMatcher_OneOf{OneOf: &matcher.ValueMatcher{
						MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
							MatchPattern: &matcher.StringMatcher_Exact{Exact: r},
						}},
					}},
				}}},
			}},
		}})
	}
	return &rbacfilter.RBACPerRoute{Rbac: &rbacfilter.RBAC{Rules: &rbacv3.RBAC{
		Action: rbacv3.RBAC_ALLOW,
		Policies: map[string]*rbacv3.Policy{"roles": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
			Principals:  principals,
		}},
	}}}
}

// ErrUnsupportedRBAC is returned (wrapped) by RolesFromRBACPerRoute for an
// RBAC config of any other shape than RolesRBACPerRoute's.
var ErrUnsupportedRBAC = errors.New("unsupported rbac config")

// RolesFromRBACPerRoute is the inverse of RolesRBACPerRoute: the roles of
// which a request needs one. Any other RBAC shape is an error naming the
// field, so the data plane can NACK it precisely.
func RolesFromRBACPerRoute(p *rbacfilter.RBACPerRoute) ([]string, error) {
	rules := p.GetRbac().GetRules()
	if rules == nil {
		return nil, fmt.Errorf("%w: rbac.rules: missing", ErrUnsupportedRBAC)
	}
	if rules.GetAction() != rbacv3.RBAC_ALLOW {
		return nil, fmt.Errorf("%w: rbac.rules.action: only ALLOW", ErrUnsupportedRBAC)
	}
	pol, ok := rules.GetPolicies()["roles"]
	if !ok || len(rules.GetPolicies()) != 1 {
		return nil, fmt.Errorf("%w: rbac.rules.policies: want exactly the policy \"roles\"", ErrUnsupportedRBAC)
	}
	if len(pol.GetPermissions()) != 1 || !pol.GetPermissions()[0].GetAny() {
		return nil, fmt.Errorf("%w: rbac.rules.policies.roles.permissions: want [any: true]", ErrUnsupportedRBAC)
	}
	var roles []string
	for i, pr := range pol.GetPrincipals() {
		sm := pr.GetSourcedMetadata()
		md := sm.GetMetadataMatcher()
		path := md.GetPath()
		role := md.GetValue().GetListMatch().GetOneOf().GetStringMatch().GetExact()
		if md.GetFilter() != FilterJWTAuthn || len(path) != 2 || path[0].GetKey() != JWTPayloadMetadataKey ||
			path[1].GetKey() != JWTRolesClaim || role == "" || md.GetInvert() || sm.GetMetadataSource() != rbacv3.MetadataSource_DYNAMIC {
			return nil, fmt.Errorf("%w: rbac.rules.policies.roles.principals[%d]: want a jwt_authn %s.%s list match", ErrUnsupportedRBAC, i, JWTPayloadMetadataKey, JWTRolesClaim)
		}
		roles = append(roles, role)
	}
	if len(roles) == 0 {
		return nil, fmt.Errorf("%w: rbac.rules.policies.roles.principals: empty", ErrUnsupportedRBAC)
	}
	return roles, nil
}
