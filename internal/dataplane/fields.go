package dataplane

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// allowed lists, per message type, the fields the data plane honours. Any
// other field that is set makes the resource rejected (NACKed) with an
// error naming the field's path. Messages under google.protobuf.* are
// leaves (durations, wrappers, Struct). A message listed with a nil set is
// a leaf handed whole to someone else (the JWT authenticator validates
// providers and requirements itself). README.md renders this table.
var allowed = map[protoreflect.FullName]map[string]bool{
	// Listener and HttpConnectionManager.
	"envoy.config.listener.v3.Listener":    set("name", "address", "filter_chains", "stat_prefix"),
	"envoy.config.core.v3.Address":         set("socket_address"),
	"envoy.config.core.v3.SocketAddress":   set("address", "port_value", "protocol"),
	"envoy.config.listener.v3.FilterChain": set("name", "filters"),
	"envoy.config.listener.v3.Filter":      set("name", "typed_config"),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": set(
		"stat_prefix", "codec_type", "rds", "route_config", "http_filters", "generate_request_id",
		"use_remote_address", "xff_num_trusted_hops"),
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":        set("route_config_name", "config_source"),
	"envoy.config.core.v3.ConfigSource":                                      set("ads", "resource_api_version"),
	"envoy.config.core.v3.AggregatedConfigSource":                            set(),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": set("name", "typed_config"),

	// HTTP filters.
	"envoy.extensions.filters.http.router.v3.Router":         set(),
	"envoy.extensions.filters.http.buffer.v3.Buffer":         set("max_request_bytes"),
	"envoy.extensions.filters.http.buffer.v3.BufferPerRoute": set("disabled", "buffer"),
	"envoy.extensions.filters.http.fault.v3.HTTPFault":       set("delay", "abort"),
	"envoy.extensions.filters.common.fault.v3.FaultDelay":    set("fixed_delay", "percentage"),
	"envoy.extensions.filters.http.fault.v3.FaultAbort":      set("http_status", "percentage"),
	"envoy.type.v3.FractionalPercent":                        set("numerator", "denominator"),
	"envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": set("stat_prefix", "token_bucket", "filter_enabled", "filter_enforced",
		"descriptors", "rate_limits", "always_consume_default_token_bucket", "enable_x_ratelimit_headers", "enable_retry_after_header",
		"max_dynamic_descriptors"),
	"envoy.type.v3.TokenBucket":                                      set("max_tokens", "tokens_per_fill", "fill_interval"),
	"envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor":  set("entries", "token_bucket"),
	"envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry": set("key", "value"),
	"envoy.config.route.v3.RateLimit":                                set("actions"),
	"envoy.config.route.v3.RateLimit.Action":                         set("remote_address", "request_headers", "generic_key"),
	"envoy.config.route.v3.RateLimit.Action.RemoteAddress":           set(),
	"envoy.config.route.v3.RateLimit.Action.RequestHeaders":          set("header_name", "descriptor_key", "skip_if_absent"),
	"envoy.config.route.v3.RateLimit.Action.GenericKey":              set("descriptor_value", "descriptor_key"),
	"envoy.extensions.filters.http.rbac.v3.RBAC":                     set("rules"),
	"envoy.extensions.filters.http.rbac.v3.RBACPerRoute":             set("rbac"),
	"envoy.config.rbac.v3.RBAC":                                      set("action", "policies"),
	"envoy.config.rbac.v3.Policy":                                    set("permissions", "principals"),
	"envoy.config.rbac.v3.Permission":                                set("any"),
	"envoy.config.rbac.v3.Principal":                                 set("sourced_metadata"),
	"envoy.config.rbac.v3.SourcedMetadata":                           set("metadata_matcher", "metadata_source"),
	"envoy.type.matcher.v3.MetadataMatcher":                          set("filter", "path", "value", "invert"),
	"envoy.type.matcher.v3.MetadataMatcher.PathSegment":              set("key"),
	"envoy.type.matcher.v3.ValueMatcher":                             set("list_match", "string_match"),
	"envoy.type.matcher.v3.ListMatcher":                              set("one_of"),
	"envoy.config.core.v3.RuntimeFractionalPercent":                  set("default_value", "runtime_key"),
	"envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication":   set("providers", "rules", "requirement_map"),
	"envoy.extensions.filters.http.jwt_authn.v3.RequirementRule":     set("match", "requires", "requirement_name"),
	"envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig":      set("requirement_name", "disabled"),
	"envoy.extensions.filters.http.jwt_authn.v3.JwtProvider":         nil,
	"envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement":      nil,

	// RouteConfiguration.
	"envoy.config.route.v3.RouteConfiguration":            set("name", "virtual_hosts", "validate_clusters"),
	"envoy.config.route.v3.VirtualHost":                   set("name", "domains", "routes", "typed_per_filter_config", "retry_policy"),
	"envoy.config.route.v3.Route":                         set("name", "match", "route", "direct_response", "typed_per_filter_config", "metadata"),
	"envoy.config.route.v3.RouteMatch":                    set("prefix", "path", "safe_regex", "headers", "case_sensitive"),
	"envoy.type.matcher.v3.RegexMatcher":                  set("regex", "google_re2"),
	"envoy.type.matcher.v3.RegexMatcher.GoogleRE2":        set(),
	"envoy.config.route.v3.HeaderMatcher":                 set("name", "present_match", "string_match", "invert_match"),
	"envoy.type.matcher.v3.StringMatcher":                 set("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"),
	"envoy.config.route.v3.RouteAction":                   set("cluster", "weighted_clusters", "timeout", "retry_policy", "prefix_rewrite", "host_rewrite_literal"),
	"envoy.config.route.v3.WeightedCluster":               set("clusters"),
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": set("name", "weight"),
	"envoy.config.route.v3.RetryPolicy": set("retry_on", "num_retries", "per_try_timeout", "retry_back_off", "retriable_status_codes",
		"retry_host_predicate", "host_selection_retry_max_attempts"),
	"envoy.config.route.v3.RetryPolicy.RetryHostPredicate":                 set("name", "typed_config"),
	"envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": set(),
	"envoy.config.route.v3.RetryPolicy.RetryBackOff":                       set("base_interval", "max_interval"),
	"envoy.config.route.v3.DirectResponseAction":                           set("status", "body"),
	"envoy.config.core.v3.DataSource":                                      set("inline_string", "inline_bytes"),
	"envoy.config.core.v3.Metadata":                                        set("filter_metadata"),

	// Cluster.
	"envoy.config.cluster.v3.Cluster": set("name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"load_assignment", "health_checks", "circuit_breakers", "outlier_detection", "typed_extension_protocol_options", "metadata", "common_lb_config"),
	"envoy.config.cluster.v3.Cluster.CommonLbConfig":                            set("healthy_panic_threshold"),
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig":                          set("eds_config", "service_name"),
	"envoy.config.cluster.v3.CircuitBreakers":                                   set("thresholds"),
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds":                        set("priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget"),
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds.RetryBudget":            set("budget_percent", "min_retry_concurrency"),
	"envoy.type.v3.Percent":                                                     set("value"),
	"envoy.config.cluster.v3.OutlierDetection":                                  set("consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent", "enforcing_consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", "max_ejection_time"),
	"envoy.config.core.v3.HealthCheck":                                          set("timeout", "interval", "unhealthy_threshold", "healthy_threshold", "http_health_check"),
	"envoy.config.core.v3.HealthCheck.HttpHealthCheck":                          set("path", "host", "expected_statuses"),
	"envoy.type.v3.Int64Range":                                                  set("start", "end"),
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":                    set("explicit_http_config"),
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": set("http_protocol_options", "http2_protocol_options"),
	"envoy.config.core.v3.Http1ProtocolOptions":                                 set(),
	"envoy.config.core.v3.Http2ProtocolOptions":                                 set(),

	// ClusterLoadAssignment.
	"envoy.config.endpoint.v3.ClusterLoadAssignment": set("cluster_name", "endpoints"),
	"envoy.config.endpoint.v3.LocalityLbEndpoints":   set("locality", "lb_endpoints", "load_balancing_weight", "priority"),
	"envoy.config.core.v3.Locality":                  set("region", "zone", "sub_zone"),
	"envoy.config.endpoint.v3.LbEndpoint":            set("endpoint", "health_status", "metadata", "load_balancing_weight"),
	"envoy.config.endpoint.v3.Endpoint":              set("address", "hostname"),
}

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// UnsupportedFieldError names a set field that the data plane does not
// honour.
type UnsupportedFieldError struct {
	Path string // e.g. virtual_hosts[0].routes[2].request_mirror_policies
}

func (e *UnsupportedFieldError) Error() string {
	return e.Path + ": unsupported field"
}

// checkFields walks every set field of m and returns an
// *UnsupportedFieldError for the first one not in the allow-list. Any
// (typed_config) fields are not entered: the builder unpacks them and
// checks the inner message with its own path.
func checkFields(m protoreflect.Message, path string) error {
	if m == nil || !m.IsValid() {
		return nil
	}
	name := m.Descriptor().FullName()
	if strings.HasPrefix(string(name), "google.protobuf.") {
		return nil
	}
	allow, known := allowed[name]
	if !known {
		return &UnsupportedFieldError{Path: orType(path, name)}
	}
	if allow == nil {
		return nil // a leaf owned by someone else
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := join(path, string(fd.Name()))
		if !allow[string(fd.Name())] {
			err = &UnsupportedFieldError{Path: p}
			return false
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = checkFields(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = checkFields(mv.Message(), fmt.Sprintf("%s[%q]", p, k.String()))
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = checkFields(v.Message(), p)
		}
		return err == nil
	})
	return err
}

func orType(path string, name protoreflect.FullName) string {
	if path == "" {
		return string(name)
	}
	return path + " (" + string(name) + ")"
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
