package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/controlplane/api"
	"github.com/petmesh/petmesh/controlplane/api/apitest"
	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/httpx"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

var updateAPIGolden = flag.Bool("update", false, "rewrite golden files")

const edgeID = "edge~e1"

// apiEnv is the API over real parts: a file route store, the built-in
// registry, the xDS server (serving ADS on a loopback port) and a real
// ADS client as the edge, behind an httptest server on 127.0.0.1:0 with
// tokens from a real issuer.
type apiEnv struct {
	url                   string
	store                 *store.FileStore
	reg                   *registry.Memory
	xds                   *xds.Server
	edge                  *client.Client
	admin, viewer, nobody string

	mu         sync.Mutex
	rdsApplied []string // route configurations the edge applied, in order (changes only)
}

// observe records the edge's route configurations (their deterministic
// encoding) each time it applies a configuration that changes them.
func (e *apiEnv) observe(t *testing.T, s *client.Snapshot) {
	var b []byte
	for _, name := range slices.Sorted(maps.Keys(s.Routes)) {
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.Routes[name])
		if err != nil {
			t.Error(err)
			return
		}
		b = append(append(b, name...), raw...)
	}
	sum := sha256.Sum256(b)
	v := hex.EncodeToString(sum[:8])
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.rdsApplied) == 0 || e.rdsApplied[len(e.rdsApplied)-1] != v {
		e.rdsApplied = append(e.rdsApplied, v)
	}
}

func startAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	env := apitest.Start(t)
	e := &apiEnv{url: env.URL, store: env.Store, reg: env.Registry, xds: env.XDS,
		admin: env.Admin, viewer: env.Viewer, nobody: env.Nobody}
	var err error
	e.edge, err = client.New(client.Config{
		Server: env.XDSAddr,
		Node:   &core.Node{Id: edgeID, Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()},
		Apply: func(_ context.Context, s *client.Snapshot) error {
			e.observe(t, s)
			return nil
		},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		BackoffMin:  20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	env.Go(func(ctx context.Context) { _ = e.edge.Run(ctx) })
	e.waitEdgeAt(t, 1)
	return e
}

// waitEdgeAt waits until the edge has ACKed every type of route version
// want and holds the endpoints of every EDS cluster.
func (e *apiEnv) waitEdgeAt(t *testing.T, want int64) {
	t.Helper()
	tu.Eventually(t, 15*time.Second, func() error {
		p, ok := e.xds.Proxy(edgeID)
		if !ok || !p.Synced || p.RouteVersion != want || len(p.Types) != 4 {
			return fmt.Errorf("edge status %+v, want synced at route version %d", p, want)
		}
		vs := e.edge.Versions()
		for _, ts := range p.Types {
			if vs[ts.TypeURL] != ts.Latest {
				return fmt.Errorf("edge holds %s %q, latest %q", ts.Type, vs[ts.TypeURL], ts.Latest)
			}
		}
		s := e.edge.Current()
		for name, cl := range s.Clusters {
			if cl.GetType() != clusterv3.Cluster_EDS {
				continue
			}
			svc := cl.GetEdsClusterConfig().GetServiceName()
			if svc == "" {
				svc = name
			}
			if _, ok := s.Endpoints[svc]; !ok {
				return fmt.Errorf("no load assignment yet for EDS cluster %s", name)
			}
		}
		return nil
	})
}

func (e *apiEnv) rds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.rdsApplied)
}

// do sends a request; body is JSON unless hdr sets a Content-Type.
func (e *apiEnv) do(t *testing.T, method, path, token string, hdr map[string]string, body any) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// errorBody is the API's error shape.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
	Errors []routes.FieldError `json:"errors"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, b)
	}
	return v
}

// wantError checks a JSON error answer.
func wantError(t *testing.T, code int, b []byte, wantCode int, wantErr, wantField string) errorBody {
	t.Helper()
	if code != wantCode {
		t.Fatalf("status %d, want %d: %s", code, wantCode, b)
	}
	eb := decode[errorBody](t, b)
	if eb.Error.Code != wantErr || eb.Error.Field != wantField || eb.Error.Message == "" {
		t.Fatalf("error %+v, want code %q field %q with a message", eb.Error, wantErr, wantField)
	}
	return eb
}

func (e *apiEnv) current(t *testing.T) api.RoutesResponse {
	t.Helper()
	code, hdr, b := e.do(t, http.MethodGet, "/v1/routes", e.viewer, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/routes: %d %s", code, b)
	}
	r := decode[api.RoutesResponse](t, b)
	if got, want := hdr.Get("ETag"), fmt.Sprintf("%q", fmt.Sprint(r.Number)); got != want {
		t.Fatalf("ETag %s, want %s", got, want)
	}
	return r
}

func (e *apiEnv) historyLen(t *testing.T) int {
	t.Helper()
	code, _, b := e.do(t, http.MethodGet, "/v1/versions", e.viewer, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/versions: %d %s", code, b)
	}
	return len(decode[api.VersionsResponse](t, b).Versions)
}

// canaryTable is the default table with pets split 80/20 between v1 and v2.
func canaryTable(t *testing.T) *routes.Table {
	t.Helper()
	tb, err := routes.Default().SetWeights("pets", map[string]int{"v1": 80, "v2": 20})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// invalidYAML parses but breaks seven rules in seven places.
const invalidYAML = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets, subset: v1, weight: 80}, {service: pets, subset: v2, weight: 10}]
  - name: pets
    match: {prefix: /x}
    targets: [{service: pets}]
  - name: re
    match: {regex: "(unclosed"}
    targets: [{service: pets}]
    timeout: -1s
    max_body_bytes: -1
services:
  pets: {lb: maglev, panic_threshold: 150}
`

var invalidPaths = []string{
	"routes[0].targets[1].weight",
	"routes[1].name",
	"routes[2].match.regex",
	"routes[2].timeout",
	"routes[2].max_body_bytes",
	"services.pets.lb",
	"services.pets.panic_threshold",
}

func TestAPIStatusCodesAndRoles(t *testing.T) {
	e := startAPIEnv(t)
	putBody := map[string]any{"table": routes.Default(), "message": "same"}
	tests := []struct {
		desc, method, path string
		body               any
		hdr                map[string]string
		write              bool // needs admin
		ok                 int
	}{
		{desc: "get routes", method: "GET", path: "/v1/routes", ok: 200},
		{desc: "validate", method: "POST", path: "/v1/routes:validate", body: putBody, ok: 200},
		{desc: "versions", method: "GET", path: "/v1/versions", ok: 200},
		{desc: "version", method: "GET", path: "/v1/versions/1", ok: 200},
		{desc: "diff", method: "GET", path: "/v1/versions/1/diff/1", ok: 200},
		{desc: "proxies", method: "GET", path: "/v1/proxies", ok: 200},
		{desc: "proxy", method: "GET", path: "/v1/proxies/" + edgeID, ok: 200},
		{desc: "services", method: "GET", path: "/v1/services", ok: 200},
		{desc: "put routes", method: "PUT", path: "/v1/routes", body: putBody, hdr: map[string]string{"If-Match": "1"}, write: true, ok: 200},
		{desc: "weights", method: "PUT", path: "/v1/routes/pets/weights", body: map[string]any{"weights": map[string]int{"v1": 100}}, write: true, ok: 200},
		{desc: "rollback", method: "POST", path: "/v1/rollback", body: map[string]any{"version": 1}, write: true, ok: 200},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			code, hdr, b := e.do(t, tc.method, tc.path, "", tc.hdr, tc.body)
			wantError(t, code, b, http.StatusUnauthorized, httpx.CodeUnauthenticated, "Authorization")
			if !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("WWW-Authenticate %q", hdr.Get("WWW-Authenticate"))
			}
			code, _, b = e.do(t, tc.method, tc.path, "not-a-jwt", tc.hdr, tc.body)
			wantError(t, code, b, http.StatusUnauthorized, httpx.CodeUnauthenticated, "Authorization")
			code, _, b = e.do(t, tc.method, tc.path, e.nobody, tc.hdr, tc.body)
			eb := wantError(t, code, b, http.StatusForbidden, httpx.CodePermissionDenied, "")
			if !strings.Contains(eb.Error.Message, "admin") {
				t.Fatalf("403 does not name the role: %s", eb.Error.Message)
			}
			if tc.write {
				code, _, b = e.do(t, tc.method, tc.path, e.viewer, tc.hdr, tc.body)
				wantError(t, code, b, http.StatusForbidden, httpx.CodePermissionDenied, "")
				code, _, b = e.do(t, tc.method, tc.path, e.admin, tc.hdr, tc.body)
			} else {
				code, _, b = e.do(t, tc.method, tc.path, e.viewer, tc.hdr, tc.body)
			}
			if code != tc.ok {
				t.Fatalf("status %d, want %d: %s", code, tc.ok, b)
			}
		})
	}
	t.Run("unauthenticated endpoints", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
			if code, _, b := e.do(t, "GET", p, "", nil, nil); code != http.StatusOK {
				t.Errorf("GET %s: %d %s", p, code, b)
			}
		}
		code, _, b := e.do(t, "GET", "/openapi.json", "", nil, nil)
		doc := decode[struct {
			Paths map[string]any `json:"paths"`
		}](t, b)
		for _, p := range []string{"/v1/routes", "/v1/routes:validate", "/v1/routes/{name}/weights", "/v1/versions", "/v1/versions/{n}",
			"/v1/versions/{a}/diff/{b}", "/v1/rollback", "/v1/proxies", "/v1/services"} {
			if _, ok := doc.Paths[p]; !ok || code != 200 {
				t.Errorf("openapi.json lacks %s", p)
			}
		}
		code, _, b = e.do(t, "GET", "/v1/nope", e.admin, nil, nil)
		wantError(t, code, b, http.StatusNotFound, httpx.CodeNotFound, "")
	})
}

func TestAPIGetAndPutRoutes(t *testing.T) {
	e := startAPIEnv(t)
	cur := e.current(t)
	if cur.Number != 1 || cur.Author != "seed" || cur.Hash == "" {
		t.Fatalf("current %+v", cur.Version)
	}
	if !sameTable(t, cur.Table, routes.Default()) {
		t.Fatalf("table differs from the seeded one:\n%+v", cur.Table)
	}
	rds0 := e.rds()

	t.Run("428 without If-Match", func(t *testing.T) {
		code, _, b := e.do(t, "PUT", "/v1/routes", e.admin, nil, map[string]any{"table": canaryTable(t)})
		wantError(t, code, b, http.StatusPreconditionRequired, httpx.CodePreconditionNeeded, "If-Match")
	})
	t.Run("400 for an If-Match that is not a version", func(t *testing.T) {
		code, _, b := e.do(t, "PUT", "/v1/routes", e.admin, map[string]string{"If-Match": "abc"}, map[string]any{"table": canaryTable(t)})
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "If-Match")
	})
	t.Run("409 for a stale If-Match, naming the current version", func(t *testing.T) {
		code, _, b := e.do(t, "PUT", "/v1/routes", e.admin, map[string]string{"If-Match": `"0"`}, map[string]any{"table": canaryTable(t)})
		eb := wantError(t, code, b, http.StatusConflict, httpx.CodeConflict, "If-Match")
		if !strings.Contains(eb.Error.Message, "current version is 1") {
			t.Fatalf("message %q", eb.Error.Message)
		}
	})
	t.Run("400 with every bad field's path; nothing stored or pushed", func(t *testing.T) {
		for _, c := range []struct {
			desc string
			hdr  map[string]string
			body any
		}{
			{"json envelope", map[string]string{"If-Match": "1"}, map[string]any{"table": json.RawMessage(mustJSON(t, invalidYAML)), "message": "bad"}},
			{"yaml body", map[string]string{"If-Match": "1", "Content-Type": "application/yaml"}, invalidYAML},
		} {
			code, _, b := e.do(t, "PUT", "/v1/routes?message=bad", e.admin, c.hdr, c.body)
			eb := wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, invalidPaths[0])
			var got []string
			for _, fe := range eb.Errors {
				if fe.Message == "" {
					t.Errorf("%s: %s without a message", c.desc, fe.Path)
				}
				got = append(got, fe.Path)
			}
			if !slices.Equal(got, invalidPaths) {
				t.Fatalf("%s: error paths %v, want %v", c.desc, got, invalidPaths)
			}
		}
		if n := e.current(t).Number; n != 1 {
			t.Fatalf("version %d after rejected tables, want 1", n)
		}
		if n := e.historyLen(t); n != 1 {
			t.Fatalf("history has %d versions, want 1", n)
		}
	})
	t.Run("other bad bodies", func(t *testing.T) {
		cases := []struct {
			desc   string
			hdr    map[string]string
			body   any
			status int
			code   string
			field  string
		}{
			{"no table", nil, map[string]any{"message": "x"}, 400, httpx.CodeInvalidArgument, "table"},
			{"unknown envelope field", nil, map[string]any{"table": canaryTable(t), "tabel": 1}, 400, httpx.CodeInvalidArgument, "tabel"},
			{"message too long", nil, map[string]any{"table": canaryTable(t), "message": strings.Repeat("m", 1001)}, 400, httpx.CodeInvalidArgument, "message"},
			{"malformed JSON", nil, `{"table": `, 400, httpx.CodeInvalidArgument, "body"},
			{"unsupported content type", map[string]string{"Content-Type": "text/plain"}, "routes: []", 415, httpx.CodeUnsupportedMedia, "Content-Type"},
			{"unknown table field (YAML)", map[string]string{"Content-Type": "application/yaml"}, "routes: []\nroutez: []\n", 400, httpx.CodeInvalidArgument, "routez"},
		}
		for _, c := range cases {
			hdr := map[string]string{"If-Match": "1"}
			for k, v := range c.hdr {
				hdr[k] = v
			}
			code, _, b := e.do(t, "PUT", "/v1/routes", e.admin, hdr, c.body)
			if code != c.status {
				t.Fatalf("%s: status %d, want %d: %s", c.desc, code, c.status, b)
			}
			eb := decode[errorBody](t, b)
			if eb.Error.Code != c.code || !strings.Contains(eb.Error.Field, c.field) {
				t.Fatalf("%s: error %+v, want code %s field %s", c.desc, eb.Error, c.code, c.field)
			}
		}
		if n := e.current(t).Number; n != 1 {
			t.Fatalf("version %d after rejected bodies, want 1", n)
		}
	})
	t.Run("200: a new version, ACKed by the edge; the rejected ones were never pushed", func(t *testing.T) {
		code, hdr, b := e.do(t, "PUT", "/v1/routes", e.admin, map[string]string{"If-Match": `"1"`}, map[string]any{"table": canaryTable(t), "message": "canary 20%"})
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, b)
		}
		v := decode[store.Version](t, b)
		if v.Number != 2 || v.Author != "alice" || v.Message != "canary 20%" || hdr.Get("ETag") != `"2"` {
			t.Fatalf("version %+v, ETag %s", v, hdr.Get("ETag"))
		}
		e.waitEdgeAt(t, 2)
		if _, ok := e.edge.Current().Clusters["pets~v2"]; !ok {
			t.Fatal("edge has no pets~v2 cluster")
		}
		// One change of the routes applied since the start: the rejected
		// tables produced none.
		if got := e.rds(); len(got) != len(rds0)+1 || !slices.Equal(got[:len(rds0)], rds0) {
			t.Fatalf("edge route configurations %v, before %v: want exactly one new", got, rds0)
		}
	})
	t.Run("200 with a YAML body and ?message=", func(t *testing.T) {
		y, err := yaml.Marshal(mustMap(t, routes.Default()))
		if err != nil {
			t.Fatal(err)
		}
		code, _, b := e.do(t, "PUT", "/v1/routes?message=back+to+default", e.admin, map[string]string{"If-Match": "2", "Content-Type": "application/yaml"}, y)
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, b)
		}
		if v := decode[store.Version](t, b); v.Number != 3 || v.Message != "back to default" {
			t.Fatalf("version %+v", v)
		}
		if got := e.current(t); !sameTable(t, got.Table, routes.Default()) {
			t.Fatal("stored table differs from the YAML sent")
		}
	})
}

// sameTable compares two tables by their canonical JSON.
func sameTable(t *testing.T, a, b *routes.Table) bool {
	t.Helper()
	ja, err := json.Marshal(a.Canonical())
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b.Canonical())
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

func mustJSON(t *testing.T, yamlText string) []byte {
	t.Helper()
	var v any
	if err := yaml.Unmarshal([]byte(yamlText), &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustMap(t *testing.T, tb *routes.Table) map[string]any {
	t.Helper()
	b, err := json.Marshal(tb)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAPIWeights(t *testing.T) {
	e := startAPIEnv(t)
	t.Run("canary weights: a new version with a default message", func(t *testing.T) {
		code, _, b := e.do(t, "PUT", "/v1/routes/pets/weights", e.admin, nil, map[string]any{"weights": map[string]int{"v1": 90, "v2": 10}})
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, b)
		}
		v := decode[store.Version](t, b)
		if v.Number != 2 || v.Message != "set weights of pets: v1=90 v2=10" || v.Author != "alice" {
			t.Fatalf("version %+v", v)
		}
		var got []string
		for _, tg := range e.current(t).Table.Route("pets").Targets {
			got = append(got, fmt.Sprintf("%s/%s=%d", tg.Service, tg.Subset, tg.Weight))
		}
		if want := []string{"pets/v1=90", "pets/v2=10"}; !slices.Equal(got, want) {
			t.Fatalf("pets targets %v, want %v", got, want)
		}
		e.waitEdgeAt(t, 2)
		for _, c := range []string{"pets~v1", "pets~v2"} {
			if _, ok := e.edge.Current().Clusters[c]; !ok {
				t.Fatalf("edge lacks cluster %s", c)
			}
		}
	})
	t.Run("with If-Match and a message", func(t *testing.T) {
		code, _, b := e.do(t, "PUT", "/v1/routes/pets/weights", e.admin, map[string]string{"If-Match": "2"}, map[string]any{"weights": map[string]int{"v1": 50, "v2": 50}, "message": "half"})
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, b)
		}
		if v := decode[store.Version](t, b); v.Number != 3 || v.Message != "half" {
			t.Fatalf("version %+v", v)
		}
	})
	cases := []struct {
		desc, route string
		hdr         map[string]string
		body        any
		status      int
		code, field string
	}{
		{"stale If-Match", "pets", map[string]string{"If-Match": "2"}, map[string]any{"weights": map[string]int{"v1": 100}}, 409, httpx.CodeConflict, "If-Match"},
		{"unknown route", "nope", nil, map[string]any{"weights": map[string]int{"v1": 100}}, 404, httpx.CodeNotFound, ""},
		{"weights not summing to 100", "pets", nil, map[string]any{"weights": map[string]int{"v1": 70, "v2": 20}}, 400, httpx.CodeInvalidArgument, "routes[2].targets[1].weight"},
		{"no weights", "pets", nil, map[string]any{"weights": map[string]int{}}, 400, httpx.CodeInvalidArgument, "weights"},
		{"weight out of range", "pets", nil, map[string]any{"weights": map[string]int{"v1": 110, "v2": -10}}, 400, httpx.CodeInvalidArgument, "routes[2].targets[0].weight"},
		{"key naming no subset", "pets", nil, map[string]any{"weights": map[string]int{"~": 100}}, 400, httpx.CodeInvalidArgument, "routes[2].targets[0].service"},
		{"wrong type", "pets", nil, map[string]any{"weights": map[string]string{"v1": "all"}}, 400, httpx.CodeInvalidArgument, "weights"},
		{"unknown field", "pets", nil, map[string]any{"weights": map[string]int{"v1": 100}, "wieghts": 1}, 400, httpx.CodeInvalidArgument, "wieghts"},
	}
	for _, c := range cases {
		t.Run(c.desc, func(t *testing.T) {
			code, _, b := e.do(t, "PUT", "/v1/routes/"+c.route+"/weights", e.admin, c.hdr, c.body)
			if code != c.status {
				t.Fatalf("status %d, want %d: %s", code, c.status, b)
			}
			eb := decode[errorBody](t, b)
			if eb.Error.Code != c.code || !strings.Contains(eb.Error.Field, c.field) || eb.Error.Message == "" {
				t.Fatalf("error %+v, want code %s field %q", eb.Error, c.code, c.field)
			}
			if n := e.current(t).Number; n != 3 {
				t.Fatalf("version %d after a rejected change, want 3", n)
			}
		})
	}
}

// renderSnapshot renders what a proxy holds as YAML (protojson with proto
// field names, re-encoded so that the output is stable), by type and
// name.
func renderSnapshot(t *testing.T, s *client.Snapshot) []byte {
	t.Helper()
	conv := func(m proto.Message) any {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	doc := map[string][]any{}
	add := func(kind string, names []string, get func(string) proto.Message) {
		sort.Strings(names)
		for _, n := range names {
			doc[kind] = append(doc[kind], conv(get(n)))
		}
	}
	add("listeners", keys(s.Listeners), func(n string) proto.Message { return s.Listeners[n] })
	add("routes", keys(s.Routes), func(n string) proto.Message { return s.Routes[n] })
	add("clusters", keys(s.Clusters), func(n string) proto.Message { return s.Clusters[n] })
	add("endpoints", keys(s.Endpoints), func(n string) proto.Message { return s.Endpoints[n] })
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *updateAPIGolden {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controlplane/api -run Rollback -update)", err)
	}
	if !bytes.Equal(want, got) {
		t.Fatalf("%s differs; run go test ./controlplane/api -run Rollback -update and review the diff.\n--- got\n%s", path, got)
	}
}

func TestAPIVersionsDiffRollback(t *testing.T) {
	e := startAPIEnv(t)
	v1 := renderSnapshot(t, e.edge.Current())
	golden(t, filepath.Join("testdata", "edge-v1.golden.yaml"), v1)

	code, _, b := e.do(t, "PUT", "/v1/routes", e.admin, map[string]string{"If-Match": "1"}, map[string]any{"table": canaryTable(t), "message": "canary"})
	if code != http.StatusOK {
		t.Fatalf("put: %d %s", code, b)
	}
	e.waitEdgeAt(t, 2)
	if bytes.Equal(renderSnapshot(t, e.edge.Current()), v1) {
		t.Fatal("the edge's resources did not change with version 2")
	}

	t.Run("history", func(t *testing.T) {
		code, _, b := e.do(t, "GET", "/v1/versions", e.viewer, nil, nil)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		var got []string
		for _, v := range decode[api.VersionsResponse](t, b).Versions {
			got = append(got, fmt.Sprintf("%d %s %s", v.Number, v.Author, v.Message))
		}
		sort.Strings(got)
		if want := []string{"1 seed initial table", "2 alice canary"}; !slices.Equal(got, want) {
			t.Fatalf("history %v, want %v", got, want)
		}
	})
	t.Run("one version", func(t *testing.T) {
		code, _, b := e.do(t, "GET", "/v1/versions/1", e.viewer, nil, nil)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		if en := decode[store.Entry](t, b); en.Number != 1 || !sameTable(t, en.Table, routes.Default()) {
			t.Fatalf("version 1: %+v", en.Version)
		}
		code, _, b = e.do(t, "GET", "/v1/versions/99", e.viewer, nil, nil)
		wantError(t, code, b, http.StatusNotFound, httpx.CodeNotFound, "")
		for _, bad := range []string{"0", "abc", "-1"} {
			code, _, b = e.do(t, "GET", "/v1/versions/"+bad, e.viewer, nil, nil)
			wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "n")
		}
	})
	t.Run("diff", func(t *testing.T) {
		code, _, b := e.do(t, "GET", "/v1/versions/1/diff/2", e.viewer, nil, nil)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		d := decode[store.Diff](t, b)
		if d.From != 1 || d.To != 2 || len(d.Routes) != 1 || d.Routes[0] != (store.Change{Name: "pets", Change: store.Changed}) || len(d.Services) != 0 {
			t.Fatalf("diff %+v", d)
		}
		for _, want := range []string{"+", "subset: v2", "weight: 20"} {
			if !strings.Contains(d.Unified, want) {
				t.Fatalf("unified diff lacks %q:\n%s", want, d.Unified)
			}
		}
		code, _, b = e.do(t, "GET", "/v1/versions/2/diff/2", e.viewer, nil, nil)
		if d := decode[store.Diff](t, b); code != 200 || d.Unified != "" || len(d.Routes) != 0 {
			t.Fatalf("diff of a version with itself: %d %+v", code, d)
		}
		code, _, b = e.do(t, "GET", "/v1/versions/1/diff/9", e.viewer, nil, nil)
		wantError(t, code, b, http.StatusNotFound, httpx.CodeNotFound, "")
		code, _, b = e.do(t, "GET", "/v1/versions/x/diff/2", e.viewer, nil, nil)
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "a")
		code, _, b = e.do(t, "GET", "/v1/versions/1/diff/0", e.viewer, nil, nil)
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "b")
	})
	t.Run("rollback errors change nothing", func(t *testing.T) {
		code, _, b := e.do(t, "POST", "/v1/rollback", e.admin, nil, map[string]any{"version": 99})
		wantError(t, code, b, http.StatusNotFound, httpx.CodeNotFound, "version")
		code, _, b = e.do(t, "POST", "/v1/rollback", e.admin, nil, map[string]any{"version": 0})
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "version")
		code, _, b = e.do(t, "POST", "/v1/rollback", e.admin, map[string]string{"If-Match": "1"}, map[string]any{"version": 1})
		wantError(t, code, b, http.StatusConflict, httpx.CodeConflict, "If-Match")
		code, _, b = e.do(t, "POST", "/v1/rollback", e.admin, nil, map[string]any{"version": "one"})
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "version")
		if n := e.current(t).Number; n != 2 {
			t.Fatalf("version %d, want 2", n)
		}
	})
	t.Run("rollback restores the resources exactly", func(t *testing.T) {
		code, hdr, b := e.do(t, "POST", "/v1/rollback", e.admin, map[string]string{"If-Match": "2"}, map[string]any{"version": 1})
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		v := decode[store.Version](t, b)
		if v.Number != 3 || v.Author != "alice" || !strings.Contains(v.Message, "1") || hdr.Get("ETag") != `"3"` {
			t.Fatalf("rollback version %+v", v)
		}
		cur := e.current(t)
		if !sameTable(t, cur.Table, routes.Default()) {
			t.Fatal("version 3's table differs from version 1's")
		}
		code, _, b = e.do(t, "GET", "/v1/versions/1", e.viewer, nil, nil)
		if en := decode[store.Entry](t, b); code != 200 || en.Hash != cur.Hash {
			t.Fatalf("hash of version 3 %s, of version 1 %s", cur.Hash, en.Hash)
		}
		e.waitEdgeAt(t, 3)
		got := renderSnapshot(t, e.edge.Current())
		if !bytes.Equal(got, v1) {
			t.Fatalf("after rollback the edge holds:\n%s\nwant version 1's:\n%s", got, v1)
		}
		golden(t, filepath.Join("testdata", "edge-v1.golden.yaml"), got)
	})
}

func TestAPIValidateDryRun(t *testing.T) {
	e := startAPIEnv(t)
	rds0 := e.rds()
	type validateResp struct {
		api.ValidateResponse
	}
	t.Run("diff, resource changes and the cluster a sample request reaches", func(t *testing.T) {
		body := map[string]any{"table": canaryTable(t), "sample": api.SampleRequest{Method: "GET", Path: "/pets/42"}}
		code, _, b := e.do(t, "POST", "/v1/routes:validate", e.viewer, nil, body)
		if code != http.StatusOK {
			t.Fatalf("%d %s", code, b)
		}
		r := decode[validateResp](t, b)
		if !r.Valid || r.BaseVersion != 1 || r.Diff.From != 1 || r.Diff.To != 2 {
			t.Fatalf("response %+v", r.ValidateResponse)
		}
		if len(r.Diff.Routes) != 1 || r.Diff.Routes[0] != (store.Change{Name: "pets", Change: store.Changed}) {
			t.Fatalf("table diff %+v", r.Diff.Routes)
		}
		changes := map[string][]string{} // node → type/name:change
		for _, nd := range r.Resources {
			if nd.Error != "" {
				t.Fatalf("node %s: %s", nd.Node, nd.Error)
			}
			for _, c := range nd.Changes {
				changes[nd.Kind] = append(changes[nd.Kind], c.Type+"/"+c.Name+":"+c.Change)
				if c.Change == store.Changed && !strings.Contains(c.Diff, "weight") {
					t.Errorf("%s %s/%s: diff without the weights:\n%s", nd.Node, c.Type, c.Name, c.Diff)
				}
			}
		}
		for _, want := range []string{"cluster/pets~v1:added", "cluster/pets~v2:added", "endpoint/pets~v1:added", "endpoint/pets~v2:added"} {
			if !slices.Contains(changes["edge"], want) {
				t.Errorf("edge changes %v lack %s", changes["edge"], want)
			}
		}
		if !slices.ContainsFunc(changes["edge"], func(s string) bool { return strings.HasPrefix(s, "route/") && strings.HasSuffix(s, ":changed") }) {
			t.Errorf("edge changes %v: no route changed", changes["edge"])
		}
		want := &api.SampleResult{Matched: true, Route: "pets", Auth: "authenticated", Clusters: []api.WeightedTarget{{Cluster: "pets~v1", Weight: 80}, {Cluster: "pets~v2", Weight: 20}}}
		if fmt.Sprint(r.Sample) != fmt.Sprint(want) {
			t.Fatalf("sample %+v, want %+v", r.Sample, want)
		}
	})
	t.Run("samples", func(t *testing.T) {
		cases := []struct {
			sample api.SampleRequest
			want   api.SampleResult
		}{
			{api.SampleRequest{Path: "/nowhere"}, api.SampleResult{}},
			{api.SampleRequest{Method: "POST", Path: "/auth/token"}, api.SampleResult{Matched: true, Route: "auth", Auth: "public", Clusters: []api.WeightedTarget{{Cluster: resource.ClusterEdgeLocal, Weight: 100}}}},
			{api.SampleRequest{Path: "/stats/requests"}, api.SampleResult{Matched: true, Route: "stats", Auth: "roles: admin, viewer", Clusters: []api.WeightedTarget{{Cluster: "stats", Weight: 100}}}},
		}
		for _, c := range cases {
			code, _, b := e.do(t, "POST", "/v1/routes:validate", e.viewer, nil, map[string]any{"table": routes.Default(), "sample": c.sample})
			if code != http.StatusOK {
				t.Fatalf("%d %s", code, b)
			}
			r := decode[validateResp](t, b)
			if fmt.Sprint(*r.Sample) != fmt.Sprint(c.want) {
				t.Errorf("sample %+v: %+v, want %+v", c.sample, *r.Sample, c.want)
			}
			if len(r.Diff.Routes) != 0 || r.Diff.Unified != "" {
				t.Errorf("the current table compared with itself: %+v", r.Diff)
			}
			for _, nd := range r.Resources {
				if len(nd.Changes) != 0 {
					t.Errorf("node %s: changes %+v for an unchanged table", nd.Node, nd.Changes)
				}
			}
		}
	})
	t.Run("400s", func(t *testing.T) {
		code, _, b := e.do(t, "POST", "/v1/routes:validate", e.viewer, nil, map[string]any{"table": routes.Default(), "sample": map[string]any{"path": "pets"}})
		wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, "sample.path")
		code, _, b = e.do(t, "POST", "/v1/routes:validate", e.viewer, map[string]string{"Content-Type": "application/yaml"}, invalidYAML)
		eb := wantError(t, code, b, http.StatusBadRequest, httpx.CodeInvalidArgument, invalidPaths[0])
		if len(eb.Errors) != len(invalidPaths) {
			t.Fatalf("errors %+v", eb.Errors)
		}
	})
	t.Run("a dry run stores and pushes nothing", func(t *testing.T) {
		if n := e.historyLen(t); n != 1 {
			t.Fatalf("history has %d versions, want 1", n)
		}
		p, _ := e.xds.Proxy(edgeID)
		if p.RouteVersion != 1 || !slices.Equal(e.rds(), rds0) {
			t.Fatalf("edge at route version %d, route configurations %v (before %v)", p.RouteVersion, e.rds(), rds0)
		}
	})
}

func TestAPIProxiesAndServices(t *testing.T) {
	e := startAPIEnv(t)
	code, _, b := e.do(t, "GET", "/v1/proxies", e.viewer, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, b)
	}
	ps := decode[api.ProxiesResponse](t, b).Proxies
	if len(ps) != 1 || ps[0].ID != edgeID || ps[0].Kind != "edge" || !ps[0].Connected || !ps[0].Synced || ps[0].RouteVersion != 1 || len(ps[0].Types) != 4 {
		t.Fatalf("proxies %+v", ps)
	}
	for _, ts := range ps[0].Types {
		if ts.Latest == "" || ts.Sent != ts.Latest || ts.Acked != ts.Latest || ts.SentAt == nil || ts.AckedAt == nil {
			t.Fatalf("type %+v", ts)
		}
	}
	code, _, b = e.do(t, "GET", "/v1/proxies/"+edgeID, e.viewer, nil, nil)
	if p := decode[xds.ProxyStatus](t, b); code != 200 || p.ID != edgeID || p.ConnectedSince == nil {
		t.Fatalf("proxy: %d %+v", code, p)
	}
	code, _, b = e.do(t, "GET", "/v1/proxies/edge~nope", e.viewer, nil, nil)
	wantError(t, code, b, http.StatusNotFound, httpx.CodeNotFound, "")

	if err := e.reg.SetHealth(t.Context(), "pets-2", registry.HealthCritical, "down"); err != nil {
		t.Fatal(err)
	}
	code, _, b = e.do(t, "GET", "/v1/services", e.viewer, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, b)
	}
	var got []string
	for _, s := range decode[api.ServicesResponse](t, b).Services {
		var ids []string
		for _, in := range s.Instances {
			ids = append(ids, in.ID+"/"+string(in.Health))
		}
		got = append(got, fmt.Sprintf("%s passing=%d %v", s.Name, s.Passing, ids))
	}
	want := []string{"pets passing=1 [pets-1/passing pets-2/critical]", "stats passing=1 [stats-1/passing]"}
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
}
