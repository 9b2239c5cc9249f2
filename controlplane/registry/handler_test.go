package registry_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/petmesh/petmesh/controlplane/registry"
)

func newAPI(t *testing.T) (*registry.Memory, *httptest.Server) {
	t.Helper()
	m := newMemory(t, registry.MemoryOptions{})
	h, err := registry.NewHandler(m, registry.HandlerOptions{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return m, srv
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

func call(t *testing.T, srv *httptest.Server, method, path, auth, body string) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func TestHandler(t *testing.T) {
	const ok = "Bearer " + testToken
	const valid = `{"service":"pets","id":"pets-1","address":"127.0.0.1","port":9001,"version":"v1","metadata":{"zone":"a"},"ttl":"10s"}`
	for _, tc := range []struct {
		desc       string
		setup      bool // register pets-1 first
		method     string
		path       string
		auth       string
		body       string
		wantStatus int
		wantField  string
		wantCode   string
	}{
		{desc: "register", method: "POST", path: "/v1/registry/instances", auth: ok, body: valid, wantStatus: 201},
		{desc: "register without token", method: "POST", path: "/v1/registry/instances", body: valid, wantStatus: 401, wantCode: "unauthenticated"},
		{desc: "register with wrong token", method: "POST", path: "/v1/registry/instances", auth: "Bearer nope", body: valid, wantStatus: 401, wantCode: "unauthenticated"},
		{desc: "register with basic auth", method: "POST", path: "/v1/registry/instances", auth: "Basic " + testToken, body: valid, wantStatus: 401},
		{desc: "token prefix is not enough", method: "POST", path: "/v1/registry/instances", auth: ok[:len(ok)-1], body: valid, wantStatus: 401},
		{desc: "missing service", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"id":"x","address":"127.0.0.1","port":1}`, wantStatus: 400, wantField: "service"},
		{desc: "bad address", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"not an address","port":1}`, wantStatus: 400, wantField: "address"},
		{desc: "port out of range", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":0}`, wantStatus: 400, wantField: "port"},
		{desc: "port of the wrong type", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":"80"}`, wantStatus: 400, wantField: "port"},
		{desc: "ttl not a duration", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":1,"ttl":"ten"}`, wantStatus: 400, wantField: "ttl"},
		{desc: "ttl negative", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":1,"ttl":"-5s"}`, wantStatus: 400, wantField: "ttl"},
		{desc: "ttl too long", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":1,"ttl":"2h"}`, wantStatus: 400, wantField: "ttl"},
		{desc: "unknown field", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":1,"tags":[]}`, wantStatus: 400, wantField: "tags"},
		{desc: "reserved metadata key", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":"pets","id":"x","address":"127.0.0.1","port":1,"metadata":{"consul-x":"y"}}`, wantStatus: 400, wantField: "metadata.consul-x"},
		{desc: "malformed json", method: "POST", path: "/v1/registry/instances", auth: ok, body: `{"service":`, wantStatus: 400, wantField: "body"},
		{desc: "heartbeat", setup: true, method: "PUT", path: "/v1/registry/instances/pets-1/heartbeat", auth: ok, wantStatus: 204},
		{desc: "heartbeat with status", setup: true, method: "PUT", path: "/v1/registry/instances/pets-1/heartbeat", auth: ok, body: `{"status":"critical","output":"db down"}`, wantStatus: 204},
		{desc: "heartbeat with bad status", setup: true, method: "PUT", path: "/v1/registry/instances/pets-1/heartbeat", auth: ok, body: `{"status":"sick"}`, wantStatus: 400, wantField: "status"},
		{desc: "heartbeat output without status", setup: true, method: "PUT", path: "/v1/registry/instances/pets-1/heartbeat", auth: ok, body: `{"output":"x"}`, wantStatus: 400, wantField: "status"},
		{desc: "heartbeat unknown id", method: "PUT", path: "/v1/registry/instances/nobody/heartbeat", auth: ok, wantStatus: 404, wantCode: "not_found"},
		{desc: "heartbeat without token", setup: true, method: "PUT", path: "/v1/registry/instances/pets-1/heartbeat", wantStatus: 401},
		{desc: "deregister", setup: true, method: "DELETE", path: "/v1/registry/instances/pets-1", auth: ok, wantStatus: 204},
		{desc: "deregister unknown id", method: "DELETE", path: "/v1/registry/instances/nobody", auth: ok, wantStatus: 404},
		{desc: "list", setup: true, method: "GET", path: "/v1/registry/instances", auth: ok, wantStatus: 200},
		{desc: "list without token", method: "GET", path: "/v1/registry/instances", wantStatus: 401},
		{desc: "unknown path", method: "GET", path: "/v1/registry/nothing", auth: ok, wantStatus: 404},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			m, srv := newAPI(t)
			if tc.setup {
				if err := m.Register(t.Context(), registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 9001}); err != nil {
					t.Fatal(err)
				}
			}
			status, hdr, body := call(t, srv, tc.method, tc.path, tc.auth, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", status, tc.wantStatus, body)
			}
			if status >= 400 {
				var e apiError
				if err := json.Unmarshal(body, &e); err != nil {
					t.Fatalf("error body %q: %v", body, err)
				}
				if e.Error.Field != tc.wantField {
					t.Fatalf("field %q, want %q (%s)", e.Error.Field, tc.wantField, body)
				}
				if tc.wantCode != "" && e.Error.Code != tc.wantCode {
					t.Fatalf("code %q, want %q", e.Error.Code, tc.wantCode)
				}
				if status == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("401 without WWW-Authenticate: %v", hdr)
				}
			}
		})
	}
}

func TestHandlerEffects(t *testing.T) {
	m, srv := newAPI(t)
	auth := "Bearer " + testToken
	status, hdr, body := call(t, srv, "POST", "/v1/registry/instances", auth,
		`{"service":"pets","id":"pets-1","address":"127.0.0.1","port":9001,"version":"v2","metadata":{"zone":"a"},"ttl":"30s"}`)
	if status != 201 || hdr.Get("Location") != "/v1/registry/instances/pets-1" {
		t.Fatalf("register: %d %v %s", status, hdr, body)
	}
	call(t, srv, "POST", "/v1/registry/instances", auth, `{"service":"stats","id":"stats-1","address":"127.0.0.1","port":9002}`)
	if status, _, body := call(t, srv, "PUT", "/v1/registry/instances/pets-1/heartbeat", auth, `{"status":"critical","output":"db down"}`); status != 204 {
		t.Fatalf("heartbeat: %d %s", status, body)
	}
	s, err := m.Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	in, ok := s.Instance("pets-1")
	if !ok || in.Health != registry.HealthCritical || in.Output != "db down" || in.Version != "v2" || in.Metadata["zone"] != "a" {
		t.Fatalf("instance after heartbeat: %+v", in)
	}

	status, _, body = call(t, srv, "GET", "/v1/registry/instances?service=pets", auth, "")
	var l registry.InstanceList
	if err := json.Unmarshal(body, &l); status != 200 || err != nil {
		t.Fatalf("list: %d %v %s", status, err, body)
	}
	if len(l.Instances) != 1 || l.Instances[0].ID != "pets-1" || l.Instances[0].Health != registry.HealthCritical {
		t.Fatalf("list pets: %+v", l)
	}
	if _, _, body = call(t, srv, "GET", "/v1/registry/instances", auth, ""); !strings.Contains(string(body), `"stats-1"`) {
		t.Fatalf("list all: %s", body)
	}

	if status, _, _ := call(t, srv, "DELETE", "/v1/registry/instances/pets-1", auth, ""); status != 204 {
		t.Fatalf("deregister: %d", status)
	}
	if s, _ := m.Snapshot(t.Context()); len(s.Instances("pets")) != 0 {
		t.Fatalf("pets still registered: %+v", s)
	}
}

func TestHTTPClientErrors(t *testing.T) {
	_, srv := newAPI(t)
	for _, tc := range []struct {
		desc  string
		token string
		call  func(c *registry.HTTPClient) error
		check func(error) bool
	}{
		{desc: "wrong token", token: "wrong", call: func(c *registry.HTTPClient) error {
			return c.Register(t.Context(), registry.Registration{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 1})
		}, check: func(err error) bool { return errors.Is(err, registry.ErrUnauthenticated) }},
		{desc: "unknown id", token: testToken, call: func(c *registry.HTTPClient) error { return c.Heartbeat(t.Context(), "nobody") },
			check: func(err error) bool { return errors.Is(err, registry.ErrNotFound) }},
		{desc: "invalid status caught locally", token: testToken, call: func(c *registry.HTTPClient) error {
			return c.SetHealth(t.Context(), "p1", "sick", "")
		}, check: func(err error) bool {
			var ve *registry.ValidationError
			return errors.As(err, &ve) && ve.Field == "status"
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c, err := registry.NewHTTPClient(srv.URL, tc.token)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.call(c); !tc.check(err) {
				t.Fatalf("unexpected error %v", err)
			}
		})
	}
	for _, tc := range []struct{ desc, url, token string }{
		{desc: "no scheme", url: "127.0.0.1:18080", token: "x"},
		{desc: "no host", url: "http://", token: "x"},
		{desc: "no token", url: "http://127.0.0.1:1", token: ""},
	} {
		t.Run("constructor "+tc.desc, func(t *testing.T) {
			if _, err := registry.NewHTTPClient(tc.url, tc.token); err == nil {
				t.Fatal("want error")
			}
		})
	}
}
