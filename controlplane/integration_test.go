package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/jwtauth/jwttest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/consultest"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

const regToken = "test-registration-token-0123456789"

// auth holds a test issuer's JWKS file and tokens.
type auth struct {
	jwksFile              string
	admin, viewer, nobody string
}

func newAuth(t *testing.T) auth {
	t.Helper()
	is := jwttest.New(t, "petmesh-test")
	rec := httptest.NewRecorder()
	is.Keys.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/jwks.json", nil))
	a := auth{jwksFile: filepath.Join(t.TempDir(), "jwks.json")}
	if err := os.WriteFile(a.jwksFile, rec.Body.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	a.admin, a.viewer, a.nobody = is.Token("alice", "admin"), is.Token("bob", "viewer"), is.Token("carol")
	return a
}

func (a auth) args() []string {
	return []string{"-jwks-file", a.jwksFile, "-issuer", "petmesh-test", "-audience", "petmesh"}
}

// startCP starts the real control plane binary.
func startCP(t *testing.T, xdsAddr string, args ...string) *tu.Process {
	t.Helper()
	bin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	all := append([]string{"-xds-addr", xdsAddr, "-api-addr", "127.0.0.1:0", "-debounce-quiet", "20ms", "-debounce-max", "200ms"}, args...)
	return tu.Start(t, bin, tu.StartOptions{Args: all, Env: []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + regToken}, Listeners: []string{"xds", "api"}})
}

// stop stops the process with SIGTERM and waits for a clean exit.
func stop(t *testing.T, p *tu.Process) {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(20 * time.Second); err != nil {
		t.Fatalf("control plane exit: %v\n%s", err, p.Output())
	}
}

// call sends a JSON API request and returns the status and body.
func call(t *testing.T, method, url, token string, hdr map[string]string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

type proxyStatus struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	Connected    bool   `json:"connected"`
	Synced       bool   `json:"synced"`
	RouteVersion int64  `json:"route_version"`
	Types        []struct {
		TypeURL  string `json:"type_url"`
		Latest   string `json:"latest"`
		Sent     string `json:"sent"`
		Acked    string `json:"acked"`
		LastNack *struct {
			Message string `json:"message"`
		} `json:"last_nack"`
	} `json:"types"`
}

func proxies(t *testing.T, api, token string) map[string]proxyStatus {
	t.Helper()
	code, b := call(t, http.MethodGet, api+"/v1/proxies", token, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/proxies: %d %s", code, b)
	}
	var resp struct{ Proxies []proxyStatus }
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	m := map[string]proxyStatus{}
	for _, p := range resp.Proxies {
		m[p.ID] = p
	}
	return m
}

func currentVersion(t *testing.T, api, token string) int64 {
	t.Helper()
	code, b := call(t, http.MethodGet, api+"/v1/routes", token, nil, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /v1/routes: %d %s", code, b)
	}
	var v struct {
		Version int64 `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v.Version
}

// adsClient is a real ADS client (internal/xds/client) standing in for a
// proxy; reject, when set, NACKs.
type adsClient struct {
	id      string
	c       *client.Client
	mu      sync.Mutex
	reject  func(*client.Snapshot) error
	observe func(*client.Snapshot) // every configuration applied
}

func startClient(t *testing.T, addr string, n *core.Node) *adsClient {
	t.Helper()
	a := &adsClient{id: n.GetId()}
	c, err := client.New(client.Config{
		Server: addr, Node: n,
		Apply: func(_ context.Context, s *client.Snapshot) error {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.reject != nil {
				if err := a.reject(s); err != nil {
					return err
				}
			}
			if a.observe != nil {
				a.observe(s)
			}
			return nil
		},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		BackoffMin:  50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	a.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func edge(inst string) *core.Node {
	return &core.Node{Id: resource.EdgeNodeID(inst), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()}
}

func sidecar(svc, inst string) *core.Node {
	return &core.Node{Id: resource.SidecarNodeID(svc, inst), Metadata: resource.NodeMeta{
		Service: svc, Version: "v1", InboundPort: 15001, OutboundPort: 15002, AppPort: 9001,
	}.Struct()}
}

// render is every resource a client holds, as protojson by type and name.
// complete waits until the client holds a load assignment for every EDS
// cluster it has: a route version is ACKed with its clusters before the
// endpoints of new clusters arrive, so a snapshot taken right after
// waitSynced may still be warming.
func complete(t *testing.T, c *client.Client) *client.Snapshot {
	t.Helper()
	var s *client.Snapshot
	tu.Eventually(t, 10*time.Second, func() error {
		s = c.Current()
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
	return s
}

func render(t *testing.T, s *client.Snapshot) string {
	t.Helper()
	var lines []string
	add := func(kind, name string, m proto.Message) {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, kind+"/"+name+" "+string(b))
	}
	for n, x := range s.Listeners {
		add("listener", n, x)
	}
	for n, x := range s.Routes {
		add("route", n, x)
	}
	for n, x := range s.Clusters {
		add("cluster", n, x)
	}
	for n, x := range s.Endpoints {
		add("endpoint", n, x)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// waitSynced waits until every client's status shows each type ACKed at
// its latest version, for route version want, and the client holds it.
func waitSynced(t *testing.T, api, token string, want int64, clients ...*adsClient) {
	t.Helper()
	tu.Eventually(t, 15*time.Second, func() error {
		ps := proxies(t, api, token)
		for _, c := range clients {
			p, ok := ps[c.id]
			if !ok || !p.Connected || !p.Synced || p.RouteVersion != want || len(p.Types) != 4 {
				return fmt.Errorf("%s: %+v", c.id, p)
			}
			vs := c.c.Versions()
			for _, ty := range p.Types {
				if ty.Acked != ty.Latest || ty.Sent != ty.Latest || vs[ty.TypeURL] != ty.Latest {
					return fmt.Errorf("%s %s: sent %q acked %q latest %q client %q", c.id, ty.TypeURL, ty.Sent, ty.Acked, ty.Latest, vs[ty.TypeURL])
				}
			}
		}
		return nil
	})
}

// petctl runs the real petctl binary.
func petctl(t *testing.T, api, token string, args ...string) (int, string, string) {
	t.Helper()
	bin := tu.BuildBinary(t, "./controlplane/cmd/petctl")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "PETMESH_API="+api, "PETMESH_TOKEN="+token)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const changedTable = `
routes:
  - name: auth
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets, subset: v1, weight: 80}, {service: pets, subset: v2, weight: 20}]
    timeout: 3s
  - name: stats
    match: {prefix: /stats}
    auth: {roles: [admin]}
    targets: [{service: stats}]
`

// invalidTable parses but breaks three rules in three places.
const invalidTable = `
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
`

func TestControlPlaneFileStore(t *testing.T) {
	a := newAuth(t)
	storeDir := t.TempDir()
	cp := startCP(t, "127.0.0.1:0", append(a.args(), "-store", "file", "-store-dir", storeDir)...)
	api, xdsAddr := cp.URL("api"), cp.Addr("xds")

	// A registered instance, through the built-in registry's API.
	rc, err := registry.NewHTTPClient(api, regToken)
	if err != nil {
		t.Fatal(err)
	}
	ctx := tu.Context(t)
	if err := rc.Register(ctx, registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15001, Version: "v1", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}

	e := startClient(t, xdsAddr, edge("e1"))
	s := startClient(t, xdsAddr, sidecar("pets", "pets-1"))
	v1 := currentVersion(t, api, a.viewer)
	waitSynced(t, api, a.viewer, v1, e, s)
	// The route version is ACKed before the debounced endpoint update may
	// have arrived: wait for pets-1 itself, or "before" lacks it.
	tu.Eventually(t, 10*time.Second, func() error {
		if cla := e.c.Current().Endpoints["pets"]; len(cla.GetEndpoints()) == 0 || len(cla.GetEndpoints()[0].GetLbEndpoints()) == 0 {
			return errors.New("the edge has no pets endpoint yet")
		}
		return nil
	})
	before := render(t, e.c.Current())

	t.Run("auth", func(t *testing.T) {
		tests := []struct {
			desc, method, path, token string
			want                      int
		}{
			{desc: "no token", method: http.MethodGet, path: "/v1/routes", want: http.StatusUnauthorized},
			{desc: "garbage token", method: http.MethodGet, path: "/v1/routes", token: "x.y.z", want: http.StatusUnauthorized},
			{desc: "no role", method: http.MethodGet, path: "/v1/routes", token: a.nobody, want: http.StatusForbidden},
			{desc: "viewer reads", method: http.MethodGet, path: "/v1/proxies", token: a.viewer, want: http.StatusOK},
			{desc: "viewer cannot write", method: http.MethodPost, path: "/v1/rollback", token: a.viewer, want: http.StatusForbidden},
			{desc: "health is public", method: http.MethodGet, path: "/healthz", want: http.StatusOK},
			{desc: "openapi is public", method: http.MethodGet, path: "/openapi.json", want: http.StatusOK},
		}
		for _, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				code, b := call(t, tc.method, api+tc.path, tc.token, nil, nil)
				if code != tc.want {
					t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, b, tc.want)
				}
				if code >= 400 && !strings.Contains(string(b), `"message"`) {
					t.Fatalf("error without a message: %s", b)
				}
			})
		}
	})

	t.Run("invalid table is rejected with every field and nothing is pushed", func(t *testing.T) {
		vs := e.c.Versions()
		code, b := call(t, http.MethodPut, api+"/v1/routes", a.admin,
			map[string]string{"If-Match": fmt.Sprint(v1), "Content-Type": "application/yaml"}, []byte(invalidTable))
		if code != http.StatusBadRequest {
			t.Fatalf("PUT invalid: %d %s", code, b)
		}
		var body struct {
			Errors []struct{ Field, Message string }
		}
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatal(err)
		}
		fields := map[string]bool{}
		for _, fe := range body.Errors {
			fields[fe.Field] = true
		}
		for _, want := range []string{"routes[0].targets[1].weight", "routes[1].name", "routes[2].match.regex"} {
			if !fields[want] {
				t.Errorf("no error for %s in %s", want, b)
			}
		}
		if got := currentVersion(t, api, a.viewer); got != v1 {
			t.Fatalf("version changed to %d", got)
		}
		code, out, errOut := petctl(t, api, a.admin, "routes", "apply", "-f", writeFile(t, "bad.yaml", invalidTable))
		if code != 2 || !strings.Contains(errOut, "routes[2].match.regex") {
			t.Fatalf("petctl apply invalid: exit %d\n%s%s", code, out, errOut)
		}
		waitSynced(t, api, a.viewer, v1, e, s)
		if got := e.c.Versions(); fmt.Sprint(got) != fmt.Sprint(vs) {
			t.Fatalf("edge versions changed: %v → %v", vs, got)
		}
	})

	t.Run("preconditions", func(t *testing.T) {
		code, b := call(t, http.MethodPut, api+"/v1/routes", a.admin, map[string]string{"Content-Type": "application/yaml"}, []byte(changedTable))
		if code != http.StatusPreconditionRequired {
			t.Fatalf("without If-Match: %d %s", code, b)
		}
		code, b = call(t, http.MethodPut, api+"/v1/routes", a.admin, map[string]string{"If-Match": fmt.Sprint(v1 + 5), "Content-Type": "application/yaml"}, []byte(changedTable))
		if code != http.StatusConflict {
			t.Fatalf("stale If-Match: %d %s", code, b)
		}
	})

	var v2 int64
	t.Run("change through petctl is acked, in history, and rolled back exactly", func(t *testing.T) {
		code, out, errOut := petctl(t, api, a.admin, "routes", "validate", "-f", writeFile(t, "new.yaml", changedTable), "-path", "/pets/1")
		if code != 0 || !strings.Contains(out, "pets~v2 (20%)") || !strings.Contains(out, "added") {
			t.Fatalf("petctl validate: exit %d\n%s%s", code, out, errOut)
		}
		code, out, errOut = petctl(t, api, a.admin, "routes", "apply", "-f", writeFile(t, "new.yaml", changedTable), "-m", "canary pets v2")
		if code != 0 {
			t.Fatalf("petctl apply: exit %d\n%s%s", code, out, errOut)
		}
		v2 = currentVersion(t, api, a.viewer)
		if v2 != v1+1 {
			t.Fatalf("version %d after apply on %d", v2, v1)
		}
		waitSynced(t, api, a.viewer, v2, e, s)
		if _, ok := e.c.Current().Clusters["pets~v2"]; !ok {
			t.Fatal("edge has no pets~v2 cluster")
		}

		code, out, _ = petctl(t, api, a.viewer, "-o", "json", "routes", "history")
		var hist struct {
			Versions []struct {
				Version int64
				Author  string
				Message string
			}
		}
		if err := json.Unmarshal([]byte(out), &hist); code != 0 || err != nil {
			t.Fatalf("history: exit %d %v\n%s", code, err, out)
		}
		if h := hist.Versions[0]; h.Version != v2 || h.Author != "alice" || h.Message != "canary pets v2" {
			t.Fatalf("history head: %+v", h)
		}
		if code, out, _ = petctl(t, api, a.viewer, "routes", "diff", fmt.Sprint(v1), fmt.Sprint(v2)); code != 0 || !strings.Contains(out, "route pets: changed") {
			t.Fatalf("diff: exit %d\n%s", code, out)
		}

		code, out, errOut = petctl(t, api, a.admin, "routes", "rollback", fmt.Sprint(v1))
		if code != 0 {
			t.Fatalf("rollback: exit %d\n%s%s", code, out, errOut)
		}
		waitSynced(t, api, a.viewer, v2+1, e, s)
		// The clusters are ACKed before the load assignments of the
		// clusters they replaced arrive (warming, as in Envoy): the
		// resources must come back exactly, but may take a moment more.
		tu.Eventually(t, 10*time.Second, func() error {
			if after := render(t, e.c.Current()); after != before {
				return fmt.Errorf("rollback did not restore the resources:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			return nil
		})
	})

	t.Run("petctl exit codes", func(t *testing.T) {
		tests := []struct {
			desc  string
			api   string
			token string
			args  []string
			want  int
		}{
			{desc: "usage", api: api, token: a.admin, args: []string{"routes", "frobnicate"}, want: 1},
			{desc: "bad weights", api: api, token: a.admin, args: []string{"routes", "set-weights", "pets", "v1=50", "v2=10"}, want: 2},
			{desc: "viewer cannot apply", api: api, token: a.viewer, args: []string{"routes", "rollback", "1"}, want: 4},
			{desc: "no token", api: api, args: []string{"proxies"}, want: 4},
			{desc: "unreachable", api: "http://127.0.0.1:1", token: a.admin, args: []string{"proxies"}, want: 5},
			{desc: "weights", api: api, token: a.admin, args: []string{"routes", "set-weights", "pets", "v1=50", "v2=50"}, want: 0},
			{desc: "proxies table", api: api, token: a.viewer, args: []string{"proxies"}, want: 0},
			{desc: "services table", api: api, token: a.viewer, args: []string{"services"}, want: 0},
		}
		for _, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				code, out, errOut := petctl(t, tc.api, tc.token, tc.args...)
				if code != tc.want {
					t.Fatalf("exit %d, want %d\n%s%s", code, tc.want, out, errOut)
				}
			})
		}
	})

	t.Run("NACK is visible with its message", func(t *testing.T) {
		n := startClient(t, xdsAddr, sidecar("stats", "stats-1"))
		n.mu.Lock()
		n.reject = func(s *client.Snapshot) error {
			if len(s.Listeners) > 0 {
				return errors.New("listener inbound: filter envoy.filters.http.lua is not supported")
			}
			return nil
		}
		n.mu.Unlock()
		tu.Eventually(t, 10*time.Second, func() error {
			p := proxies(t, api, a.viewer)[n.id]
			for _, ty := range p.Types {
				if ty.LastNack != nil && strings.Contains(ty.LastNack.Message, "lua is not supported") {
					return nil
				}
			}
			return fmt.Errorf("no NACK in %+v", p)
		})
		if code, out, _ := petctl(t, api, a.viewer, "proxies"); code != 0 || !strings.Contains(out, "lua is not supported") {
			t.Fatalf("petctl proxies: exit %d\n%s", code, out)
		}
	})

	t.Run("restart serves the same version and proxies resync", func(t *testing.T) {
		want := currentVersion(t, api, a.viewer)
		held := render(t, complete(t, e.c))
		stop(t, cp)
		cp2 := startCP(t, xdsAddr, append(a.args(), "-store", "file", "-store-dir", storeDir)...)
		api2 := cp2.URL("api")
		if got := currentVersion(t, api2, a.viewer); got != want {
			t.Fatalf("version after restart %d, want %d", got, want)
		}
		// The built-in registry restored the instance from its state file
		// (restart_test.go): its sidecar's next heartbeat succeeds.
		rc2, err := registry.NewHTTPClient(api2, regToken)
		if err != nil {
			t.Fatal(err)
		}
		if err := rc2.Heartbeat(ctx, "pets-1"); err != nil {
			t.Fatalf("heartbeat after restart: %v", err)
		}
		waitSynced(t, api2, a.viewer, want, e, s)
		tu.Eventually(t, 10*time.Second, func() error {
			if got := render(t, e.c.Current()); got != held {
				return errors.New("edge resources differ after restart")
			}
			return nil
		})
	})
}

func TestControlPlaneConsul(t *testing.T) {
	agent := consultest.Start(t)
	a := newAuth(t)
	args := append(a.args(), "-store", "consul", "-registry", "consul", "-consul-addr", agent.HTTPAddr())
	cp := startCP(t, "127.0.0.1:0", args...)
	api, xdsAddr := cp.URL("api"), cp.Addr("xds")
	e := startClient(t, xdsAddr, edge("e1"))
	v1 := currentVersion(t, api, a.viewer)
	waitSynced(t, api, a.viewer, v1, e)
	if code, out, errOut := petctl(t, api, a.admin, "routes", "apply", "-f", writeFile(t, "new.yaml", changedTable)); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	waitSynced(t, api, a.viewer, v1+1, e)
	held := render(t, complete(t, e.c))

	stop(t, cp)
	cp2 := startCP(t, xdsAddr, args...)
	if got := currentVersion(t, cp2.URL("api"), a.viewer); got != v1+1 {
		t.Fatalf("version after restart %d, want %d", got, v1+1)
	}
	waitSynced(t, cp2.URL("api"), a.viewer, v1+1, e)
	var got string
	tu.Eventually(t, 10*time.Second, func() error {
		if got = render(t, complete(t, e.c)); got != held {
			return errors.New("resources differ after restart")
		}
		return nil
	})
}
