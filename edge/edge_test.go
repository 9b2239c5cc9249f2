package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

const testIssuer = "http://edge.test"

// backend records the headers of the last request it served.
type backend struct {
	*httptest.Server
	mu   sync.Mutex
	last http.Header
	hold chan struct{} // when set, requests block until it is closed
}

func newBackend(t testing.TB, name string) *backend {
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.last = r.Header.Clone()
		hold := b.hold
		b.mu.Unlock()
		if hold != nil && r.URL.Path != "/healthz" {
			<-hold
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"backend":%q,"path":%q}`, name, r.URL.Path)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) header() http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

func instance(t testing.TB, svc, id string, srv *httptest.Server) translate.Instance {
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())
	return translate.Instance{Service: svc, ID: id, Address: ap.Addr().String(), Port: int(ap.Port()), Version: "v1", Health: translate.HealthPassing}
}

var usersYAML = sync.OnceValue(func() string {
	var b strings.Builder
	b.WriteString("users:\n")
	for _, u := range []struct{ name, pw, roles string }{{"alice", "alice-pw", "viewer"}, {"root", "root-pw", "viewer, admin"}} {
		h, err := jwtauth.HashPassword(u.pw, jwtauth.MinBcryptCost)
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(&b, "  - username: %s\n    password_hash: %q\n    roles: [%s]\n", u.name, h, u.roles)
	}
	return b.String()
})

// writeUsers writes a users file: alice is a viewer, root an admin (the
// bcrypt hashes are computed once per test binary).
func writeUsers(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(usersYAML()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type harness struct {
	s      *server
	public *httptest.Server
	pets   *backend
	sync   *backend
}

func testConfig(t testing.TB) *Config {
	return &Config{
		Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", XDSAddr: "127.0.0.1:1",
		NodeID: "edge~test", UsersFile: writeUsers(t), KeysDir: filepath.Join(t.TempDir(), "keys"),
		KeyRotation: 24 * time.Hour, TokenTTL: 15 * time.Minute, Issuer: testIssuer, Audience: []string{"petmesh"},
		MaxConcurrent: 100, MaxHeaderBytes: 64 << 10, MaxBody: 1 << 20, ShutdownTimeout: time.Second, LogLevel: "info",
	}
}

// newHarness builds an edge in-process (handlers only, no ADS) configured
// with the translator's output for the default route table.
func newHarness(t testing.TB, cfg *Config) *harness {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := build(cfg, telemetry.NewTest(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.dp.Close)
	h := &harness{s: s, pets: newBackend(t, "pets"), sync: newBackend(t, "sync")}
	tr, err := translate.Translate(routes.Default(),
		[]translate.Instance{instance(t, "pets", "pets-1", h.pets.Server), instance(t, "sync", "sync-1", h.sync.Server)},
		translate.Node{ID: resource.NodeID{Kind: resource.KindEdge, Instance: "test"}},
		translate.Options{JWTProviders: []translate.JWTProvider{{Name: "petmesh", Issuer: testIssuer, Audiences: []string{"petmesh"},
			JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json"}}})
	if err != nil {
		t.Fatal(err)
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
		t.Fatalf("apply: %v", err)
	}
	h.public = httptest.NewServer(s.front)
	t.Cleanup(h.public.Close)
	return h
}

func (h *harness) login(t testing.TB, user, pw string) string {
	t.Helper()
	resp, err := http.Post(h.public.URL+PathToken, "application/json", strings.NewReader(fmt.Sprintf(`{"username":%q,"password":%q}`, user, pw)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr jwtauth.TokenResponse
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&tr) != nil || tr.TokenType != "Bearer" {
		t.Fatalf("login %s: status %d", user, resp.StatusCode)
	}
	return tr.AccessToken
}

func do(t *testing.T, method, url, token string, hdr map[string]string, body io.Reader) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestEdgeLocalAndAuth(t *testing.T) {
	h := newHarness(t, testConfig(t))
	viewer := h.login(t, "alice", "alice-pw")
	admin := h.login(t, "root", "root-pw")

	tests := []struct {
		desc    string
		method  string
		path    string
		token   string
		body    string
		ctype   string
		status  int
		backend string
	}{
		{desc: "jwks", method: "GET", path: PathJWKS, status: 200},
		{desc: "token: wrong password", method: "POST", path: PathToken, body: `{"username":"alice","password":"nope"}`, ctype: "application/json", status: 401},
		{desc: "token: unknown field", method: "POST", path: PathToken, body: `{"username":"alice","password":"x","extra":1}`, ctype: "application/json", status: 400},
		{desc: "token: GET", method: "GET", path: PathToken, status: 405},
		{desc: "unknown edge-local path", method: "GET", path: "/auth/other", status: 404},
		{desc: "pets with token", method: "GET", path: "/pets", token: viewer, status: 200, backend: "pets"},
		{desc: "pets without token", method: "GET", path: "/pets", status: 401},
		{desc: "pets with garbage token", method: "GET", path: "/pets", token: "a.b.c", status: 401},
		{desc: "admin route with viewer token", method: "GET", path: "/sync/runs", token: viewer, status: 403},
		{desc: "admin route with admin token", method: "GET", path: "/sync/runs", token: admin, status: 200, backend: "sync"},
		{desc: "no route", method: "GET", path: "/nowhere", token: viewer, status: 404},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.ctype != "" {
				hdr["Content-Type"] = tc.ctype
			}
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			resp := do(t, tc.method, h.public.URL+tc.path, tc.token, hdr, body)
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if resp.StatusCode == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") && tc.path != PathToken {
				t.Fatalf("401 without a Bearer challenge: %q", resp.Header.Get("WWW-Authenticate"))
			}
			if resp.StatusCode >= 400 && !strings.Contains(string(b), `"error"`) {
				t.Fatalf("error body not JSON: %s", b)
			}
			if tc.backend != "" && !strings.Contains(string(b), `"backend":"`+tc.backend+`"`) {
				t.Fatalf("body %s, want backend %s", b, tc.backend)
			}
			if tc.token != "" && strings.Contains(string(b), tc.token) {
				t.Fatal("response echoes the token")
			}
		})
	}
}

func TestHeaderTrust(t *testing.T) {
	spoof := map[string]string{
		"X-Petmesh-Subject": "root", "X-Petmesh-Roles": "admin", "X-Petmesh-Anything": "x",
		"Forwarded": "for=6.6.6.6", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
	}
	tests := []struct {
		desc    string
		trusted []string
		xff     string // the X-Forwarded-For the backend must see
		proto   string
	}{
		{desc: "untrusted peer: everything replaced", xff: "127.0.0.1", proto: "http"},
		{desc: "trusted proxy: client from X-Forwarded-For", trusted: []string{"127.0.0.0/8"}, xff: "6.6.6.6", proto: "https"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.TrustedProxies = tc.trusted
			h := newHarness(t, cfg)
			tok := h.login(t, "alice", "alice-pw")
			resp := do(t, "GET", h.public.URL+"/pets", tok, spoof, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := h.pets.header()
			if got.Get("X-Petmesh-Subject") != "alice" || got.Get("X-Petmesh-Roles") != "viewer" {
				t.Fatalf("identity headers %q %q, want alice viewer", got.Get("X-Petmesh-Subject"), got.Get("X-Petmesh-Roles"))
			}
			if got.Get("X-Petmesh-Anything") != "" || got.Get("Forwarded") != "" {
				t.Fatalf("client headers forwarded: %v", got)
			}
			if got.Get("X-Forwarded-For") != tc.xff {
				t.Fatalf("X-Forwarded-For %q, want %q", got.Get("X-Forwarded-For"), tc.xff)
			}
			if got.Get("X-Forwarded-Host") == "evil.example" {
				t.Fatal("client X-Forwarded-Host forwarded")
			}
			if got.Get("Authorization") != "Bearer "+tok {
				t.Fatal("token not forwarded to the upstream")
			}
		})
	}
}

func TestLimits(t *testing.T) {
	t.Run("body over -max-body: 413", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.MaxBody = 1024
		h := newHarness(t, cfg)
		tok := h.login(t, "alice", "alice-pw")
		resp := do(t, "POST", h.public.URL+"/pets", tok, map[string]string{"Content-Type": "application/json"}, strings.NewReader(strings.Repeat("x", 4096)))
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413", resp.StatusCode)
		}
	})
	t.Run("over -max-concurrent: 503", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.MaxConcurrent = 2
		h := newHarness(t, cfg)
		tok := h.login(t, "alice", "alice-pw")
		hold := make(chan struct{})
		h.pets.mu.Lock()
		h.pets.hold = hold
		h.pets.mu.Unlock()
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				req, _ := http.NewRequest("GET", h.public.URL+"/pets", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
			})
		}
		deadline := time.Now().Add(5 * time.Second)
		for h.s.front.inflight.Load() < 2 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // polling for the two held requests
		}
		resp := do(t, "GET", h.public.URL+"/pets", tok, nil, nil)
		close(hold)
		wg.Wait()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("status %d, want 503 with Retry-After", resp.StatusCode)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		desc string
		mod  func(c *Config)
		want string
	}{
		{desc: "bad node id", mod: func(c *Config) { c.NodeID = "sidecar~x~y" }, want: "-node-id"},
		{desc: "tls half set", mod: func(c *Config) { c.TLSCert = "c.pem" }, want: "-tls-cert"},
		{desc: "bad cidr", mod: func(c *Config) { c.TrustedProxies = []string{"10.0.0.0/99"} }, want: "-trusted-proxies"},
		{desc: "token ttl too long", mod: func(c *Config) { c.TokenTTL = 2 * time.Hour }, want: "-token-ttl"},
		{desc: "stats url", mod: func(c *Config) { c.StatsURL = "ftp://x" }, want: "-stats-url"},
		{desc: "no xds and no bootstrap", mod: func(c *Config) { c.XDSAddr = "" }, want: "-xds-addr"},
		{desc: "negative concurrency", mod: func(c *Config) { c.MaxConcurrent = -1 }, want: "-max-concurrent"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c := testConfig(t)
			tc.mod(c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %s", err, tc.want)
			}
		})
	}
	c := testConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

func TestHashPasswordCommand(t *testing.T) {
	var out, errb strings.Builder
	if err := HashPasswordCommand([]string{"-cost", "10"}, strings.NewReader("s3cret\n"), &out, &errb); err != nil {
		t.Fatal(err)
	}
	h := strings.TrimSpace(out.String())
	users, err := jwtauth.NewUsers([]jwtauth.User{{Username: "u", PasswordHash: h, Roles: []string{"viewer"}}})
	if err != nil || users.Len() != 1 {
		t.Fatalf("hash %q not usable in a users file: %v", h, err)
	}
	if err := HashPasswordCommand([]string{"-cost", "4"}, strings.NewReader("pw\n"), &out, &errb); err == nil {
		t.Fatal("cost 4 accepted")
	}
	if err := HashPasswordCommand(nil, strings.NewReader(""), &out, &errb); err == nil {
		t.Fatal("empty password accepted")
	}
}
