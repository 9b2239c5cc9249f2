package sidecar_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/jwtauth"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

const (
	regToken     = "sidecar-test-registration-token-0123"
	testIssuer   = "petmesh-test"
	clientSecret = "client-secret-for-tests"
)

// table is the route table of the tests: two services. The echo service's
// active health check path (/ready, public on inbound by the translator)
// differs from the app health path the sidecar checks (/health), so the
// loopback exception of the sidecar is what lets /health through.
const table = `
routes:
  - name: echo
    match: {prefix: /echo}
    targets: [{service: echo}]
    timeout: 30s
  - name: client
    match: {prefix: /client}
    targets: [{service: client}]
services:
  echo:
    health_check: {path: /ready, interval: 1s, timeout: 500ms}
    bulkhead: {max_concurrent: 64}
  client:
    health_check: {path: /health, interval: 1s, timeout: 500ms}
`

// issuer is a real jwtauth issuer on httptest: JWKS and token endpoint
// (the service account "client").
type issuer struct {
	srv *httptest.Server
	is  *jwtauth.Issuer
}

var (
	hashOnce sync.Once
	hashVal  string
)

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	return newIssuerIn(t, t.TempDir())
}

// newIssuerIn is newIssuer (JWKS and the token endpoint of the service
// account "client") with its signing keys in dir, for tests that forge
// tokens with them.
func newIssuerIn(t *testing.T, dir string) *issuer {
	t.Helper()
	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: testIssuer, Audience: []string{"petmesh"}, TTL: 15 * time.Minute, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	hashOnce.Do(func() { hashVal, _ = jwtauth.HashPassword(clientSecret, jwtauth.MinBcryptCost) })
	accounts, err := jwtauth.NewServiceAccounts([]jwtauth.ServiceAccount{{ClientID: "client", SecretHash: hashVal, Roles: []string{"sync"}}})
	if err != nil {
		t.Fatal(err)
	}
	th, err := jwtauth.NewTokenHandler(jwtauth.TokenHandlerConfig{Issuer: is, ServiceAccounts: accounts})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/auth/token", th)
	mux.Handle("/.well-known/jwks.json", ks.JWKSHandler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &issuer{srv: srv, is: is}
}

func (i *issuer) jwksURL() string  { return i.srv.URL + "/.well-known/jwks.json" }
func (i *issuer) tokenURL() string { return i.srv.URL + "/auth/token" }

func (i *issuer) token(t *testing.T, sub string, roles ...string) string {
	t.Helper()
	tok, err := i.is.Issue(sub, roles)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Raw
}

// app is a small local app: /health answers 200 or 503 as told, /slow
// blocks until released, everything else echoes what it received.
type app struct {
	srv     *httptest.Server
	healthy atomic.Bool
	started chan struct{}
	release chan struct{}
}

type echoed struct {
	Path    string `json:"path"`
	Host    string `json:"host"`
	Subject string `json:"subject"`
	Roles   string `json:"roles"`
	Auth    bool   `json:"auth"`
	Spoofed string `json:"spoofed"`
}

func newApp(t *testing.T, healthy bool) *app {
	t.Helper()
	a := &app{started: make(chan struct{}, 16), release: make(chan struct{})}
	a.healthy.Store(healthy)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health":
			if !a.healthy.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, `{"status":"ok"}`)
		case strings.HasSuffix(r.URL.Path, "/slow"):
			a.started <- struct{}{}
			<-a.release
			_, _ = io.WriteString(w, "slow done")
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(echoed{
				Path: r.URL.Path, Host: r.Host,
				Subject: r.Header.Get("X-Petmesh-Subject"), Roles: r.Header.Get("X-Petmesh-Roles"),
				Auth: r.Header.Get("Authorization") != "", Spoofed: r.Header.Get("X-Petmesh-Spoof"),
			})
		}
	}))
	t.Cleanup(func() {
		select {
		case <-a.release:
		default:
			close(a.release)
		}
		a.srv.Close()
	})
	return a
}

func (a *app) addr() string { return strings.TrimPrefix(a.srv.URL, "http://") }

func startControlPlane(t *testing.T, iss *issuer) *tu.Process {
	t.Helper()
	return startControlPlaneAt(t, iss, "127.0.0.1:0", "127.0.0.1:0")
}

func startControlPlaneAt(t *testing.T, iss *issuer, xdsAddr, apiAddr string) *tu.Process {
	t.Helper()
	// Later flags win: these replace startControlPlaneWith's free ports.
	return startControlPlaneWith(t, iss, []string{"-audience", "petmesh", "-xds-addr", xdsAddr, "-api-addr", apiAddr}, nil)
}

type sidecarOpts struct {
	service, instance string
	app               *app
	cp                *tu.Process
	xdsAddr, apiURL   string // instead of cp
	args              []string
	env               []string
}

func startSidecar(t *testing.T, o sidecarOpts) *tu.Process {
	t.Helper()
	bin := tu.BuildBinary(t, "./sidecar/cmd/sidecar")
	if o.cp != nil {
		o.xdsAddr, o.apiURL = o.cp.Addr("xds"), o.cp.URL("api")
	}
	args := []string{
		"-service", o.service, "-instance", o.instance, "-version", "v1", "-app-addr", o.app.addr(),
		"-inbound-addr", "127.0.0.1:0", "-outbound-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0",
		"-xds-addr", o.xdsAddr, "-registry-url", o.apiURL,
		"-ttl", "1500ms", "-health-interval", "200ms", "-deregister-wait", "3s", "-drain-timeout", "10s",
	}
	return tu.Start(t, bin, tu.StartOptions{
		Args:      append(args, o.args...),
		Env:       append([]string{"SIDECAR_REGISTRATION_TOKEN=" + regToken}, o.env...),
		Listeners: []string{"inbound", "outbound", "admin"},
	})
}

// instance returns the registered instance id of the built-in registry.
func instance(t *testing.T, cp *tu.Process, id string) (registry.Instance, bool) {
	t.Helper()
	c, err := registry.NewHTTPClient(cp.URL("api"), regToken)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := c.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("registry snapshot: %v", err)
	}
	return snap.Instance(id)
}

func waitHealth(t *testing.T, cp *tu.Process, id string, want registry.Health) {
	t.Helper()
	tu.Eventually(t, 10*time.Second, func() error {
		in, ok := instance(t, cp, id)
		if !ok {
			return fmt.Errorf("%s not registered", id)
		}
		if in.Health != want {
			return fmt.Errorf("%s is %s, want %s", id, in.Health, want)
		}
		return nil
	})
}

var httpClient = &http.Client{Timeout: 20 * time.Second}

// call sends a request and returns the status and body.
func call(t *testing.T, method, url string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func statusOf(url string, hdr map[string]string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// waitServing waits until the sidecar is ready and serves the app.
func waitReady(t *testing.T, sc *tu.Process) {
	t.Helper()
	tu.Eventually(t, 15*time.Second, func() error {
		code, err := statusOf(sc.URL("admin")+"/readyz", nil)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
}

func TestInboundAuth(t *testing.T) {
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	a := newApp(t, true)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-1", app: a, cp: cp})
	waitReady(t, sc)
	waitHealth(t, cp, "echo-1", registry.HealthPassing)

	valid := iss.token(t, "alice", "viewer")
	in := sc.URL("inbound")
	cases := []struct {
		desc    string
		method  string
		path    string
		hdr     map[string]string
		want    int
		subject string
	}{
		{"no token", "GET", "/echo/x", nil, http.StatusUnauthorized, ""},
		{"garbage token", "GET", "/echo/x", map[string]string{"Authorization": "Bearer not-a-jwt"}, http.StatusUnauthorized, ""},
		{"valid token", "GET", "/echo/x", map[string]string{"Authorization": "Bearer " + valid}, http.StatusOK, "alice"},
		{"valid token, catch-all route", "GET", "/other", map[string]string{"Authorization": "Bearer " + valid}, http.StatusOK, "alice"},
		{"spoofed identity header replaced", "GET", "/echo/x", map[string]string{"Authorization": "Bearer " + valid, "X-Petmesh-Subject": "root", "X-Petmesh-Spoof": "1"}, http.StatusOK, "alice"},
		{"spoofed identity without token", "GET", "/echo/x", map[string]string{"X-Petmesh-Subject": "root"}, http.StatusUnauthorized, ""},
		{"loopback health check without token", "GET", "/health", nil, http.StatusOK, ""},
		{"health check with a bad token is verified", "GET", "/health", map[string]string{"Authorization": "Bearer not-a-jwt"}, http.StatusUnauthorized, ""},
		{"POST to the health path needs a token", "POST", "/health", nil, http.StatusUnauthorized, ""},
		{"active health check path is public", "GET", "/ready", nil, http.StatusOK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			code, body := call(t, tc.method, in+tc.path, tc.hdr)
			if code != tc.want {
				t.Fatalf("status %d, want %d: %s", code, tc.want, body)
			}
			if code == http.StatusUnauthorized && !strings.Contains(string(body), `"error"`) {
				t.Fatalf("401 without a JSON error: %s", body)
			}
			if tc.subject != "" {
				var e echoed
				if err := json.Unmarshal(body, &e); err != nil {
					t.Fatalf("app answer %s: %v", body, err)
				}
				if e.Subject != tc.subject {
					t.Fatalf("app saw subject %q, want %q", e.Subject, tc.subject)
				}
				if e.Spoofed != "" {
					t.Fatalf("client-sent x-petmesh-* header reached the app")
				}
				if !e.Auth {
					t.Fatal("the token was not forwarded to the app")
				}
			}
		})
	}

	t.Run("access log is JSON and never holds the token", func(t *testing.T) {
		tu.Eventually(t, 5*time.Second, func() error {
			if !strings.Contains(sc.Output(), `"msg":"access"`) {
				return errors.New("no access log line yet")
			}
			return nil
		})
		out := sc.Output()
		if strings.Contains(out, valid) || strings.Contains(out, "not-a-jwt") {
			t.Fatal("a token appears in the sidecar's log")
		}
		if !strings.Contains(out, `"subject":"alice"`) {
			t.Fatal("access log lacks the verified subject")
		}
	})

	t.Run("metrics and config dump", func(t *testing.T) {
		code, body := call(t, "GET", sc.URL("admin")+"/metrics", nil)
		if code != 200 || !strings.Contains(string(body), `petmesh_dataplane_requests_total{cluster="local_app"`) {
			t.Fatalf("metrics %d lack inbound request counts:\n%.2000s", code, body)
		}
		for _, m := range []string{"petmesh_sidecar_app_healthy 1", "petmesh_sidecar_registered 1", "petmesh_xds_connected 1"} {
			if !strings.Contains(string(body), m) {
				t.Errorf("metrics lack %q", m)
			}
		}
		code, body = call(t, "GET", sc.URL("admin")+"/config_dump", nil)
		if code != 200 || !strings.Contains(string(body), "local_app") {
			t.Fatalf("config_dump %d: %.500s", code, body)
		}
	})
}

func TestRegistersOnlyAfterAppHealthy(t *testing.T) {
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	a := newApp(t, false)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-late", app: a, cp: cp})

	// Several health intervals pass with the app unhealthy: not registered,
	// not ready, inbound closed.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if _, ok := instance(t, cp, "echo-late"); ok {
			t.Fatal("registered before the app was healthy")
		}
		time.Sleep(100 * time.Millisecond) // negative assertion over a window
	}
	if code, _ := call(t, "GET", sc.URL("admin")+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz %d before the app is healthy, want 503", code)
	}
	if code, body := call(t, "GET", sc.URL("inbound")+"/echo/x", map[string]string{"Authorization": "Bearer " + iss.token(t, "alice")}); code != http.StatusServiceUnavailable {
		t.Fatalf("inbound %d before the app is healthy, want 503: %s", code, body)
	}

	a.healthy.Store(true)
	waitHealth(t, cp, "echo-late", registry.HealthPassing)
	waitReady(t, sc)
	in, _ := instance(t, cp, "echo-late")
	if in.Version != "v1" || in.Address != "127.0.0.1" || fmt.Sprint(in.Port) != strings.Split(sc.Addr("inbound"), ":")[1] {
		t.Fatalf("registered %+v, want version v1 at the inbound address %s", in, sc.Addr("inbound"))
	}

	t.Run("app failing turns critical, recovering turns passing, transitions logged", func(t *testing.T) {
		a.healthy.Store(false)
		waitHealth(t, cp, "echo-late", registry.HealthCritical)
		tu.Eventually(t, 5*time.Second, func() error {
			if code, _ := statusOf(sc.URL("admin")+"/readyz", nil); code != http.StatusServiceUnavailable {
				return fmt.Errorf("readyz %d with the app unhealthy", code)
			}
			return nil
		})
		a.healthy.Store(true)
		waitHealth(t, cp, "echo-late", registry.HealthPassing)
		out := sc.Output()
		for _, want := range []string{`"from":"unknown","to":"critical"`, `"from":"critical","to":"passing"`, `"from":"passing","to":"critical"`} {
			if !strings.Contains(out, want) {
				t.Errorf("log lacks %s", want)
			}
		}
	})
}

func TestSIGTERMDeregistersThenDrains(t *testing.T) {
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	a := newApp(t, true)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-term", app: a, cp: cp})
	waitReady(t, sc)
	waitHealth(t, cp, "echo-term", registry.HealthPassing)

	tok := iss.token(t, "alice")
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, sc.URL("inbound")+"/echo/slow", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := httpClient.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		done <- result{code: resp.StatusCode, body: string(b)}
	}()
	select {
	case <-a.started:
	case <-time.After(10 * time.Second):
		t.Fatal("slow request did not reach the app")
	}

	if err := sc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Deregistered while the in-flight request is still running.
	tu.Eventually(t, 5*time.Second, func() error {
		if _, ok := instance(t, cp, "echo-term"); ok {
			return errors.New("still registered")
		}
		return nil
	})
	if sc.Exited() {
		t.Fatal("exited before the in-flight request finished")
	}
	tu.Eventually(t, 5*time.Second, func() error {
		if code, _ := statusOf(sc.URL("admin")+"/readyz", nil); code != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d while draining", code)
		}
		return nil
	})
	close(a.release)
	r := <-done
	if r.err != nil || r.code != http.StatusOK || r.body != "slow done" {
		t.Fatalf("in-flight request: %d %q %v, want 200", r.code, r.body, r.err)
	}
	if err := sc.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	out := sc.Output()
	iDereg, iProp, iDrained := strings.Index(out, `"msg":"deregistered"`), strings.Index(out, `"msg":"removal propagated"`), strings.Index(out, `"msg":"drained; exiting"`)
	if iDereg < 0 || iProp < iDereg || iDrained < iProp {
		t.Fatalf("shutdown order: deregistered at %d, propagated at %d, drained at %d", iDereg, iProp, iDrained)
	}
}

func TestQuitQuitQuit(t *testing.T) {
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	a := newApp(t, true)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-job", app: a, cp: cp, args: []string{"-deregister-wait", "200ms"}})
	waitHealth(t, cp, "echo-job", registry.HealthPassing)

	if code, _ := call(t, "GET", sc.URL("admin")+"/quitquitquit", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /quitquitquit: %d, want 405", code)
	}
	if code, body := call(t, "POST", sc.URL("admin")+"/quitquitquit", nil); code != http.StatusOK {
		t.Fatalf("POST /quitquitquit: %d %s", code, body)
	}
	if err := sc.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if _, ok := instance(t, cp, "echo-job"); ok {
		t.Fatal("still registered after /quitquitquit")
	}
}

func TestEgressByNameWithServiceToken(t *testing.T) {
	iss := newIssuer(t)
	cp := startControlPlane(t, iss)
	echoApp := newApp(t, true)
	clientApp := newApp(t, true)
	echo := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-1", app: echoApp, cp: cp})
	client := startSidecar(t, sidecarOpts{
		service: "client", instance: "client-1", app: clientApp, cp: cp,
		args: []string{"-token-url", iss.tokenURL(), "-client-id", "client"},
		env:  []string{"SIDECAR_CLIENT_SECRET=" + clientSecret},
	})
	waitReady(t, echo)
	waitReady(t, client)
	waitHealth(t, cp, "echo-1", registry.HealthPassing)

	out := client.URL("outbound")
	user := iss.token(t, "alice", "viewer")
	cases := []struct {
		desc    string
		path    string
		hdr     map[string]string
		subject string
	}{
		{"Host: service", "/echo/a", map[string]string{"Host": "echo"}, "client"},
		{"Host: service.mesh with port", "/echo/b", map[string]string{"Host": "echo.mesh:80"}, "client"},
		{"catch-all route of the service", "/anything", map[string]string{"Host": "echo"}, "client"},
		{"caller's own token is kept", "/echo/c", map[string]string{"Host": "echo", "Authorization": "Bearer " + user}, "alice"},
	}
	for _, tc := range cases {
		t.Run(tc.desc, func(t *testing.T) {
			var e echoed
			tu.Eventually(t, 10*time.Second, func() error {
				code, body := call(t, "GET", out+tc.path, tc.hdr)
				if code != http.StatusOK {
					return fmt.Errorf("status %d: %s", code, body)
				}
				return json.Unmarshal(body, &e)
			})
			if e.Subject != tc.subject {
				t.Fatalf("echo app saw subject %q, want %q", e.Subject, tc.subject)
			}
			if e.Path != tc.path {
				t.Fatalf("echo app saw path %q, want %q", e.Path, tc.path)
			}
		})
	}
	t.Run("unknown service", func(t *testing.T) {
		code, body := call(t, "GET", out+"/x", map[string]string{"Host": "nope"})
		if code != http.StatusNotFound {
			t.Fatalf("status %d, want 404: %s", code, body)
		}
	})
	t.Run("control plane away: last good config keeps serving", func(t *testing.T) {
		cp.Kill()
		for i := range 20 {
			code, body := call(t, "GET", out+"/echo/after", map[string]string{"Host": "echo"})
			if code != http.StatusOK {
				t.Fatalf("request %d after the control plane stopped: %d %s", i, code, body)
			}
		}
	})
	t.Run("trace context crosses the hop", func(t *testing.T) {
		tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		code, _ := call(t, "GET", out+"/echo/trace", map[string]string{"Host": "echo", "Traceparent": tp})
		if code != 200 {
			t.Fatalf("status %d", code)
		}
		tu.Eventually(t, 5*time.Second, func() error {
			if !strings.Contains(echo.Output(), `"trace_id":"0af7651916cd43dd8448eb211c80319c"`) {
				return errors.New("callee's access log lacks the caller's trace id")
			}
			return nil
		})
	})
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestStartsBeforeControlPlane: processes start in any order. The sidecar
// comes up first, retries the control plane and the registry, and
// registers once both are there.
func TestStartsBeforeControlPlane(t *testing.T) {
	iss := newIssuer(t)
	a := newApp(t, true)
	xdsAddr, apiAddr := freeAddr(t), freeAddr(t)
	sc := startSidecar(t, sidecarOpts{service: "echo", instance: "echo-early", app: a, xdsAddr: xdsAddr, apiURL: "http://" + apiAddr})
	if code, _ := call(t, "GET", sc.URL("admin")+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz %d without a control plane, want 503", code)
	}
	cp := startControlPlaneAt(t, iss, xdsAddr, apiAddr)
	waitHealth(t, cp, "echo-early", registry.HealthPassing)
	waitReady(t, sc)
	code, body := call(t, "GET", sc.URL("inbound")+"/echo/x", map[string]string{"Authorization": "Bearer " + iss.token(t, "alice")})
	if code != http.StatusOK {
		t.Fatalf("inbound %d: %s", code, body)
	}
}
