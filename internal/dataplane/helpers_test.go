package dataplane

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const testListener = "edge-http"

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func filter(t testing.TB, name string, m proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, m)}}
}

func routerFilter(t testing.TB) *hcmv3.HttpFilter {
	return filter(t, "envoy.filters.http.router", &routerv3.Router{})
}

// listenerRDS returns a listener whose HCM takes its routes over ADS.
func listenerRDS(t testing.TB, name, rds string, filters ...*hcmv3.HttpFilter) *listener.Listener {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rds,
			ConfigSource: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}},
		HttpFilters: append(filters, routerFilter(t)),
	}
	return &listener.Listener{Name: name, FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
		Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(t, m)}}}}}}
}

func routeConfig(name string, routes ...*route.Route) *route.RouteConfiguration {
	return &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{{Name: "all", Domains: []string{"*"}, Routes: routes}}}
}

func prefixRoute(name, prefix, clusterName string) *route.Route {
	return &route.Route{Name: name,
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: prefix}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}}}
}

func edsCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		ConnectTimeout: durationpb.New(time.Second),
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{EdsConfig: &core.ConfigSource{
			ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}}
}

func loadAssignment(t testing.TB, name string, urls ...string) *endpoint.ClusterLoadAssignment {
	t.Helper()
	var eps []*endpoint.LbEndpoint
	for _, u := range urls {
		host, port, err := net.SplitHostPort(hostOf(u))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := strconv.Atoi(port)
		eps = append(eps, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}})
	}
	return &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func hostOf(u string) string {
	if len(u) > 7 && u[:7] == "http://" {
		return u[7:]
	}
	return u
}

// resources builds a one-listener configuration.
func resources(l *listener.Listener, rc *route.RouteConfiguration, clusters []*cluster.Cluster, clas ...*endpoint.ClusterLoadAssignment) *Resources {
	r := &Resources{
		Listeners: map[string]*listener.Listener{l.GetName(): l},
		Routes:    map[string]*route.RouteConfiguration{rc.GetName(): rc},
		Clusters:  map[string]*cluster.Cluster{},
		Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
	}
	for _, c := range clusters {
		r.Clusters[c.GetName()] = c
	}
	for _, c := range clas {
		r.Endpoints[c.GetClusterName()] = c
	}
	return r
}

// lockedRand is a seeded, concurrency-safe RNG for deterministic tests.
func lockedRand(seed uint64) func(uint64) uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(n uint64) uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64N(n)
	}
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type harness struct {
	dp  *DataPlane
	srv *httptest.Server
	reg *prometheus.Registry
}

func newHarness(t testing.TB, opts Options, res *Resources) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Rand == nil {
		opts.Rand = lockedRand(1)
	}
	dp, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(dp.Handler(testListener))
	t.Cleanup(func() { srv.Close(); dp.Close() })
	return &harness{dp: dp, srv: srv, reg: reg}
}

func (h *harness) do(t testing.TB, method, path string, hdr map[string]string, body io.Reader) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// backend is an httptest server answering "<name> <host> <path>".
func backend(t testing.TB, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s", name, r.Host, r.URL.Path)
	}))
	t.Cleanup(s.Close)
	return s
}

var _ = wrapperspb.UInt32
