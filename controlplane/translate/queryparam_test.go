package translate

import (
	"slices"
	"strings"
	"testing"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// jwtConfigs returns the jwt_authn configuration of every HTTP connection
// manager in r.
func jwtConfigs(t *testing.T, r *Resources) []*jwtv3.JwtAuthentication {
	t.Helper()
	var out []*jwtv3.JwtAuthentication
	for _, l := range r.Listeners {
		chains := l.GetFilterChains()
		if dc := l.GetDefaultFilterChain(); dc != nil {
			chains = append(chains, dc)
		}
		for _, fc := range chains {
			for _, f := range fc.GetFilters() {
				var m hcm.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&m) {
					if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
						t.Fatal(err)
					}
					for _, hf := range m.GetHttpFilters() {
						if hf.GetName() != resource.FilterJWTAuthn {
							continue
						}
						var c jwtv3.JwtAuthentication
						if err := hf.GetTypedConfig().UnmarshalTo(&c); err != nil {
							t.Fatal(err)
						}
						out = append(out, &c)
					}
				}
			}
		}
	}
	return out
}

// TestFromParams: JWTProvider.FromParams (the control plane's
// -jwt-query-param) becomes from_params of the provider on edge and sidecar
// nodes; without it no provider has from_params.
func TestFromParams(t *testing.T) {
	def := routes.Default()
	withParam := testOpts
	withParam.JWTProviders = append([]JWTProvider{}, testOpts.JWTProviders...)
	withParam.JWTProviders[0].FromParams = []string{"jwt"}
	for _, node := range []Node{edgeNode(), sidecarNode("pets")} {
		for _, tc := range []struct {
			opts Options
			want []string
		}{{testOpts, nil}, {withParam, []string{"jwt"}}} {
			res, err := Translate(def, testInstances, node, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			cfgs := jwtConfigs(t, res)
			if len(cfgs) == 0 {
				t.Fatalf("%s: no jwt_authn filter", node.ID)
			}
			for _, c := range cfgs {
				p := c.GetProviders()["petmesh"]
				if p == nil {
					t.Fatalf("%s: no petmesh provider", node.ID)
				}
				if !slices.Equal(p.GetFromParams(), tc.want) {
					t.Fatalf("%s: from_params %q, want %q", node.ID, p.GetFromParams(), tc.want)
				}
			}
		}
	}
	bad := testOpts
	bad.JWTProviders = []JWTProvider{testOpts.JWTProviders[0]}
	bad.JWTProviders[0].FromParams = []string{"a&b"}
	if _, err := Translate(def, testInstances, edgeNode(), bad); err == nil || !strings.Contains(err.Error(), "from params") {
		t.Fatalf("bad param name: err = %v", err)
	}
}
