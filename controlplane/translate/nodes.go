package translate

import (
	"errors"
	"fmt"
	"net/http"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

func httpListener(name, host string, port int, m *hcm.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(host, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       resource.FilterHTTPConnectionManager,
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: resource.MustAny(m)},
		}}}},
	}
}

// edge: listener edge-http (jwt_authn, rbac, local_ratelimit, fault,
// router), route configuration edge-http with one virtual host holding the
// table's routes in order, the clusters they reference, edge_local and the
// JWKS clusters.
func (in *input) edge(node Node) (*Resources, error) {
	jwt, err := in.jwtFilter()
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	port := node.Meta.ListenPort
	if port == 0 {
		port = DefaultEdgePort
	}
	filters := []*hcm.HttpFilter{jwt, rbacFilter(), rateLimitFilter(resource.ListenerEdge), faultFilter(nil)}
	if !in.opts.OmitResilienceFields {
		filters = append(filters, bufferFilter())
	}
	filters = append(filters, routerFilter())
	l := httpListener(resource.ListenerEdge, "0.0.0.0", port, resource.HCM(resource.ListenerEdge, resource.RouteEdge, filters...))

	clusters := clusterSet{}
	vh := &routev3.VirtualHost{Name: "edge", Domains: []string{"*"}}
	for i := range in.table.Routes {
		vh.Routes = append(vh.Routes, in.edgeRoute(&in.table.Routes[i], clusters))
	}
	rc := &routev3.RouteConfiguration{Name: resource.RouteEdge, VirtualHosts: []*routev3.VirtualHost{vh}}

	cs, es := in.serviceClusters(clusters.sorted(), false)
	local, err := in.edgeLocalCluster()
	if err != nil {
		return nil, err
	}
	jwks, err := in.jwksClusters()
	if err != nil {
		return nil, err
	}
	cs = append(append(cs, local), jwks...)
	return &Resources{
		Listeners: []*listenerv3.Listener{l},
		Routes:    []*routev3.RouteConfiguration{rc},
		Clusters:  cs,
		Endpoints: es,
	}, nil
}

// ErrNodeMetadata is returned (wrapped) when a node lacks metadata its
// flavour needs.
var ErrNodeMetadata = errors.New("node metadata")

// sidecar: an inbound listener in front of the local app and an outbound
// (egress) listener with a virtual host per service.
func (in *input) sidecar(node Node) (*Resources, error) {
	svc := node.Meta.Service
	if svc == "" {
		svc = node.ID.Service
	}
	if svc == "" {
		return nil, fmt.Errorf("sidecar %s: %w: %s is required", node.ID, ErrNodeMetadata, resource.MetaService)
	}
	if node.Meta.AppPort == 0 {
		return nil, fmt.Errorf("sidecar %s: %w: %s is required", node.ID, ErrNodeMetadata, resource.MetaAppPort)
	}
	inPort, outPort := node.Meta.InboundPort, node.Meta.OutboundPort
	if inPort == 0 {
		inPort = DefaultInboundPort
	}
	if outPort == 0 {
		outPort = DefaultOutboundPort
	}
	pol := in.policy(svc)

	// Inbound: verify tokens again (zero trust), inject the service's
	// faults, forward to the app through local_app (bulkhead).
	var inFilters []*hcm.HttpFilter
	if in.needsAuth() {
		jwt, err := in.jwtFilter()
		if err != nil {
			return nil, fmt.Errorf("sidecar %s: %w", node.ID, err)
		}
		inFilters = append(inFilters, jwt)
	}
	inFilters = append(inFilters, faultFilter(pol.Fault), routerFilter())
	inbound := httpListener(resource.ListenerInbound, "0.0.0.0", inPort, resource.HCM(resource.ListenerInbound, resource.RouteInbound, inFilters...))

	toApp := func(name string, m *routev3.RouteMatch, r *routes.Route, public bool) *routev3.Route {
		a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: resource.ClusterLocalApp}}
		if r != nil {
			a.Timeout = resource.Duration(durOr(r.Timeout, DefaultRouteTimeout))
		} else {
			a.Timeout = resource.Duration(DefaultRouteTimeout)
		}
		rt := &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: a}}
		if in.needsAuth() {
			rt.TypedPerFilterConfig = map[string]*anypb.Any{resource.FilterJWTAuthn: jwtPerRoute(public)}
		}
		return rt
	}
	inVH := &routev3.VirtualHost{Name: resource.ClusterLocalApp, Domains: []string{"*"}}
	if hc := pol.HealthCheck; hc != nil {
		// The edge's active health checks reach the app through the inbound
		// listener without a token; only GET and HEAD of the health path
		// are let through (any other method falls to the routes below).
		inVH.Routes = append(inVH.Routes, toApp("health", match(routes.Match{Path: hc.Path, Methods: []string{http.MethodGet, http.MethodHead}}), nil, true))
	}
	for i := range in.table.Routes {
		r := &in.table.Routes[i]
		if servesOnly(r, svc) {
			inVH.Routes = append(inVH.Routes, toApp(r.Name, match(r.Match), r, r.Auth != nil && r.Auth.Public))
		}
	}
	inVH.Routes = append(inVH.Routes, toApp("default", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, nil, false))
	inRC := &routev3.RouteConfiguration{Name: resource.RouteInbound, VirtualHosts: []*routev3.VirtualHost{inVH}}

	// Outbound: one virtual host per service, matched on the Host header
	// ("pets", "pets.mesh", with or without a port): the table's routes
	// that only target that service (weights, timeouts, retries,
	// rewrites), then a catch-all to the whole service.
	outbound := httpListener(resource.ListenerOutbound, "127.0.0.1", outPort, resource.HCM(resource.ListenerOutbound, resource.RouteOutbound, routerFilter()))
	clusters := clusterSet{}
	outRC := &routev3.RouteConfiguration{Name: resource.RouteOutbound}
	for _, s := range in.services {
		clusters.add(s, "")
		vh := &routev3.VirtualHost{Name: s, Domains: []string{s, s + ".mesh", s + ":*", s + ".mesh:*"}}
		for i := range in.table.Routes {
			r := &in.table.Routes[i]
			if servesOnly(r, s) && r.DirectResponse == nil {
				vh.Routes = append(vh.Routes, &routev3.Route{
					Name: r.Name, Match: match(r.Match), Metadata: routeMetadata(r),
					Action: &routev3.Route_Route{Route: in.forward(r, clusters)},
				})
			}
		}
		catchAllRetry := &routev3.RetryPolicy{
			RetryOn:      "connect-failure,reset",
			NumRetries:   u32(outboundCatchAllRetries),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: resource.Duration(DefaultBackoffBase)},
		}
		in.avoidPreviousHosts(catchAllRetry)
		vh.Routes = append(vh.Routes, &routev3.Route{
			Name:  "default",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: resource.Cluster(s, "")},
				Timeout:          resource.Duration(DefaultRouteTimeout),
				RetryPolicy:      catchAllRetry,
			}},
		})
		outRC.VirtualHosts = append(outRC.VirtualHosts, vh)
	}

	cs, es := in.serviceClusters(clusters.sorted(), false)
	cs = append(cs, localAppCluster(node.Meta.AppPort, pol))
	if in.needsAuth() {
		jwks, err := in.jwksClusters()
		if err != nil {
			return nil, err
		}
		cs = append(cs, jwks...)
	}
	return &Resources{
		Listeners: []*listenerv3.Listener{inbound, outbound},
		Routes:    []*routev3.RouteConfiguration{inRC, outRC},
		Clusters:  cs,
		Endpoints: es,
	}, nil
}

// proxyless: for every service, an API listener named after it (what a
// gRPC client dialing "xds:///<service>" asks for) whose connection
// manager fetches route configuration proxyless~<service> over ADS, with
// only the router filter (gRPC rejects filters it does not know); the
// route sends everything to the service cluster, honouring the weights of
// the first table route that targets only that service.
func (in *input) proxyless() *Resources {
	r := &Resources{}
	clusters := clusterSet{}
	for _, s := range in.services {
		m := resource.HCM(s, resource.ProxylessRoute(s), routerFilter())
		r.Listeners = append(r.Listeners, &listenerv3.Listener{
			Name:        resource.ProxylessListener(s),
			ApiListener: &listenerv3.ApiListener{ApiListener: resource.MustAny(m)},
		})
		a := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: resource.Cluster(s, "")}}
		clusters.add(s, "")
		for i := range in.table.Routes {
			tr := &in.table.Routes[i]
			if servesOnly(tr, s) && len(tr.Targets) > 1 {
				f := in.forward(tr, clusters)
				a.ClusterSpecifier = f.ClusterSpecifier
				break
			}
		}
		r.Routes = append(r.Routes, &routev3.RouteConfiguration{
			Name: resource.ProxylessRoute(s),
			VirtualHosts: []*routev3.VirtualHost{{
				Name:    s,
				Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name:   "default",
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
					Action: &routev3.Route_Route{Route: a},
				}},
			}},
		})
	}
	r.Clusters, r.Endpoints = in.serviceClusters(clusters.sorted(), true)
	return r
}
