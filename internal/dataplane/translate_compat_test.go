package dataplane_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

func TestTranslatorOutputAccepted(t *testing.T) {
	full, err := os.ReadFile("../../controlplane/routes/testdata/valid/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]string{
		"default": string(routes.DefaultYAML), "canary": compatCanary, "retries": compatRetries,
		"rate-limit": compatRateLimit, "auth-roles": compatAuthRoles, "policies": string(full),
	}
	for tn, src := range tables {
		for _, node := range []translate.Node{compatEdgeNode(0), compatSidecarNode("pets", 1), compatSidecarNode("sync", 1)} {
			t.Run(tn+"/"+node.ID.String(), func(t *testing.T) {
				tab, err := routes.Load([]byte(src), routes.ValidateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				tr, err := translate.Translate(tab, compatInstances, node, compatOpts)
				if err != nil {
					t.Fatal(err)
				}
				dp, err := dataplane.New(dataplane.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Auth: fakeAuthFactory})
				if err != nil {
					t.Fatal(err)
				}
				defer dp.Close()
				res := toDataplane(tr)
				if err := dp.Validate(res); err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if err := dp.Apply(context.Background(), res); err != nil {
					t.Fatalf("apply: %v", err)
				}
			})
		}
	}
}

var compatOpts = translate.Options{
	JWTProviders:     []translate.JWTProvider{{Name: "petmesh", Issuer: "petmesh-edge", Audiences: []string{"petmesh"}, JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json"}},
	EdgeLocalAddress: "127.0.0.1:8080",
}

var compatInstances = []translate.Instance{
	{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15101, Version: "v1", Health: translate.HealthPassing},
	{Service: "pets", ID: "pets-2", Address: "127.0.0.1", Port: 15102, Version: "v2", Health: translate.HealthPassing},
	{Service: "sync", ID: "sync-1", Address: "127.0.0.1", Port: 15201, Version: "v1", Health: translate.HealthPassing},
	{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 15301, Version: "v1", Health: translate.HealthPassing},
}

func compatEdgeNode(port int) translate.Node {
	return translate.Node{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "e1"}, Meta: resource.NodeMeta{ListenPort: port}}
}

func compatSidecarNode(svc string, appPort int) translate.Node {
	return translate.Node{
		ID:   resource.NodeID{Kind: resource.KindSidecar, Service: svc, Instance: svc + "-1"},
		Meta: resource.NodeMeta{Service: svc, Version: "v1", InboundPort: 15101, OutboundPort: 15001, AppPort: appPort},
	}
}

// toDataplane keys translator output by name, as the ADS client does.
func toDataplane(r *translate.Resources) *dataplane.Resources {
	out := &dataplane.Resources{
		Listeners: map[string]*listenerv3.Listener{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Clusters:  map[string]*clusterv3.Cluster{},
		Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}
	for _, x := range r.Listeners {
		out.Listeners[x.GetName()] = x
	}
	for _, x := range r.Routes {
		out.Routes[x.GetName()] = x
	}
	for _, x := range r.Clusters {
		out.Clusters[x.GetName()] = x
	}
	for _, x := range r.Endpoints {
		out.Endpoints[x.GetClusterName()] = x
	}
	return out
}

// testIdentityHeader carries the fake authenticator's identity:
// "subject" or "subject:role1,role2". This is a unit test of the data
// plane; real token verification is tested with the edge.
const testIdentityHeader = "X-Test-Identity"

// fakeAuthFactory accepts every jwt_authn configuration and returns an
// authenticator that reads testIdentityHeader: present → that identity;
// absent → anonymous when the requirement allows a missing token, else
// 401.
var fakeAuthFactory dataplane.AuthFactory = func(cfg *jwtv3.JwtAuthentication) (dataplane.Authenticator, error) {
	if len(cfg.GetProviders()) == 0 {
		return nil, errors.New("no providers")
	}
	return dataplane.AuthenticatorFunc(func(r *http.Request, req *dataplane.AuthRequirement) (identity.Identity, error) {
		v := r.Header.Get(testIdentityHeader)
		if v == "" {
			if allowsMissing(req.Requirement) {
				return identity.Identity{}, nil
			}
			return identity.Identity{}, httpx.Unauthenticated("token required")
		}
		sub, roles, _ := strings.Cut(v, ":")
		id := identity.Identity{Subject: sub}
		if roles != "" {
			id.Roles = strings.Split(roles, ",")
		}
		return id, nil
	}), nil
}

func allowsMissing(r *jwtv3.JwtRequirement) bool {
	switch {
	case r.GetAllowMissing() != nil, r.GetAllowMissingOrFailed() != nil:
		return true
	case r.GetRequiresAny() != nil:
		for _, c := range r.GetRequiresAny().GetRequirements() {
			if allowsMissing(c) {
				return true
			}
		}
	}
	return false
}

const compatCanary = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets, subset: v1, weight: 90}, {service: pets, subset: v2, weight: 10}]
`

const compatRetries = `
routes:
  - name: pets
    match: {prefix: /pets, methods: [GET, HEAD]}
    targets: [{service: pets}]
    timeout: 3s
    retries:
      attempts: 3
      retry_on: [5xx, retriable-status-codes]
      retriable_status_codes: [429, 503]
      per_try_timeout: 1s
      backoff: {base: 1ms, max: 5ms}
      idempotent_only: false
  - name: put
    match: {path: /pets/one, methods: [PUT]}
    targets: [{service: pets}]
    retries: {}
    timeout: 0s
`

const compatRateLimit = `
routes:
  - name: login
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
    rate_limit: {rps: 1, burst: 3}
  - name: pets
    match: {regex: "^/pets/[0-9]+$"}
    targets: [{service: pets}]
    rate_limit: {rps: 1, burst: 2, key: subject}
`

const compatAuthRoles = `
routes:
  - name: admin
    match: {prefix: /admin}
    auth: {roles: [admin, ops]}
    targets: [{service: sync}]
  - name: open
    match: {prefix: /open}
    auth: {public: true}
    targets: [{service: stats}]
  - name: teapot
    match: {path: /teapot}
    auth: {public: true}
    direct_response: {status: 418, body: "short and stout"}
`
