// Package resource is petmesh's one xDS resource model: the names of every
// listener, route configuration and cluster the control plane emits, the node
// id and node metadata conventions, the type URLs, and small builders and
// parsers for the few petmesh-specific encodings (required roles, route and
// cluster metadata). The control plane's translator produces resources with
// these names and the data plane (edge, sidecars) looks them up by the same
// names, so a name is defined here once and nowhere else.
//
// Everything here is pure and safe for concurrent use.
package resource

import (
	"errors"
	"fmt"
	"strings"

	rsrc "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Type URLs of the resources petmesh emits (re-exported from go-control-plane
// so callers need one import).
const (
	ListenerType = rsrc.ListenerType
	RouteType    = rsrc.RouteType
	ClusterType  = rsrc.ClusterType
	EndpointType = rsrc.EndpointType
)

// Listener names.
const (
	// ListenerEdge is the edge's public HTTP listener.
	ListenerEdge = "edge-http"
	// ListenerInbound is a sidecar's listener in front of its local app.
	ListenerInbound = "inbound"
	// ListenerOutbound is a sidecar's loopback egress listener through which
	// the app calls other services by name (Host header, see RouteOutbound).
	ListenerOutbound = "outbound"
)

// Route configuration names (RDS). They equal the listener names: the
// types differ, so the names do not collide.
const (
	RouteEdge     = "edge-http"
	RouteInbound  = "inbound"
	RouteOutbound = "outbound"
)

// Cluster names that are not service clusters.
const (
	// ClusterLocalApp is a sidecar's STATIC cluster pointing at its app on
	// 127.0.0.1:<app port>. Its circuit breaker max_requests is the bulkhead.
	ClusterLocalApp = "local_app"
	// ClusterEdgeLocal is the STATIC cluster of routes served by the edge
	// itself (token endpoint, JWKS). The Go edge recognises the name and
	// serves these routes in-process; its endpoint is only meaningful to a
	// real Envoy.
	ClusterEdgeLocal = "edge_local"
	// EdgeService is the reserved target service name in the route table
	// meaning "served by the edge itself"; it translates to ClusterEdgeLocal.
	EdgeService = "edge"
)

// Well-known Envoy filter names used in petmesh listeners, in chain order.
const (
	FilterHTTPConnectionManager = "envoy.filters.network.http_connection_manager"
	FilterJWTAuthn              = "envoy.filters.http.jwt_authn"
	FilterRBAC                  = "envoy.filters.http.rbac"
	FilterLocalRateLimit        = "envoy.filters.http.local_ratelimit"
	FilterFault                 = "envoy.filters.http.fault"
	// FilterBuffer is Envoy's buffer filter; petmesh uses only its body
	// limit (413 above max_request_bytes), per listener and per route.
	FilterBuffer = "envoy.filters.http.buffer"
	FilterRouter = "envoy.filters.http.router"
)

// RetryHostPreviousHosts is Envoy's retry host predicate that rejects the
// hosts a request already tried.
const RetryHostPreviousHosts = "envoy.retry_host_predicates.previous_hosts"

// JWT conventions shared by the translator and the data plane.
const (
	// JWTRequired is the jwt_authn requirement_map entry that requires a
	// valid token from any configured provider.
	JWTRequired = "petmesh-required"
	// JWTOptional verifies a token when one is present and lets requests
	// without a token through (public routes).
	JWTOptional = "petmesh-optional"
	// JWTPayloadMetadataKey is jwt_authn's payload_in_metadata: the verified
	// payload is stored under this key in the filter's dynamic metadata,
	// where the RBAC role policy (see RolesRBACPerRoute) looks for it.
	JWTPayloadMetadataKey = "jwt_payload"
	// JWTRolesClaim is the claim holding the subject's roles (a list).
	JWTRolesClaim = "roles"
	// HeaderSubject and HeaderRoles carry verified claims upstream
	// (jwt_authn claim_to_headers).
	HeaderSubject = "x-petmesh-subject"
	HeaderRoles   = "x-petmesh-roles"
)

// SubsetSep separates a service from a version tag in subset cluster names
// and the parts of node ids. Service names and version tags never contain it.
const SubsetSep = "~"

// Cluster returns the cluster (and EDS) name of a service, or of one version
// subset of it when version is not empty: "pets", "pets~v2".
func Cluster(service, version string) string {
	if version == "" {
		return service
	}
	return service + SubsetSep + version
}

// ParseCluster splits a service cluster name into service and version tag
// (empty for the whole service).
func ParseCluster(name string) (service, version string) {
	service, version, _ = strings.Cut(name, SubsetSep)
	return service, version
}

// JWKSCluster names the cluster through which a remote JWKS is fetched.
func JWKSCluster(provider string) string { return "jwks_" + provider }

// ProxylessListener is the API listener a proxyless gRPC client asks for
// when it dials "xds:///<service>".
func ProxylessListener(service string) string { return service }

// ProxylessRoute is the route configuration of a proxyless API listener.
func ProxylessRoute(service string) string { return "proxyless" + SubsetSep + service }

// Kind is the kind of a node, from its id.
type Kind string

// Node kinds.
const (
	KindEdge    Kind = "edge"
	KindSidecar Kind = "sidecar"
	// KindGRPC is a proxyless gRPC client: "grpc~<service>~<instance>".
	KindGRPC Kind = "grpc"
)

// NodeID is a parsed node id.
type NodeID struct {
	Kind     Kind
	Service  string // empty for the edge
	Instance string
}

// String renders the id: "edge~<instance>", "sidecar~<service>~<instance>",
// "grpc~<service>~<instance>".
func (n NodeID) String() string {
	if n.Kind == KindEdge {
		return EdgeNodeID(n.Instance)
	}
	return string(n.Kind) + SubsetSep + n.Service + SubsetSep + n.Instance
}

// EdgeNodeID returns the node id of an edge instance.
func EdgeNodeID(instance string) string { return string(KindEdge) + SubsetSep + instance }

// SidecarNodeID returns the node id of a service instance's sidecar.
func SidecarNodeID(service, instance string) string {
	return string(KindSidecar) + SubsetSep + service + SubsetSep + instance
}

// GRPCNodeID returns the node id of a proxyless gRPC client.
func GRPCNodeID(service, instance string) string {
	return string(KindGRPC) + SubsetSep + service + SubsetSep + instance
}

// ErrBadNodeID is returned (wrapped) by ParseNodeID.
var ErrBadNodeID = errors.New("bad node id")

// ParseNodeID parses a node id produced by EdgeNodeID, SidecarNodeID or
// GRPCNodeID.
func ParseNodeID(id string) (NodeID, error) {
	parts := strings.Split(id, SubsetSep)
	for _, p := range parts {
		if p == "" {
			return NodeID{}, fmt.Errorf("%w %q: empty part", ErrBadNodeID, id)
		}
	}
	switch Kind(parts[0]) {
	case KindEdge:
		if len(parts) != 2 {
			return NodeID{}, fmt.Errorf("%w %q: want edge~<instance>", ErrBadNodeID, id)
		}
		return NodeID{Kind: KindEdge, Instance: parts[1]}, nil
	case KindSidecar, KindGRPC:
		if len(parts) != 3 {
			return NodeID{}, fmt.Errorf("%w %q: want %s~<service>~<instance>", ErrBadNodeID, id, parts[0])
		}
		return NodeID{Kind: Kind(parts[0]), Service: parts[1], Instance: parts[2]}, nil
	}
	return NodeID{}, fmt.Errorf("%w %q: kind must be edge, sidecar or grpc", ErrBadNodeID, id)
}

// ValidQueryParam reports whether q can name the query parameter a JWT
// provider takes a token from (jwt_authn from_params): 1 to 64 bytes of
// [A-Za-z0-9_.-]. The control plane's -jwt-query-param, the translator and
// the proxies' validation share it.
func ValidQueryParam(q string) bool {
	if q == "" || len(q) > 64 {
		return false
	}
	for i := 0; i < len(q); i++ {
		c := q[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}
