// Package translate turns a route table and the registry's instances into
// the Envoy v3 resources of one node (edge, sidecar or proxyless gRPC
// client). It is pure: no I/O, no clocks, no globals; the same inputs give
// the same resources in the same order, so the xDS server can hash them
// to decide what changed. README.md maps every route-table field to the
// Envoy field it becomes.
package translate

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// Health is an instance's health as the registry reports it.
type Health string

// Health values (Consul's check states plus draining).
const (
	HealthPassing  Health = "passing"
	HealthWarning  Health = "warning"
	HealthCritical Health = "critical"
	HealthDraining Health = "draining"
	HealthUnknown  Health = ""
)

// Instance is one registered service instance: what the edge and the
// sidecars send traffic to (for a service behind a sidecar, the sidecar's
// inbound address).
type Instance struct {
	Service string
	ID      string
	Address string
	Port    int
	// Version is the instance's version tag; subset clusters select on it.
	Version string
	Health  Health
}

// JWTProvider is a token issuer whose tokens the edge and the sidecars
// accept.
type JWTProvider struct {
	// Name keys the provider in jwt_authn (e.g. "petmesh").
	Name      string
	Issuer    string
	Audiences []string
	// JWKSURI is fetched by the proxy (remote_jwks); a cluster named
	// resource.JWKSCluster(Name) is emitted for it.
	JWKSURI string
	// LocalJWKS is an inline JWKS document (local_jwks); used instead of
	// JWKSURI when set.
	LocalJWKS string
	// CacheDuration of fetched keys (default 5m).
	CacheDuration time.Duration
	// FromParams are query parameters the proxies take a token from when
	// the request has no Authorization header (from_params; the proxies
	// remove the parameter before forwarding). Empty: a token in the query
	// string is refused.
	FromParams []string
}

// Options configure translation; the zero value needs JWT providers added
// before any node with authenticated routes can be translated.
type Options struct {
	// JWTProviders, in order. A route needing a token accepts one from any
	// of them.
	JWTProviders []JWTProvider
	// EdgeLocalAddress is the endpoint of the edge_local cluster (routes
	// with target service "edge"), host:port; default 127.0.0.1:8080.
	EdgeLocalAddress string
	// OmitResilienceFields leaves out the resilience fields, which are
	// emitted by default: on every retry policy the previous_hosts retry
	// host predicate with host_selection_retry_max_attempts, on every EDS
	// cluster common_lb_config.healthy_panic_threshold, and on the edge
	// the buffer filter (envoy.filters.http.buffer, before the router)
	// with each route's max_body_bytes as BufferPerRoute. A data plane
	// that does not honour a field NACKs the whole resource (the Go data
	// plane's allow-list is internal/dataplane/fields.go); this is for
	// serving data planes older than these fields during a rolling
	// upgrade. The route table's values are then not enforced.
	OmitResilienceFields bool
}

// Defaults used when the route table or node metadata leaves a value out.
const (
	DefaultEdgePort        = 8080
	DefaultInboundPort     = 15001
	DefaultOutboundPort    = 15002
	DefaultRouteTimeout    = 15 * time.Second
	DefaultConnectTimeout  = time.Second
	DefaultRetryAttempts   = 2
	DefaultBackoffBase     = 25 * time.Millisecond
	DefaultJWKSCache       = 5 * time.Minute
	DefaultHCInterval      = 5 * time.Second
	DefaultHCTimeout       = time.Second
	DefaultHealthyThresh   = 1
	DefaultUnhealthyThresh = 2
	DefaultConsecutive5xx  = 5
	DefaultODInterval      = 10 * time.Second
	DefaultBaseEjection    = 30 * time.Second
	DefaultMaxEjectionPct  = 10
	// DefaultMaxBodyBytes is the request body limit of a route without
	// max_body_bytes (and the buffer filter's own limit): 10 MiB, the
	// edge's -max-body default, above the pets service's 8 MiB batches.
	DefaultMaxBodyBytes = 10 << 20
	// DefaultPanicThreshold is Envoy's default healthy panic threshold,
	// in percent.
	DefaultPanicThreshold = 50.0
	// HostSelectionRetryMaxAttempts is how many times a retry re-picks a
	// host the previous_hosts predicate rejects before it settles for a
	// previously tried one (Envoy's default is 1, which with two or
	// three endpoints often lands on the failed host again; 3 is the
	// value Envoy's retry documentation uses).
	HostSelectionRetryMaxAttempts = 3
	// outboundCatchAllRetries is the retry count of the catch-all route of
	// each service on a sidecar's egress listener (connect-failure, reset).
	outboundCatchAllRetries = 2
)

// DefaultRetryOn is the retry condition list when a route's retries block
// leaves retry_on out.
var DefaultRetryOn = []string{"5xx", "connect-failure", "reset"}

// Node is the part of an xDS node the translator looks at.
type Node struct {
	ID   resource.NodeID
	Meta resource.NodeMeta
}

// NodeFromProto parses an xDS node's id and metadata. A node whose id is
// not a petmesh id but whose metadata asks for the proxyless flavour is
// accepted as a gRPC node.
func NodeFromProto(n *core.Node) (Node, error) {
	meta, err := resource.ParseNodeMeta(n.GetMetadata())
	if err != nil {
		return Node{}, err
	}
	id, err := resource.ParseNodeID(n.GetId())
	if err != nil {
		if !meta.Proxyless || n.GetId() == "" {
			return Node{}, err
		}
		id = resource.NodeID{Kind: resource.KindGRPC, Service: meta.Service, Instance: n.GetId()}
	}
	if meta.Service == "" {
		meta.Service = id.Service
	}
	return Node{ID: id, Meta: meta}, nil
}

// Resources are one node's resources, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
}

// ByType returns the resources keyed by type URL, the shape
// go-control-plane's cache.NewSnapshot takes.
func (r *Resources) ByType() map[string][]types.Resource {
	m := map[string][]types.Resource{
		resource.ListenerType: make([]types.Resource, 0, len(r.Listeners)),
		resource.RouteType:    make([]types.Resource, 0, len(r.Routes)),
		resource.ClusterType:  make([]types.Resource, 0, len(r.Clusters)),
		resource.EndpointType: make([]types.Resource, 0, len(r.Endpoints)),
	}
	for _, x := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], x)
	}
	for _, x := range r.Routes {
		m[resource.RouteType] = append(m[resource.RouteType], x)
	}
	for _, x := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], x)
	}
	for _, x := range r.Endpoints {
		m[resource.EndpointType] = append(m[resource.EndpointType], x)
	}
	return m
}

// ErrNoJWTProvider is returned when a node needs token verification and
// Options has no provider: translating anyway would open every route.
var ErrNoJWTProvider = errors.New("no JWT provider configured")

// Translate returns node's resources for table t and instances. t must be
// valid (routes.Table.Validate); instances may be in any order. The
// proxyless flavour is chosen by node metadata (petmesh.proxyless) or a
// "grpc~" node id.
func Translate(t *routes.Table, instances []Instance, node Node, opts Options) (*Resources, error) {
	in := newInput(t, instances, opts)
	var r *Resources
	var err error
	switch {
	case node.Meta.Proxyless || node.ID.Kind == resource.KindGRPC:
		r = in.proxyless()
	case node.ID.Kind == resource.KindEdge:
		r, err = in.edge(node)
	case node.ID.Kind == resource.KindSidecar:
		r, err = in.sidecar(node)
	default:
		err = fmt.Errorf("node %q: unknown kind %q", node.ID, node.ID.Kind)
	}
	if err != nil {
		return nil, err
	}
	r.sort()
	return r, nil
}

func (r *Resources) sort() {
	sort.Slice(r.Listeners, func(i, j int) bool { return r.Listeners[i].GetName() < r.Listeners[j].GetName() })
	sort.Slice(r.Routes, func(i, j int) bool { return r.Routes[i].GetName() < r.Routes[j].GetName() })
	sort.Slice(r.Clusters, func(i, j int) bool { return r.Clusters[i].GetName() < r.Clusters[j].GetName() })
	sort.Slice(r.Endpoints, func(i, j int) bool { return r.Endpoints[i].GetClusterName() < r.Endpoints[j].GetClusterName() })
}

// input is the translation's read-only view of its inputs.
type input struct {
	table     *routes.Table
	opts      Options
	instances map[string][]Instance // by service, sorted by id
	services  []string              // every service known, sorted
}

func newInput(t *routes.Table, instances []Instance, opts Options) *input {
	in := &input{table: t, opts: opts, instances: map[string][]Instance{}}
	known := map[string]bool{}
	for _, i := range instances {
		in.instances[i.Service] = append(in.instances[i.Service], i)
		known[i.Service] = true
	}
	for s := range in.instances {
		slices.SortFunc(in.instances[s], func(a, b Instance) int {
			if a.ID < b.ID {
				return -1
			}
			if a.ID > b.ID {
				return 1
			}
			return 0
		})
	}
	for _, r := range t.Routes {
		for _, tg := range r.Targets {
			if tg.Service != routes.EdgeService {
				known[tg.Service] = true
			}
		}
	}
	for s := range t.Services {
		known[s] = true
	}
	for s := range known {
		in.services = append(in.services, s)
	}
	slices.Sort(in.services)
	return in
}

// policy returns service s's policies (zero when none).
func (in *input) policy(s string) routes.Service { return in.table.Services[s] }

// needsAuth reports whether any route needs a token.
func (in *input) needsAuth() bool {
	for _, r := range in.table.Routes {
		if r.Auth == nil || !r.Auth.Public {
			return true
		}
	}
	return false
}

// clusterSet collects the service clusters a node needs.
type clusterSet map[string]bool

func (c clusterSet) add(service, version string) { c[resource.Cluster(service, version)] = true }

func (c clusterSet) sorted() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// serviceClusters builds the EDS clusters and their load assignments.
func (in *input) serviceClusters(names []string, proxyless bool) ([]*clusterv3.Cluster, []*endpointv3.ClusterLoadAssignment) {
	var cs []*clusterv3.Cluster
	var es []*endpointv3.ClusterLoadAssignment
	for _, name := range names {
		svc, version := resource.ParseCluster(name)
		c := edsCluster(name, svc, version, in.policy(svc), proxyless)
		if !in.opts.OmitResilienceFields {
			c.CommonLbConfig = commonLbConfig(in.policy(svc))
		}
		cs = append(cs, c)
		es = append(es, loadAssignment(name, in.instances[svc], version))
	}
	return cs, es
}
