package edge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

const itRegToken = "integration-registration-token"

const itTable = `
routes:
  - name: auth
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: well-known
    match: {prefix: /.well-known/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: admin
    match: {prefix: /pets/admin}
    auth: {roles: [admin]}
    targets: [{service: pets}]
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
    retries: {attempts: 2, retry_on: [connect-failure, reset, 5xx]}
`

// itTableChanged adds a route /animals → pets (prefix rewritten to /pets).
const itTableChanged = itTable + `  - name: animals
    match: {prefix: /animals}
    targets: [{service: pets}]
    prefix_rewrite: /pets
`

// freePort returns a port that was free a moment ago. The control plane
// must know the edge's JWKS URL before the edge starts, so the edge's
// public port is chosen up front (never a fixed port).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type itClient struct {
	t    *testing.T
	http *http.Client
}

func (c itClient) do(method, url, token string, hdr map[string]string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (c itClient) must(method, url, token string, hdr map[string]string, body []byte) (int, []byte) {
	c.t.Helper()
	code, b, err := c.do(method, url, token, hdr, body)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	return code, b
}

func TestIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the control plane, the edge and stats")
	}
	dir := t.TempDir()
	cpBin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	edgeBin := tu.BuildBinary(t, "./edge/cmd/edge")
	statsBin := tu.BuildBinary(t, "./services/stats/cmd/stats")
	c := itClient{t: t, http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}

	stats := tu.Start(t, statsBin, tu.StartOptions{
		Args:      []string{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-db", filepath.Join(dir, "stats.db"), "-flush-interval", "100ms", "-pets-url", "http://127.0.0.1:1"},
		Listeners: []string{"http", "admin"},
	})

	port := freePort(t)
	edgeURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	issuer := "petmesh-edge-it"
	tableFile := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(tableFile, []byte(itTable), 0o600); err != nil {
		t.Fatal(err)
	}
	cpArgs := []string{"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-debounce-quiet", "20ms", "-debounce-max", "200ms",
		"-store", "file", "-store-dir", filepath.Join(dir, "store"), "-initial-table", tableFile,
		"-jwks-url", edgeURL + PathJWKS, "-issuer", issuer}
	cp := tu.Start(t, cpBin, tu.StartOptions{Args: cpArgs, Env: []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + itRegToken}, Listeners: []string{"xds", "api"}})
	api := cp.URL("api")

	// Two backend instances of pets, registered in the built-in registry.
	pets1, pets2 := newBackend(t, "pets-1"), newBackend(t, "pets-2")
	rc, err := registry.NewHTTPClient(api, itRegToken)
	if err != nil {
		t.Fatal(err)
	}
	ctx := tu.Context(t)
	for _, b := range []struct {
		id string
		be *backend
	}{{"pets-1", pets1}, {"pets-2", pets2}} {
		in := instance(t, "pets", b.id, b.be.Server)
		if err := rc.Register(ctx, registry.Registration{Service: "pets", ID: b.id, Address: in.Address, Port: in.Port, Version: "v1", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}

	edge := tu.Start(t, edgeBin, tu.StartOptions{
		Args: []string{"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-admin-addr", "127.0.0.1:0", "-xds-addr", cp.Addr("xds"),
			"-node-id", "edge~it", "-users-file", writeUsers(t), "-keys-dir", filepath.Join(dir, "keys"), "-issuer", issuer,
			"-stats-url", stats.URL("http")},
		Listeners: []string{"http", "admin"},
	})
	admin := edge.URL("admin")
	tu.Eventually(t, 20*time.Second, func() error {
		if code, b, err := c.do("GET", admin+"/readyz", "", nil, nil); err != nil || code != 200 {
			return fmt.Errorf("readyz %d %s %v", code, b, err)
		}
		return nil
	})

	login := func(user, pw string) string {
		t.Helper()
		var tok string
		tu.Eventually(t, 10*time.Second, func() error {
			code, b, err := c.do("POST", edgeURL+PathToken, "", map[string]string{"Content-Type": "application/json"},
				[]byte(fmt.Sprintf(`{"username":%q,"password":%q}`, user, pw)))
			if err != nil || code != 200 {
				return fmt.Errorf("login: %d %s %v", code, b, err)
			}
			var tr struct {
				AccessToken string `json:"access_token"`
			}
			if err := json.Unmarshal(b, &tr); err != nil {
				return err
			}
			tok = tr.AccessToken
			return nil
		})
		return tok
	}
	viewer := login("alice", "alice-pw")
	root := login("root", "root-pw")

	t.Run("auth through the edge", func(t *testing.T) {
		tests := []struct {
			desc, path, token string
			want              int
		}{
			{desc: "token → 200", path: "/pets", token: viewer, want: 200},
			{desc: "no token → 401", path: "/pets", want: 401},
			{desc: "viewer on an admin route → 403", path: "/pets/admin/x", token: viewer, want: 403},
			{desc: "admin on an admin route → 200", path: "/pets/admin/x", token: root, want: 200},
			{desc: "JWKS is public", path: PathJWKS, want: 200},
		}
		for _, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				code, b := c.must("GET", edgeURL+tc.path, tc.token, nil, nil)
				if code != tc.want {
					t.Fatalf("%d %s, want %d", code, b, tc.want)
				}
			})
		}
	})

	t.Run("both instances serve", func(t *testing.T) {
		seen := map[string]bool{}
		tu.Eventually(t, 10*time.Second, func() error {
			_, b := c.must("GET", edgeURL+"/pets", viewer, nil, nil)
			for _, n := range []string{"pets-1", "pets-2"} {
				if strings.Contains(string(b), `"`+n+`"`) {
					seen[n] = true
				}
			}
			if !seen["pets-1"] || !seen["pets-2"] {
				return fmt.Errorf("seen %v", seen)
			}
			return nil
		})
	})

	// load runs concurrent GET /pets until stopped and counts failures.
	load := func() (stop func() (ok, failed int64, firstErr string)) {
		var okN, failN atomic.Int64
		var first atomic.Value
		done := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-done:
						return
					default:
					}
					code, b, err := c.do("GET", edgeURL+"/pets", viewer, nil, nil)
					if err != nil || code != 200 {
						failN.Add(1)
						first.CompareAndSwap(nil, fmt.Sprintf("%d %s %v", code, b, err))
						continue
					}
					okN.Add(1)
				}
			})
		}
		return func() (int64, int64, string) {
			close(done)
			wg.Wait()
			s, _ := first.Load().(string)
			return okN.Load(), failN.Load(), s
		}
	}

	t.Run("route change through the API without restart or failed request", func(t *testing.T) {
		code, _ := c.must("GET", edgeURL+"/animals", viewer, nil, nil)
		if code != 404 {
			t.Fatalf("/animals before the change: %d, want 404", code)
		}
		stop := load()
		// The control plane verifies API tokens with the edge's JWKS; it
		// fetched it (with backoff) while the edge was not up yet.
		var etag string
		tu.Eventually(t, 60*time.Second, func() error {
			req, err := http.NewRequest("GET", api+"/v1/routes", nil)
			if err != nil {
				return err
			}
			req.Header.Set("Authorization", "Bearer "+root)
			resp, err := c.http.Do(req)
			if err != nil {
				return err
			}
			etag = resp.Header.Get("ETag")
			resp.Body.Close()
			if resp.StatusCode != 200 || etag == "" {
				return fmt.Errorf("GET /v1/routes: %d etag %q", resp.StatusCode, etag)
			}
			return nil
		})
		code, b := c.must("PUT", api+"/v1/routes?message=add+animals", root,
			map[string]string{"If-Match": etag, "Content-Type": "application/yaml"}, []byte(itTableChanged))
		if code != 200 {
			t.Fatalf("PUT /v1/routes: %d %s", code, b)
		}
		tu.Eventually(t, 15*time.Second, func() error {
			code, b, err := c.do("GET", edgeURL+"/animals/1", viewer, nil, nil)
			if err != nil || code != 200 || !strings.Contains(string(b), `"path":"/pets/1"`) {
				return fmt.Errorf("/animals/1: %d %s %v", code, b, err)
			}
			return nil
		})
		ok, failed, first := stop()
		if failed != 0 || ok == 0 {
			t.Fatalf("%d requests failed during the route change (%d ok); first: %s", failed, ok, first)
		}
		t.Logf("%d requests during the route change, none failed", ok)
	})

	t.Run("endpoint removal", func(t *testing.T) {
		stop := load()
		if err := rc.Deregister(ctx, "pets-2"); err != nil {
			t.Fatal(err)
		}
		tu.Eventually(t, 15*time.Second, func() error {
			for range 10 {
				_, b := c.must("GET", edgeURL+"/pets", viewer, nil, nil)
				if strings.Contains(string(b), `"pets-2"`) {
					return fmt.Errorf("pets-2 still serves")
				}
			}
			return nil
		})
		ok, failed, first := stop()
		if failed != 0 {
			t.Fatalf("%d requests failed during the endpoint removal (%d ok); first: %s", failed, ok, first)
		}
	})

	t.Run("control plane killed: the edge keeps serving", func(t *testing.T) {
		cp.Kill()
		stop := load()
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			code, b := c.must("GET", edgeURL+"/animals/2", viewer, nil, nil)
			if code != 200 {
				t.Fatalf("after the control plane died: %d %s", code, b)
			}
		}
		ok, failed, first := stop()
		if failed != 0 || ok == 0 {
			t.Fatalf("%d failed, %d ok; first: %s", failed, ok, first)
		}
		if code, b := c.must("GET", admin+"/readyz", "", nil, nil); code != 200 {
			t.Fatalf("readyz after the control plane died: %d %s", code, b)
		}
	})

	t.Run("access events reach stats", func(t *testing.T) {
		hdr := map[string]string{"X-Petmesh-Subject": "it", "X-Petmesh-Roles": "admin"}
		tu.Eventually(t, 15*time.Second, func() error {
			code, b, err := c.do("GET", stats.URL("http")+"/stats/requests?window=1h&by=route", "", hdr, nil)
			if err != nil || code != 200 {
				return fmt.Errorf("stats: %d %s %v", code, b, err)
			}
			var body struct {
				Overall struct{ Count int64 } `json:"overall"`
				Groups  []struct {
					Key   string `json:"key"`
					Count int64  `json:"count"`
				} `json:"groups"`
			}
			if err := json.Unmarshal(b, &body); err != nil {
				return err
			}
			if body.Overall.Count < 100 || !strings.Contains(string(b), `"pets"`) || !strings.Contains(string(b), `"animals"`) {
				return fmt.Errorf("stats has %d events: %s", body.Overall.Count, b)
			}
			return nil
		})
		code, m := c.must("GET", admin+"/metrics", "", nil, nil)
		if code != 200 || !strings.Contains(string(m), "petmesh_edge_events_sent_total") {
			t.Fatalf("metrics: %d", code)
		}
		if strings.Contains(edge.Output(), viewer) || strings.Contains(edge.Output(), root) {
			t.Fatal("a token appears in the edge's log")
		}
		if !strings.Contains(edge.Output(), `"msg":"access"`) {
			t.Fatal("no access-log line")
		}
	})

	t.Run("graceful stop", func(t *testing.T) {
		if err := edge.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := edge.Wait(30 * time.Second); err != nil {
			t.Fatalf("edge exit: %v", err)
		}
		if !strings.Contains(edge.Output(), `"msg":"edge stopped"`) {
			t.Fatal("no clean stop")
		}
	})
}
