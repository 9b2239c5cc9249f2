package translate

import (
	"fmt"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/petmesh/petmesh/internal/xds/resource"
)

// resilienceTable has a route of every body-limit and timeout flavour,
// retries on two of them, and services with and without a panic
// threshold.
const resilienceTable = `
routes:
  - name: upload
    match: {prefix: /upload}
    targets: [{service: pets}]
    max_body_bytes: 0
    timeout: 0s
    retries: {attempts: 1}
  - name: login
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
    max_body_bytes: 65536
    timeout: 2s
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
    retries: {attempts: 2, retry_on: [reset]}
  - name: stats
    match: {prefix: /stats}
    targets: [{service: stats}]
services:
  pets: {panic_threshold: 0}
  stats: {panic_threshold: 12.5}
`

func resilienceOpts(on bool) Options {
	o := testOpts
	o.OmitResilienceFields = !on
	return o
}

func translateOrFatal(t *testing.T, src string, node Node, opts Options) *Resources {
	t.Helper()
	res, err := Translate(load(t, src), testInstances, node, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := Consistent(res); err != nil {
		t.Fatalf("inconsistent: %v", err)
	}
	return res
}

// routesOf returns every route of every route configuration, keyed by
// "<route configuration>/<virtual host>/<route>".
func routesOf(res *Resources) map[string]*routev3.Route {
	m := map[string]*routev3.Route{}
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				m[rc.GetName()+"/"+vh.GetName()+"/"+r.GetName()] = r
			}
		}
	}
	return m
}

func filtersOf(t *testing.T, res *Resources, listener string) []*hcm.HttpFilter {
	t.Helper()
	for _, l := range res.Listeners {
		if l.GetName() == listener {
			return resource.HCMOf(l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig()).GetHttpFilters()
		}
	}
	t.Fatalf("no listener %q", listener)
	return nil
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any, m T) T {
	t.Helper()
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
	}
	return m
}

func wantProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

// TestRetriesAvoidPreviousHosts: every retry policy of the edge and of a
// sidecar (the table's routes and the egress catch-all) carries the
// previous_hosts predicate and HostSelectionRetryMaxAttempts; routes
// without retries get no policy.
func TestRetriesAvoidPreviousHosts(t *testing.T) {
	predicate := []*routev3.RetryPolicy_RetryHostPredicate{{
		Name:       "envoy.retry_host_predicates.previous_hosts",
		ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: resource.MustAny(&previoushostsv3.PreviousHostsPredicate{})},
	}}
	base := resource.Duration(25 * time.Millisecond)
	want := map[string]*routev3.RetryPolicy{
		"edge-http/edge/upload": {RetryOn: "5xx,connect-failure,reset", NumRetries: wrapperspb.UInt32(1),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"edge-http/edge/pets": {RetryOn: "reset", NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"outbound/pets/upload": {RetryOn: "5xx,connect-failure,reset", NumRetries: wrapperspb.UInt32(1),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"outbound/pets/pets": {RetryOn: "reset", NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"outbound/pets/default": {RetryOn: "connect-failure,reset", NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"outbound/stats/default": {RetryOn: "connect-failure,reset", NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
		"outbound/sync/default": {RetryOn: "connect-failure,reset", NumRetries: wrapperspb.UInt32(2),
			RetryBackOff: &routev3.RetryPolicy_RetryBackOff{BaseInterval: base}},
	}
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("resilience=%v", on), func(t *testing.T) {
			got := map[string]*routev3.RetryPolicy{}
			for _, node := range []Node{edgeNode(), sidecarNode("sync")} {
				for k, r := range routesOf(translateOrFatal(t, resilienceTable, node, resilienceOpts(on))) {
					if p := r.GetRoute().GetRetryPolicy(); p != nil {
						got[k] = p
					}
				}
			}
			for k, w := range want {
				w = proto.Clone(w).(*routev3.RetryPolicy)
				if on {
					w.RetryHostPredicate = predicate
					w.HostSelectionRetryMaxAttempts = 3
				}
				if got[k] == nil {
					t.Errorf("%s: no retry policy", k)
					continue
				}
				wantProto(t, k, got[k], w)
				delete(got, k)
			}
			for k := range got {
				t.Errorf("%s: unexpected retry policy %v", k, got[k])
			}
		})
	}
}

// TestPanicThreshold: every EDS cluster (edge, sidecar, proxyless)
// carries common_lb_config.healthy_panic_threshold explicitly: 50 when
// the table leaves it out, 0 (panic mode off) and fractions as written.
func TestPanicThreshold(t *testing.T) {
	want := map[string]float64{"pets": 0, "stats": 12.5, "sync": 50}
	for _, node := range []Node{edgeNode(), sidecarNode("sync"), grpcNode()} {
		t.Run(node.ID.String(), func(t *testing.T) {
			res := translateOrFatal(t, resilienceTable, node, resilienceOpts(true))
			seen := 0
			for _, c := range res.Clusters {
				if c.GetType() != clusterv3.Cluster_EDS {
					if c.GetCommonLbConfig() != nil {
						t.Errorf("%s (%v): common_lb_config on a non-EDS cluster", c.GetName(), c.GetType())
					}
					continue
				}
				svc, _ := resource.ParseCluster(c.GetName())
				w, ok := want[svc]
				if !ok {
					t.Fatalf("unexpected cluster %s", c.GetName())
				}
				seen++
				wantProto(t, c.GetName(), c.GetCommonLbConfig(),
					&clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: w}})
			}
			if seen == 0 {
				t.Fatal("no EDS cluster")
			}
			off := translateOrFatal(t, resilienceTable, node, resilienceOpts(false))
			for _, c := range off.Clusters {
				if c.GetCommonLbConfig() != nil {
					t.Errorf("%s: common_lb_config with OmitResilienceFields", c.GetName())
				}
			}
		})
	}
}

// TestBodyLimit: the edge's filters are jwt_authn, rbac, local_ratelimit,
// fault, buffer (10 MiB), router; each route carries BufferPerRoute with
// its limit (10 MiB when absent, disabled for 0). Sidecars get no buffer
// filter; with OmitResilienceFields nothing of it is emitted.
func TestBodyLimit(t *testing.T) {
	res := translateOrFatal(t, resilienceTable, edgeNode(), resilienceOpts(true))
	var names []string
	for _, f := range filtersOf(t, res, resource.ListenerEdge) {
		names = append(names, f.GetName())
	}
	wantNames := fmt.Sprint([]string{resource.FilterJWTAuthn, resource.FilterRBAC, resource.FilterLocalRateLimit,
		resource.FilterFault, "envoy.filters.http.buffer", resource.FilterRouter})
	if fmt.Sprint(names) != wantNames {
		t.Fatalf("edge filters %v, want %v", names, wantNames)
	}
	buf := filtersOf(t, res, resource.ListenerEdge)[4]
	wantProto(t, "buffer filter", unpack(t, buf.GetTypedConfig(), &bufferv3.Buffer{}),
		&bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(10 << 20)})

	limit := func(n uint32) *bufferv3.BufferPerRoute {
		return &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Buffer{Buffer: &bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(n)}}}
	}
	want := map[string]*bufferv3.BufferPerRoute{
		"upload": {Override: &bufferv3.BufferPerRoute_Disabled{Disabled: true}},
		"login":  limit(65536),
		"pets":   limit(10 << 20),
		"stats":  limit(10 << 20),
	}
	rs := routesOf(res)
	for name, w := range want {
		r := rs["edge-http/edge/"+name]
		a := r.GetTypedPerFilterConfig()["envoy.filters.http.buffer"]
		if a == nil {
			t.Errorf("%s: no buffer per-route config", name)
			continue
		}
		wantProto(t, name, unpack(t, a, &bufferv3.BufferPerRoute{}), w)
	}

	for _, tc := range []struct {
		node Node
		on   bool
	}{{edgeNode(), false}, {sidecarNode("pets"), true}, {sidecarNode("pets"), false}} {
		r := translateOrFatal(t, resilienceTable, tc.node, resilienceOpts(tc.on))
		for _, l := range r.Listeners {
			for _, f := range filtersOf(t, r, l.GetName()) {
				if f.GetName() == "envoy.filters.http.buffer" {
					t.Errorf("%s resilience=%v: buffer filter on %s", tc.node.ID, tc.on, l.GetName())
				}
			}
		}
		for k, rt := range routesOf(r) {
			if rt.GetTypedPerFilterConfig()["envoy.filters.http.buffer"] != nil {
				t.Errorf("%s resilience=%v: buffer per-route config on %s", tc.node.ID, tc.on, k)
			}
		}
	}
}

// TestRouteTimeout: a route's timeout is always explicit: absent → 15s
// (Envoy's default), "0s" → 0 (no timeout), else as written; on the edge,
// on the sidecar's inbound mirror and on its egress routes, gated or not.
func TestRouteTimeout(t *testing.T) {
	want := map[string]time.Duration{
		"edge-http/edge/upload":       0,
		"edge-http/edge/login":        2 * time.Second,
		"edge-http/edge/pets":         15 * time.Second,
		"edge-http/edge/stats":        15 * time.Second,
		"inbound/local_app/upload":    0,
		"inbound/local_app/pets":      15 * time.Second,
		"inbound/local_app/default":   15 * time.Second,
		"outbound/pets/upload":        0,
		"outbound/pets/pets":          15 * time.Second,
		"outbound/pets/default":       15 * time.Second,
		"outbound/stats/stats":        15 * time.Second,
		"outbound/stats/default":      15 * time.Second,
		"outbound/sync/default":       15 * time.Second,
		"proxyless~pets/pets/default": -1, // proxyless: no timeout field
	}
	for _, on := range []bool{false, true} {
		got := map[string]*routev3.Route{}
		for _, node := range []Node{edgeNode(), sidecarNode("pets"), grpcNode()} {
			for k, r := range routesOf(translateOrFatal(t, resilienceTable, node, resilienceOpts(on))) {
				got[k] = r
			}
		}
		for k, w := range want {
			r, ok := got[k]
			if !ok {
				t.Errorf("resilience=%v: no route %s", on, k)
				continue
			}
			if w < 0 {
				if r.GetRoute().GetTimeout() != nil {
					t.Errorf("resilience=%v %s: timeout %v, want none", on, k, r.GetRoute().GetTimeout())
				}
				continue
			}
			wantProto(t, fmt.Sprintf("resilience=%v %s timeout", on, k), r.GetRoute().GetTimeout(), durationpb.New(w))
		}
	}
}
