package dataplane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// compatBackend is a real HTTP server registered as an instance. It
// answers "<id> <path> subject=<x-petmesh-subject>" and counts requests.
type compatBackend struct {
	*httptest.Server
	id   string
	hits atomic.Int64
}

func newCompatBackend(t *testing.T, id string, h http.HandlerFunc) *compatBackend {
	t.Helper()
	b := &compatBackend{id: id}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") == "petmesh-health-check" {
			return
		}
		b.hits.Add(1)
		if h != nil {
			h(w, r)
			return
		}
		fmt.Fprintf(w, "%s %s subject=%s", id, r.URL.Path, r.Header.Get(identity.HeaderSubject))
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *compatBackend) port(t *testing.T) int {
	t.Helper()
	_, p, err := net.SplitHostPort(b.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *compatBackend) instance(t *testing.T, service, version string) translate.Instance {
	return translate.Instance{Service: service, ID: b.id, Address: "127.0.0.1", Port: b.port(t), Version: version, Health: translate.HealthPassing}
}

// compatProxy is a data plane configured from translator output, serving
// one of its listeners.
type compatProxy struct {
	srv *httptest.Server
}

func newCompatProxy(t *testing.T, table string, inst []translate.Instance, node translate.Node, listenerName string, opts dataplane.Options) *compatProxy {
	t.Helper()
	tab, err := routes.Load([]byte(table), routes.ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := translate.Translate(tab, inst, node, compatOpts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	opts.Auth = fakeAuthFactory
	if opts.Rand == nil {
		opts.Rand = seededRand(7)
	}
	dp, err := dataplane.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Apply(context.Background(), toDataplane(tr)); err != nil {
		t.Fatalf("translator output rejected: %v", err)
	}
	srv := httptest.NewServer(dp.Handler(listenerName))
	t.Cleanup(func() { srv.Close(); dp.Close() })
	return &compatProxy{srv: srv}
}

type compatReq struct {
	method, path, id, host string
	hdr                    map[string]string
	body                   string
}

func (p *compatProxy) do(t *testing.T, q compatReq) (int, http.Header, string) {
	t.Helper()
	if q.method == "" {
		q.method = http.MethodGet
	}
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	req, err := http.NewRequest(q.method, p.srv.URL+q.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if q.id != "" {
		req.Header.Set(testIdentityHeader, q.id)
	}
	if q.host != "" {
		req.Host = q.host
	}
	for k, v := range q.hdr {
		req.Header.Set(k, v)
	}
	resp, err := p.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func seededRand(seed uint64) func(uint64) uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed+1))
	return func(n uint64) uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64N(n)
	}
}

// frozenClock is a settable clock (token buckets refill only when told).
type frozenClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *frozenClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *frozenClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// edgeLocal stands in for the edge's own token and JWKS handlers.
func edgeLocal() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /auth/token", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "token for %s subject=%s", r.RemoteAddr[:strings.LastIndexByte(r.RemoteAddr, ':')], r.Header.Get(identity.HeaderSubject))
	})
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"keys":[]}`)
	})
	return mux
}

func TestTranslatedEdgeDefaultTable(t *testing.T) {
	pets1 := newCompatBackend(t, "pets-1", nil)
	pets2 := newCompatBackend(t, "pets-2", nil)
	sync1 := newCompatBackend(t, "sync-1", nil)
	stats1 := newCompatBackend(t, "stats-1", nil)
	inst := []translate.Instance{pets1.instance(t, "pets", "v1"), pets2.instance(t, "pets", "v2"), sync1.instance(t, "sync", "v1"), stats1.instance(t, "stats", "v1")}
	p := newCompatProxy(t, string(routes.DefaultYAML), inst, compatEdgeNode(0), resource.ListenerEdge,
		dataplane.Options{LocalClusters: map[string]http.Handler{resource.ClusterEdgeLocal: edgeLocal()}})

	tests := []struct {
		desc       string
		req        compatReq
		wantStatus int
		wantBody   string
	}{
		{desc: "authenticated route without identity", req: compatReq{path: "/pets/1"}, wantStatus: 401, wantBody: "unauthenticated"},
		{desc: "authenticated route with identity", req: compatReq{path: "/pets/1", id: "alice"}, wantStatus: 200, wantBody: "/pets/1 subject=alice"},
		{desc: "roles route without identity", req: compatReq{path: "/stats/summary"}, wantStatus: 401, wantBody: "unauthenticated"},
		{desc: "roles route with the wrong role", req: compatReq{path: "/stats/summary", id: "bob:guest"}, wantStatus: 403, wantBody: "admin or viewer"},
		{desc: "roles route with no role at all", req: compatReq{path: "/stats/summary", id: "bob"}, wantStatus: 403, wantBody: "permission_denied"},
		{desc: "roles route with one of the roles", req: compatReq{path: "/stats/summary", id: "alice:viewer"}, wantStatus: 200, wantBody: "stats-1 /stats/summary subject=alice"},
		{desc: "admin route as viewer", req: compatReq{path: "/sync/run", id: "alice:viewer"}, wantStatus: 403, wantBody: "requires role admin"},
		{desc: "admin route as admin", req: compatReq{method: "POST", path: "/sync/run", id: "ops:admin,viewer"}, wantStatus: 200, wantBody: "sync-1 /sync/run subject=ops"},
		{desc: "edge-served token endpoint is public", req: compatReq{method: "POST", path: "/auth/token"}, wantStatus: 200, wantBody: "token for 127.0.0.1 subject="},
		{desc: "client identity headers never reach the edge handler", req: compatReq{method: "POST", path: "/auth/token", hdr: map[string]string{"X-Petmesh-Subject": "mallory"}}, wantStatus: 200, wantBody: "subject=\n"},
		{desc: "edge-served jwks", req: compatReq{path: "/.well-known/jwks.json"}, wantStatus: 200, wantBody: `{"keys":[]}`},
		{desc: "no route", req: compatReq{path: "/nowhere", id: "alice"}, wantStatus: 404, wantBody: "no route"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			st, hdr, body := p.do(t, tc.req)
			if st != tc.wantStatus || !strings.Contains(body+"\n", tc.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", st, body, tc.wantStatus, tc.wantBody)
			}
			if st == 401 && hdr.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if pets1.hits.Load()+pets2.hits.Load() != 1 || sync1.hits.Load() != 1 || stats1.hits.Load() != 1 {
		t.Errorf("backend hits pets %d+%d sync %d stats %d, want 1 each (denied requests must not reach a backend)",
			pets1.hits.Load(), pets2.hits.Load(), sync1.hits.Load(), stats1.hits.Load())
	}
}

func TestTranslatedRateLimits(t *testing.T) {
	pets1 := newCompatBackend(t, "pets-1", nil)
	clock := &frozenClock{t: time.Unix(1_700_000_000, 0)}
	p := newCompatProxy(t, compatRateLimit, []translate.Instance{pets1.instance(t, "pets", "v1")}, compatEdgeNode(0), resource.ListenerEdge,
		dataplane.Options{Now: clock.now, LocalClusters: map[string]http.Handler{resource.ClusterEdgeLocal: edgeLocal()}})

	t.Run("per client ip: burst then 429", func(t *testing.T) {
		for i := range 3 { // burst 3
			if st, hdr, _ := p.do(t, compatReq{method: "POST", path: "/auth/token"}); st != 200 || hdr.Get("X-RateLimit-Remaining") != strconv.Itoa(2-i) {
				t.Fatalf("request %d: %d remaining %q", i, st, hdr.Get("X-RateLimit-Remaining"))
			}
		}
		st, hdr, body := p.do(t, compatReq{method: "POST", path: "/auth/token"})
		if st != 429 || hdr.Get("Retry-After") != "1" || hdr.Get("RateLimit-Limit") != "3" || !strings.Contains(body, "rate_limited") {
			t.Fatalf("got %d %v %s, want 429 with Retry-After 1", st, hdr, body)
		}
		clock.advance(time.Second) // one token per second
		if st, _, _ := p.do(t, compatReq{method: "POST", path: "/auth/token"}); st != 200 {
			t.Fatalf("after a refill: %d", st)
		}
		if st, _, _ := p.do(t, compatReq{method: "POST", path: "/auth/token"}); st != 429 {
			t.Fatalf("second after a refill: %d", st)
		}
	})
	t.Run("per subject: each subject has its own bucket", func(t *testing.T) {
		for i := range 2 { // burst 2
			if st, _, body := p.do(t, compatReq{path: "/pets/1", id: "alice"}); st != 200 {
				t.Fatalf("alice %d: %d %s", i, st, body)
			}
		}
		if st, _, _ := p.do(t, compatReq{path: "/pets/1", id: "alice"}); st != 429 {
			t.Fatalf("alice over the limit: %d", st)
		}
		if st, _, _ := p.do(t, compatReq{path: "/pets/1", id: "bob"}); st != 200 {
			t.Fatalf("bob: %d", st)
		}
	})
}

func TestTranslatedCanarySplit(t *testing.T) {
	v1 := newCompatBackend(t, "pets-1", nil)
	v2 := newCompatBackend(t, "pets-2", nil)
	p := newCompatProxy(t, compatCanary, []translate.Instance{v1.instance(t, "pets", "v1"), v2.instance(t, "pets", "v2")}, compatEdgeNode(0), resource.ListenerEdge, dataplane.Options{})
	const n = 2000
	for i := range n {
		if st, _, body := p.do(t, compatReq{path: "/pets", id: "alice"}); st != 200 {
			t.Fatalf("request %d: %d %s", i, st, body)
		}
	}
	share := float64(v2.hits.Load()) / n
	if v1.hits.Load()+v2.hits.Load() != n || share < 0.07 || share > 0.13 {
		t.Fatalf("v1 %d v2 %d: v2 share %.3f, want 0.10 ± 0.03", v1.hits.Load(), v2.hits.Load(), share)
	}
}

func TestTranslatedRetries(t *testing.T) {
	var calls atomic.Int64
	flaky := newCompatBackend(t, "pets-1", func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})
	p := newCompatProxy(t, compatRetries, []translate.Instance{flaky.instance(t, "pets", "v1")}, compatEdgeNode(0), resource.ListenerEdge, dataplane.Options{})
	if st, _, body := p.do(t, compatReq{path: "/pets/1", id: "alice"}); st != 200 || body != "ok" || calls.Load() != 3 {
		t.Fatalf("got %d %q after %d calls, want 200 after 3", st, body, calls.Load())
	}
}

const compatResilience = `
routes:
  - name: upload
    match: {prefix: /upload}
    targets: [{service: pets}]
    max_body_bytes: 16
    retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms, max: 5ms}}
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
    retries: {attempts: 1, retry_on: [5xx], backoff: {base: 1ms, max: 5ms}}
`

// TestTranslatedResilience: the translator's body limit (buffer filter per
// route) and retries that avoid the previous host (previous_hosts), end to
// end: one of two instances always fails, no request does.
func TestTranslatedResilience(t *testing.T) {
	bad := newCompatBackend(t, "pets-1", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	var uploads atomic.Int64
	good := newCompatBackend(t, "pets-2", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if strings.HasPrefix(r.URL.Path, "/upload") {
			uploads.Add(1)
		}
		fmt.Fprintf(w, "ok %d", len(b))
	})
	p := newCompatProxy(t, compatResilience, []translate.Instance{bad.instance(t, "pets", "v1"), good.instance(t, "pets", "v1")},
		compatEdgeNode(0), resource.ListenerEdge, dataplane.Options{})
	for i := range 30 {
		if st, _, body := p.do(t, compatReq{path: "/pets/1", id: "alice"}); st != 200 || body != "ok 0" {
			t.Fatalf("request %d: got %d %q, want 200 (the retry avoids the failing instance)", i, st, body)
		}
	}
	if bad.hits.Load() == 0 {
		t.Fatal("the failing instance got no request: the test shows nothing")
	}
	if st, _, body := p.do(t, compatReq{method: "PUT", path: "/upload", id: "alice", body: strings.Repeat("x", 16)}); st != 200 || body != "ok 16" {
		t.Fatalf("body at the limit: got %d %q", st, body)
	}
	if st, _, body := p.do(t, compatReq{method: "PUT", path: "/upload", id: "alice", body: strings.Repeat("x", 17)}); st != 413 || !strings.Contains(body, "payload_too_large") {
		t.Fatalf("body over the limit: got %d %q, want 413", st, body)
	}
	if uploads.Load() != 1 {
		t.Fatalf("%d uploads reached the backend, want only the one within the limit", uploads.Load())
	}
}

const compatBulkhead = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
services:
  pets:
    health_check: {path: /healthz}
    bulkhead: {max_concurrent: 2}
`

func TestTranslatedSidecar(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 10)
	app := newCompatBackend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/pets/slow" {
			entered <- struct{}{}
			<-release
		}
		fmt.Fprintf(w, "app %s subject=%s", r.URL.Path, r.Header.Get(identity.HeaderSubject))
	})
	stats1 := newCompatBackend(t, "stats-1", nil)
	inst := []translate.Instance{stats1.instance(t, "stats", "v1")}
	node := compatSidecarNode("pets", app.port(t))
	in := newCompatProxy(t, compatBulkhead, inst, node, resource.ListenerInbound, dataplane.Options{})
	out := newCompatProxy(t, compatBulkhead, inst, node, resource.ListenerOutbound, dataplane.Options{})

	tests := []struct {
		desc       string
		p          *compatProxy
		req        compatReq
		wantStatus int
		wantBody   string
	}{
		{desc: "inbound health path without a token", p: in, req: compatReq{path: "/healthz"}, wantStatus: 200, wantBody: "app /healthz"},
		{desc: "inbound route without a token", p: in, req: compatReq{path: "/pets/1"}, wantStatus: 401, wantBody: "unauthenticated"},
		{desc: "inbound catch-all without a token", p: in, req: compatReq{path: "/other"}, wantStatus: 401, wantBody: "unauthenticated"},
		{desc: "inbound route with a token", p: in, req: compatReq{path: "/pets/1", id: "edge-user"}, wantStatus: 200, wantBody: "app /pets/1 subject=edge-user"},
		{desc: "outbound by host name", p: out, req: compatReq{path: "/stats/x", host: "stats"}, wantStatus: 200, wantBody: "stats-1 /stats/x"},
		{desc: "outbound by mesh name with port", p: out, req: compatReq{path: "/y", host: "stats.mesh:80"}, wantStatus: 200, wantBody: "stats-1 /y"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			st, _, body := tc.p.do(t, tc.req)
			if st != tc.wantStatus || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", st, body, tc.wantStatus, tc.wantBody)
			}
		})
	}

	t.Run("bulkhead overflow is 503 with x-petmesh-overloaded", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if st, _, body := in.do(t, compatReq{path: "/pets/slow", id: "u"}); st != 200 {
					t.Errorf("held request: %d %s", st, body)
				}
			})
		}
		<-entered
		<-entered
		type result struct {
			st   int
			hdr  http.Header
			body string
		}
		third := make(chan result, 1)
		go func() {
			st, hdr, body := in.do(t, compatReq{path: "/pets/1", id: "u"})
			third <- result{st, hdr, body}
		}()
		var res result
		select {
		case res = <-third:
		case <-time.After(5 * time.Second):
			// Queued instead of overflowing: let it through to fail.
			close(release)
			res = <-third
			wg.Wait()
			t.Fatalf("third concurrent request waited for a slot (%d), want an immediate 503", res.st)
		}
		close(release)
		wg.Wait()
		st, hdr, body := res.st, res.hdr, res.body
		if st != 503 || hdr.Get(dataplane.HeaderOverloaded) != "true" {
			t.Fatalf("third concurrent request: %d %v %s, want 503 with %s: true", st, hdr, body, dataplane.HeaderOverloaded)
		}
		if st, _, _ := in.do(t, compatReq{path: "/pets/1", id: "u"}); st != 200 {
			t.Fatalf("after the held requests finished: %d", st)
		}
	})
}

const compatCache = `
routes:
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
services:
  pets:
    cache: {ttl: 30s}
`

func TestTranslatedResponseCache(t *testing.T) {
	var n atomic.Int64
	be := newCompatBackend(t, "pets-1", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/pets/public":
			w.Header().Set("Cache-Control", "public")
		case "/pets/nostore":
			w.Header().Set("Cache-Control", "no-store")
		case "/pets/short":
			w.Header().Set("Cache-Control", "max-age=5")
		}
		fmt.Fprintf(w, "%s #%d for %s", r.URL.Path, n.Add(1), r.Header.Get(identity.HeaderSubject))
	})
	clock := &frozenClock{t: time.Unix(1_700_000_000, 0)}
	p := newCompatProxy(t, compatCache, []translate.Instance{be.instance(t, "pets", "v1")}, compatEdgeNode(0), resource.ListenerEdge, dataplane.Options{Now: clock.now})

	tests := []struct {
		desc     string
		req      compatReq
		advance  time.Duration
		wantBody string
		wantHit  bool
	}{
		{desc: "first GET goes upstream", req: compatReq{path: "/pets/1", id: "alice"}, wantBody: "/pets/1 #1 for alice"},
		{desc: "same GET same subject is a hit", req: compatReq{path: "/pets/1", id: "alice"}, advance: 10 * time.Second, wantBody: "/pets/1 #1 for alice", wantHit: true},
		{desc: "another subject never sees it", req: compatReq{path: "/pets/1", id: "bob"}, wantBody: "/pets/1 #2 for bob"},
		{desc: "POST is not cached", req: compatReq{method: "POST", path: "/pets/1", id: "alice"}, wantBody: "/pets/1 #3 for alice"},
		{desc: "no-cache request bypasses", req: compatReq{path: "/pets/1", id: "alice", hdr: map[string]string{"Cache-Control": "no-cache"}}, wantBody: "/pets/1 #4 for alice"},
		{desc: "public response stored", req: compatReq{path: "/pets/public", id: "alice"}, wantBody: "/pets/public #5 for alice"},
		{desc: "public response shared", req: compatReq{path: "/pets/public", id: "bob"}, wantBody: "/pets/public #5 for alice", wantHit: true},
		{desc: "no-store response stored not", req: compatReq{path: "/pets/nostore", id: "alice"}, wantBody: "/pets/nostore #6"},
		{desc: "no-store response again upstream", req: compatReq{path: "/pets/nostore", id: "alice"}, wantBody: "/pets/nostore #7"},
		{desc: "max-age shorter than the ttl", req: compatReq{path: "/pets/short", id: "alice"}, wantBody: "/pets/short #8"},
		{desc: "max-age expired", req: compatReq{path: "/pets/short", id: "alice"}, advance: 6 * time.Second, wantBody: "/pets/short #9"},
		{desc: "ttl expired", req: compatReq{path: "/pets/1", id: "alice"}, advance: 30 * time.Second, wantBody: "/pets/1 #10 for alice"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			clock.advance(tc.advance)
			st, hdr, body := p.do(t, tc.req)
			if st != 200 || !strings.HasPrefix(body, tc.wantBody) {
				t.Fatalf("got %d %q, want 200 %q", st, body, tc.wantBody)
			}
			if hit := hdr.Get("Age") != ""; hit != tc.wantHit {
				t.Fatalf("cache hit %v (Age %q), want %v", hit, hdr.Get("Age"), tc.wantHit)
			}
		})
	}
}
