package meshauth

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// resourcesOf converts translator output into the data plane's shape.
func resourcesOf(r *translate.Resources) *dataplane.Resources {
	out := &dataplane.Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}
	for _, x := range r.Listeners {
		out.Listeners[x.Name] = x
	}
	for _, x := range r.Routes {
		out.Routes[x.Name] = x
	}
	for _, x := range r.Clusters {
		out.Clusters[x.Name] = x
	}
	for _, x := range r.Endpoints {
		out.Endpoints[x.ClusterName] = x
	}
	return out
}

const adaptTable = `
routes:
  - name: login
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
    rate_limit: {rps: 5, burst: 10}
  - name: admin
    match: {prefix: /admin}
    auth: {roles: [admin, ops]}
    targets: [{service: pets}]
  - name: pets
    match: {regex: "^/pets/[0-9]+$"}
    targets: [{service: pets}]
    rate_limit: {rps: 100, key: subject}
`

// TestAdaptTranslatorOutput: everything the translator emits for the edge
// and for sidecars applies to the data plane after Adapt (and, since the
// data plane accepts translator output natively, without it too), and the
// input messages are left untouched.
func TestAdaptTranslatorOutput(t *testing.T) {
	custom, err := routes.Load([]byte(adaptTable), routes.ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	instances := []translate.Instance{
		{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15101, Version: "v1", Health: translate.HealthPassing},
		{Service: "pets", ID: "pets-2", Address: "127.0.0.1", Port: 15102, Version: "v2", Health: translate.HealthCritical},
		{Service: "sync", ID: "sync-1", Address: "127.0.0.1", Port: 15201, Version: "v1", Health: translate.HealthPassing},
		{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 15301, Version: "v1", Health: translate.HealthPassing},
	}
	opts := translate.Options{JWTProviders: []translate.JWTProvider{{
		Name: "petmesh", Issuer: testIssuer, Audiences: []string{testAudience},
		JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json",
	}}}
	edge := translate.Node{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "e1"}}
	sidecar := func(svc string) translate.Node {
		return translate.Node{
			ID:   resource.NodeID{Kind: resource.KindSidecar, Service: svc, Instance: svc + "-1"},
			Meta: resource.NodeMeta{Service: svc, Version: "v1", InboundPort: 15101, OutboundPort: 15002, AppPort: 9101},
		}
	}
	tests := []struct {
		desc  string
		table *routes.Table
		node  translate.Node
	}{
		{desc: "default table, edge", table: routes.Default(), node: edge},
		{desc: "default table, pets sidecar", table: routes.Default(), node: sidecar("pets")},
		{desc: "default table, sync sidecar", table: routes.Default(), node: sidecar("sync")},
		{desc: "roles and rate limits, edge", table: custom, node: edge},
		{desc: "roles and rate limits, pets sidecar", table: custom, node: sidecar("pets")},
	}
	f, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(dataplane.Options{Auth: f.Auth})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			tr, err := translate.Translate(tc.table, instances, tc.node, opts)
			if err != nil {
				t.Fatal(err)
			}
			in := resourcesOf(tr)
			before := resourcesOf(tr)
			for n, l := range before.Listeners {
				before.Listeners[n] = proto.Clone(l).(*listenerv3.Listener)
			}
			for n, r := range before.Routes {
				before.Routes[n] = proto.Clone(r).(*routev3.RouteConfiguration)
			}
			out, err := Adapt(in)
			if err != nil {
				t.Fatal(err)
			}
			if err := dp.Validate(out); err != nil {
				t.Fatalf("adapted resources rejected: %v", err)
			}
			for n, l := range in.Listeners {
				if !proto.Equal(l, before.Listeners[n]) {
					t.Fatalf("listener %q modified in place", n)
				}
			}
			for n, r := range in.Routes {
				if !proto.Equal(r, before.Routes[n]) {
					t.Fatalf("route configuration %q modified in place", n)
				}
			}
		})
	}

	t.Run("roles and key land in route metadata", func(t *testing.T) {
		tr, err := translate.Translate(custom, instances, edge, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := dp.Validate(resourcesOf(tr)); err != nil {
			t.Fatalf("the data plane refuses translator output as is: %v", err)
		}
		out, err := Adapt(resourcesOf(tr))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, rt := range out.Routes[resource.RouteEdge].GetVirtualHosts()[0].GetRoutes() {
			md := rt.GetMetadata().GetFilterMetadata()[resource.MetadataNamespace]
			var parts []string
			for _, v := range md.GetFields()[dataplane.MetaRoles].GetListValue().GetValues() {
				parts = append(parts, v.GetStringValue())
			}
			got[rt.GetName()] = strings.Join(parts, ",") + "|" + md.GetFields()[dataplane.MetaRateLimitKey].GetStringValue()
			if _, ok := rt.GetTypedPerFilterConfig()[resource.FilterRBAC]; ok {
				t.Errorf("route %s keeps its RBAC config", rt.GetName())
			}
		}
		want := map[string]string{"login": "|ip", "admin": "admin,ops|", "pets": "|subject"}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("route %s: roles|key = %q, want %q", k, got[k], v)
			}
		}
	})
}
