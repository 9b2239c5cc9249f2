package edge

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// pathTable has prefix, exact, regex and rewritten routes, all public so
// that routing alone decides where a request goes.
const pathTable = `
routes:
  - name: exact
    match: {path: /exact}
    auth: {public: true}
    targets: [{service: pets}]
  - name: regex
    match: {regex: "^/re/[0-9]+$"}
    auth: {public: true}
    targets: [{service: pets}]
  - name: animals
    match: {prefix: /animals}
    auth: {public: true}
    targets: [{service: pets}]
    prefix_rewrite: /pets
  - name: pets
    match: {prefix: /pets}
    auth: {public: true}
    targets: [{service: pets}]
`

// FuzzEdgePathRouting sends arbitrary request targets through the edge's
// handlers (front and data plane, built from the translator's output of
// pathTable) to a real backend: the edge never panics or answers 500, a
// request reaches the backend only on a matching route, and a rewritten
// route's backend path is exactly the prefix rewrite of the request path.
func FuzzEdgePathRouting(f *testing.F) {
	for _, s := range []string{
		"/pets", "/pets/1", "/animals/1", "/animals", "/animalsx", "/exact", "/exact/", "/re/12", "/re/1a",
		"/pets/%2e%2e/admin", "/animals/../pets", "//pets", "/pets?x=1#f", "*", "http://evil.test/pets", "/%zz", "/pets/%00",
	} {
		f.Add(s)
	}
	cfg := testConfig(f)
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	s, err := build(cfg, telemetry.NewTest(io.Discard))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(s.dp.Close)
	var mu sync.Mutex
	var got string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.URL.Path
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	f.Cleanup(backend.Close)
	tbl, err := routes.Load([]byte(pathTable), routes.ValidateOptions{})
	if err != nil {
		f.Fatal(err)
	}
	tr, err := translate.Translate(tbl, []translate.Instance{instance(f, "pets", "pets-1", backend)},
		translate.Node{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "fuzz"}},
		translate.Options{JWTProviders: []translate.JWTProvider{{Name: "petmesh", Issuer: testIssuer, Audiences: []string{"petmesh"},
			JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json"}}})
	if err != nil {
		f.Fatal(err)
	}
	snap := &client.Snapshot{Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
	for _, x := range tr.Listeners {
		snap.Listeners[x.Name] = x
	}
	for _, x := range tr.Routes {
		snap.Routes[x.Name] = x
	}
	for _, x := range tr.Clusters {
		snap.Clusters[x.Name] = x
	}
	for _, x := range tr.Endpoints {
		snap.Endpoints[x.ClusterName] = x
	}
	if err := s.apply(context.Background(), snap); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, target string) {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: edge.test\r\n\r\n")))
		if err != nil {
			return // net/http refuses it before any handler
		}
		req.RemoteAddr = "192.0.2.1:1234"
		mu.Lock()
		got = ""
		mu.Unlock()
		rec := httptest.NewRecorder()
		s.front.ServeHTTP(rec, req)
		mu.Lock()
		backendPath := got
		mu.Unlock()
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("%q: 500 %s", target, rec.Body)
		}
		if rec.Code >= 400 {
			var e struct {
				Error struct{ Code string }
			}
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code == "" {
				t.Fatalf("%q: %d without the JSON error: %q", target, rec.Code, rec.Body)
			}
		}
		p := req.URL.Path
		matches := p == "/exact" || strings.HasPrefix(p, "/animals") || strings.HasPrefix(p, "/pets") || isRe(p)
		if backendPath != "" && !matches {
			t.Fatalf("%q (path %q) reached the backend as %q though no route matches", target, p, backendPath)
		}
		if backendPath != "" && strings.HasPrefix(p, "/animals") {
			if want := "/pets" + strings.TrimPrefix(p, "/animals"); backendPath != want {
				t.Fatalf("%q: rewritten to %q, want %q", target, backendPath, want)
			}
		}
		if !matches && rec.Code != http.StatusNotFound {
			t.Fatalf("%q (path %q): %d, want 404", target, p, rec.Code)
		}
	})
}

func isRe(p string) bool {
	d, ok := strings.CutPrefix(p, "/re/")
	if !ok || d == "" {
		return false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
