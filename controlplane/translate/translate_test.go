package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

var update = flag.Bool("update", false, "rewrite golden files")

var testOpts = Options{
	JWTProviders: []JWTProvider{{
		Name:      "petmesh",
		Issuer:    "petmesh-edge",
		Audiences: []string{"petmesh"},
		JWKSURI:   "http://127.0.0.1:8080/.well-known/jwks.json",
	}},
	EdgeLocalAddress: "127.0.0.1:8080",
}

var testInstances = []Instance{
	{Service: "pets", ID: "pets-2", Address: "127.0.0.1", Port: 15102, Version: "v2", Health: HealthPassing},
	{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15101, Version: "v1", Health: HealthPassing},
	{Service: "sync", ID: "sync-1", Address: "127.0.0.1", Port: 15201, Version: "v1", Health: HealthPassing},
	{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 15301, Version: "v1", Health: HealthPassing},
}

func edgeNode() Node { return Node{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "e1"}} }

func sidecarNode(svc string) Node {
	return Node{
		ID:   resource.NodeID{Kind: resource.KindSidecar, Service: svc, Instance: svc + "-1"},
		Meta: resource.NodeMeta{Service: svc, Version: "v1", InboundPort: 15101, OutboundPort: 15001, AppPort: 9101},
	}
}

func grpcNode() Node {
	return Node{ID: resource.NodeID{Kind: resource.KindGRPC, Service: "client", Instance: "c1"}, Meta: resource.NodeMeta{Proxyless: true}}
}

func load(t *testing.T, src string) *routes.Table {
	t.Helper()
	var data []byte
	if strings.HasPrefix(src, "file:") {
		var err error
		data, err = os.ReadFile(strings.TrimPrefix(src, "file:"))
		if err != nil {
			t.Fatal(err)
		}
	} else {
		data = []byte(src)
	}
	tab, err := routes.Load(data, routes.ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

const canary = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets, subset: v1, weight: 90}, {service: pets, subset: v2, weight: 10}]
`

const retries = `
routes:
  - name: pets
    match: {prefix: /pets, methods: [GET, HEAD], headers: [{name: x-debug, present: true}]}
    targets: [{service: pets}]
    timeout: 3s
    retries:
      attempts: 3
      retry_on: [5xx, retriable-status-codes]
      retriable_status_codes: [429, 503]
      per_try_timeout: 1s
      backoff: {base: 10ms, max: 200ms}
      idempotent_only: false
  - name: put
    match: {path: /pets/one, methods: [PUT]}
    targets: [{service: pets}]
    retries: {}
    timeout: 0s
`

const rateLimit = `
routes:
  - name: login
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
    rate_limit: {rps: 5, burst: 10}
  - name: pets
    match: {regex: "^/pets/[0-9]+$"}
    targets: [{service: pets}]
    rate_limit: {rps: 100, key: subject}
`

const authRoles = `
routes:
  - name: admin
    match: {prefix: /admin, headers: [{name: x-tenant, exact: acme}]}
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

func TestGolden(t *testing.T) {
	unhealthy := append([]Instance{}, testInstances...)
	unhealthy[0].Health = HealthCritical
	unhealthy = append(unhealthy,
		Instance{Service: "pets", ID: "pets-3", Address: "127.0.0.2", Port: 15103, Version: "v2", Health: HealthWarning},
		Instance{Service: "pets", ID: "pets-4", Address: "127.0.0.3", Port: 15104, Version: "v1", Health: HealthDraining},
		Instance{Service: "pets", ID: "pets-5", Address: "127.0.0.4", Port: 15105, Version: "v1", Health: HealthUnknown},
	)
	twoProviders := testOpts
	twoProviders.JWTProviders = append([]JWTProvider{}, testOpts.JWTProviders...)
	twoProviders.JWTProviders = append(twoProviders.JWTProviders, JWTProvider{
		Name: "partner", Issuer: "partner-idp", LocalJWKS: `{"keys":[]}`,
	})
	omitResilience := testOpts
	omitResilience.OmitResilienceFields = true
	tests := []struct {
		desc      string
		table     string
		instances []Instance
		node      Node
		opts      *Options
	}{
		{desc: "default-edge", table: "file:../routes/testdata/default.yaml", node: edgeNode()},
		{desc: "default-sidecar-pets", table: "file:../routes/testdata/default.yaml", node: sidecarNode("pets")},
		{desc: "default-sidecar-sync", table: "file:../routes/testdata/default.yaml", node: sidecarNode("sync")},
		{desc: "default-proxyless", table: "file:../routes/testdata/default.yaml", node: grpcNode()},
		{desc: "canary-edge", table: canary, node: edgeNode()},
		{desc: "canary-sidecar", table: canary, node: sidecarNode("sync")},
		{desc: "canary-proxyless", table: canary, node: grpcNode()},
		{desc: "retries-timeouts-edge", table: retries, node: edgeNode()},
		{desc: "rate-limit-edge", table: rateLimit, node: edgeNode()},
		{desc: "auth-roles-edge", table: authRoles, node: edgeNode(), opts: &twoProviders},
		{desc: "policies-edge", table: "file:../routes/testdata/valid/full.yaml", node: edgeNode()},
		{desc: "policies-sidecar", table: "file:../routes/testdata/valid/full.yaml", node: sidecarNode("pets")},
		{desc: "unhealthy-endpoints-edge", table: canary, instances: unhealthy, node: edgeNode()},
		{desc: "unhealthy-endpoints-proxyless", table: canary, instances: unhealthy, node: grpcNode()},
		{desc: "omit-resilience-edge", table: "file:../routes/testdata/valid/full.yaml", node: edgeNode(), opts: &omitResilience},
		{desc: "omit-resilience-sidecar", table: "file:../routes/testdata/valid/full.yaml", node: sidecarNode("pets"), opts: &omitResilience},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			tab := load(t, tc.table)
			inst := tc.instances
			if inst == nil {
				inst = testInstances
			}
			opts := testOpts
			if tc.opts != nil {
				opts = *tc.opts
			}
			res, err := Translate(tab, inst, tc.node, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := Consistent(res); err != nil {
				t.Fatalf("inconsistent: %v", err)
			}
			// go-control-plane's own consistency check accepts it too,
			// except for API listeners, whose RDS names it does not follow
			// (so the xDS server must use Consistent, not only that).
			snap, err := cachev3.NewSnapshot("1", res.ByType())
			if err != nil {
				t.Fatal(err)
			}
			if err := snap.Consistent(); err != nil && !tc.node.Meta.Proxyless {
				t.Fatalf("snapshot: %v", err)
			}
			// Deterministic regardless of instance order.
			rev := make([]Instance, len(inst))
			for i := range inst {
				rev[len(inst)-1-i] = inst[i]
			}
			again, err := Translate(tab, rev, tc.node, opts)
			if err != nil {
				t.Fatal(err)
			}
			got := render(t, res)
			if !bytes.Equal(got, render(t, again)) {
				t.Fatal("translation depends on instance order")
			}
			golden(t, filepath.Join("testdata", tc.desc+".golden.yaml"), got)
		})
	}
}

// render writes resources as YAML: protojson (proto field names, Any
// expanded) re-encoded as YAML so the output is stable.
func render(t *testing.T, r *Resources) []byte {
	t.Helper()
	var doc struct {
		Listeners []any `yaml:"listeners"`
		Routes    []any `yaml:"routes"`
		Clusters  []any `yaml:"clusters"`
		Endpoints []any `yaml:"endpoints"`
	}
	conv := func(m proto.Message) any {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		// json.Number keeps large integers (max_request_bytes) out of
		// float notation.
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		return numbers(v)
	}
	for _, x := range r.Listeners {
		doc.Listeners = append(doc.Listeners, conv(x))
	}
	for _, x := range r.Routes {
		doc.Routes = append(doc.Routes, conv(x))
	}
	for _, x := range r.Clusters {
		doc.Clusters = append(doc.Clusters, conv(x))
	}
	for _, x := range r.Endpoints {
		doc.Endpoints = append(doc.Endpoints, conv(x))
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// numbers turns json.Numbers into int64 (integers) or float64, so YAML
// renders 10485760 rather than 1.048576e+07.
func numbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = numbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = numbers(e)
		}
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n
		}
		f, _ := x.Float64()
		return f
	}
	return v
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controlplane/translate -update)", err)
	}
	if !bytes.Equal(want, got) {
		t.Fatalf("%s differs; run go test ./controlplane/translate -update and review the diff.\n--- got\n%s", path, got)
	}
}

func TestTranslateErrors(t *testing.T) {
	def := routes.Default()
	tests := []struct {
		desc string
		node Node
		opts Options
		want error
		msg  string
	}{
		{desc: "edge without providers", node: edgeNode(), want: ErrNoJWTProvider},
		{desc: "sidecar without providers", node: sidecarNode("pets"), want: ErrNoJWTProvider},
		{desc: "sidecar without app port", node: Node{ID: resource.NodeID{Kind: resource.KindSidecar, Service: "pets", Instance: "x"}}, opts: testOpts, want: ErrNodeMetadata},
		{desc: "bad jwks uri", node: edgeNode(), opts: Options{JWTProviders: []JWTProvider{{Name: "p", Issuer: "i", JWKSURI: "ftp://x"}}}, msg: "bad jwks uri"},
		{desc: "provider without keys", node: edgeNode(), opts: Options{JWTProviders: []JWTProvider{{Name: "p", Issuer: "i"}}}, msg: "jwks uri or local jwks is required"},
		{desc: "bad edge local address", node: edgeNode(), opts: Options{JWTProviders: testOpts.JWTProviders, EdgeLocalAddress: "nope"}, msg: "edge local address"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := Translate(def, testInstances, tc.node, tc.opts)
			if err == nil {
				t.Fatal("want an error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.msg)
			}
		})
	}
	// A table of public routes needs no provider on a sidecar.
	pub := load(t, "routes: [{name: a, match: {prefix: /}, auth: {public: true}, targets: [{service: pets}]}]")
	if _, err := Translate(pub, testInstances, sidecarNode("pets"), Options{}); err != nil {
		t.Fatalf("public-only sidecar: %v", err)
	}
}

func TestConsistentCatches(t *testing.T) {
	tests := []struct {
		desc   string
		mutate func(*Resources)
		want   string
	}{
		{desc: "missing route configuration", mutate: func(r *Resources) { r.Routes = nil }, want: `route configuration "edge-http" does not exist`},
		{desc: "missing load assignment", mutate: func(r *Resources) { r.Endpoints = r.Endpoints[1:] }, want: "load assignment"},
		{desc: "missing cluster", mutate: func(r *Resources) { r.Clusters = r.Clusters[1:] }, want: "does not exist"},
		{desc: "duplicate cluster", mutate: func(r *Resources) { r.Clusters = append(r.Clusters, r.Clusters[0]) }, want: "duplicate cluster"},
		{desc: "invalid proto", mutate: func(r *Resources) { r.Clusters[0].ConnectTimeout.Seconds = -1 }, want: "ConnectTimeout"},
		{desc: "invalid typed config", mutate: func(r *Resources) {
			rt := r.Routes[0].VirtualHosts[0].Routes[0]
			rt.TypedPerFilterConfig[resource.FilterFault] = resource.MustAny(&core.HealthCheck{})
		}, want: "Timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			res, err := Translate(routes.Default(), testInstances, edgeNode(), testOpts)
			if err != nil {
				t.Fatal(err)
			}
			if err := Consistent(res); err != nil {
				t.Fatalf("before mutation: %v", err)
			}
			tc.mutate(res)
			err = Consistent(res)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Consistent = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestNodeFromProto(t *testing.T) {
	n, err := NodeFromProto(&core.Node{Id: "sidecar~pets~pets-1", Metadata: resource.NodeMeta{AppPort: 9000}.Struct()})
	if err != nil || n.Meta.Service != "pets" || n.ID.Kind != resource.KindSidecar || n.Meta.AppPort != 9000 {
		t.Fatalf("sidecar: %+v %v", n, err)
	}
	n, err = NodeFromProto(&core.Node{Id: "any-grpc-client", Metadata: resource.NodeMeta{Proxyless: true}.Struct()})
	if err != nil || n.ID.Kind != resource.KindGRPC {
		t.Fatalf("proxyless: %+v %v", n, err)
	}
	if _, err := NodeFromProto(&core.Node{Id: "nope"}); !errors.Is(err, resource.ErrBadNodeID) {
		t.Fatalf("bad id: %v", err)
	}
}
