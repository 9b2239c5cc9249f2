package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
)

// meshTable is the route table the control plane serves for the bench: the
// edge's own token and JWKS routes, and three routes to the one backend —
// public (no token), JWT (a valid ES256 token required) and through a
// sidecar (service "app", whose only instance is the sidecar in front of
// the backend; the sidecar verifies the token again).
const meshTable = `routes:
  - name: auth
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: well-known
    match: {prefix: /.well-known/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: public
    match: {prefix: /public/}
    auth: {public: true}
    targets: [{service: backend}]
    prefix_rewrite: /
  - name: jwt
    match: {prefix: /jwt/}
    targets: [{service: backend}]
    prefix_rewrite: /
  - name: mesh
    match: {prefix: /mesh/}
    targets: [{service: app}]
    prefix_rewrite: /
services:
  backend: {connect_timeout: 1s, circuit_breaker: {max_connections: 100000, max_pending: 100000, max_requests: 100000}}
  app: {connect_timeout: 1s, circuit_breaker: {max_connections: 100000, max_pending: 100000, max_requests: 100000}, bulkhead: {max_concurrent: 100000}}
`

// petmesh is the running mesh: control plane, edge and one sidecar.
type petmesh struct {
	cp, edge, sidecar *proc
	edgeAdmin         string
	sidecarAdmin      string
	tokenURL          string
	auth              http.Header // shared by the JWT targets; refresh renews it
	stopBeat          func()
}

func (m *petmesh) stop() {
	if m.stopBeat != nil {
		m.stopBeat()
	}
	for _, p := range []*proc{m.edge, m.sidecar, m.cp} {
		if p != nil {
			p.stop()
		}
	}
}

// startPetmesh runs the real control plane (built-in registry, file route
// store, meshTable), the edge and a sidecar in front of the backend, from
// the binaries in binDir; registers the backend as service "backend";
// obtains a user token; and returns the three petmesh targets once each
// answers 200.
func startPetmesh(ctx context.Context, dir, binDir string, backend int) (*petmesh, []*target, error) {
	d := filepath.Join(dir, "petmesh")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, nil, err
	}
	ports := map[string]int{}
	for _, n := range []string{"xds", "api", "edge", "edge-admin", "inbound", "outbound", "sidecar-admin"} {
		p, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		ports[n] = p
	}
	addr := func(n string) string { return "127.0.0.1:" + strconv.Itoa(ports[n]) }
	issuer := "http://" + addr("edge")
	regToken := "petmesh-bench-registration-token"
	files := map[string]string{
		"table.yaml":         meshTable,
		"registration-token": regToken + "\n",
	}
	hash, err := hashPassword(ctx, filepath.Join(binDir, "edge"), "bench-password")
	if err != nil {
		return nil, nil, err
	}
	files["users.yaml"] = fmt.Sprintf("users:\n  - username: bench\n    password_hash: %q\n    roles: [viewer]\n", hash)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o600); err != nil {
			return nil, nil, err
		}
	}
	env := []string{"OTEL_TRACES_EXPORTER=none"}
	m := &petmesh{edgeAdmin: "http://" + addr("edge-admin"), sidecarAdmin: "http://" + addr("sidecar-admin")}
	fail := func(err error) (*petmesh, []*target, error) {
		m.stop()
		return nil, nil, err
	}

	m.cp, err = startProc(d, "controlplane", filepath.Join(binDir, "controlplane"), []string{
		"-xds-addr", addr("xds"), "-api-addr", addr("api"),
		"-store-dir", filepath.Join(d, "store"), "-initial-table", filepath.Join(d, "table.yaml"),
		"-jwks-url", issuer + "/.well-known/jwks.json", "-issuer", issuer, "-edge-local-addr", addr("edge"),
		"-registration-token-file", filepath.Join(d, "registration-token"),
	}, env)
	if err != nil {
		return fail(err)
	}
	if err := waitHTTP(ctx, m.cp, "http://"+addr("api")+"/healthz", nil, http.StatusOK, 60*time.Second); err != nil {
		return fail(err)
	}
	// The backend is registered by the harness (no sidecar: the edge's
	// public and JWT routes go straight to it) and kept alive.
	reg, err := registry.NewHTTPClient("http://"+addr("api"), regToken)
	if err != nil {
		return fail(err)
	}
	inst := registry.Registration{Service: "backend", ID: "backend-1", Address: "127.0.0.1", Port: backend, Version: "v1", TTL: time.Hour}
	if err := reg.Register(ctx, inst); err != nil {
		return fail(fmt.Errorf("register the backend: %w", err))
	}
	m.stopBeat = heartbeat(reg, inst)

	m.edge, err = startProc(d, "edge", filepath.Join(binDir, "edge"), []string{
		"-addr", addr("edge"), "-admin-addr", addr("edge-admin"), "-xds-addr", addr("xds"),
		"-node-id", "edge~bench", "-users-file", filepath.Join(d, "users.yaml"),
		"-keys-dir", filepath.Join(d, "edge-keys"), "-issuer", issuer, "-token-ttl", "1h",
	}, env)
	if err != nil {
		return fail(err)
	}
	if err := waitHTTP(ctx, m.edge, m.edgeAdmin+"/readyz", nil, http.StatusOK, 60*time.Second); err != nil {
		return fail(err)
	}
	m.sidecar, err = startProc(d, "sidecar", filepath.Join(binDir, "sidecar"), []string{
		"-service", "app", "-instance", "app-1", "-version", "v1", "-app-addr", "127.0.0.1:" + strconv.Itoa(backend),
		"-inbound-addr", addr("inbound"), "-outbound-addr", addr("outbound"), "-admin-addr", addr("sidecar-admin"),
		"-xds-addr", addr("xds"), "-registry", "builtin", "-registry-url", "http://" + addr("api"),
		"-registration-token-file", filepath.Join(d, "registration-token"), "-pprof",
	}, env)
	if err != nil {
		return fail(err)
	}
	if err := waitHTTP(ctx, m.sidecar, m.sidecarAdmin+"/readyz", nil, http.StatusOK, 60*time.Second); err != nil {
		return fail(err)
	}
	m.tokenURL, m.auth = "http://"+addr("edge")+"/auth/token", http.Header{}
	if err := m.refresh(ctx); err != nil {
		return fail(fmt.Errorf("%w; edge log:\n%s", err, m.edge.tail()))
	}
	auth := m.auth
	base := "http://" + addr("edge")
	ver := "petmesh " + gitDescribe()
	ts := []*target{
		{Name: "petmesh-public", Desc: "edge, public route", URL: base + "/public" + benchPath, procs: []*proc{m.edge}},
		{Name: "petmesh-jwt", Desc: "edge, ES256 JWT route", URL: base + "/jwt" + benchPath, Header: auth, procs: []*proc{m.edge}},
		{Name: "petmesh-mesh", Desc: "edge (JWT) → sidecar (JWT) → app", URL: base + "/mesh" + benchPath, Header: auth, procs: []*proc{m.edge, m.sidecar}},
	}
	for _, t := range ts {
		t.Version = ver
		// Endpoints reach the edge by EDS shortly after its first
		// configuration: poll until the route answers.
		if err := waitHTTP(ctx, m.edge, t.URL, t.Header, http.StatusOK, 60*time.Second); err != nil {
			return fail(fmt.Errorf("%s: %w", t.Name, err))
		}
	}
	// The JWT routes must refuse a request without a token: otherwise the
	// JWT figures would not be measuring verification.
	for _, t := range ts[1:] {
		if err := waitHTTP(ctx, nil, t.URL, nil, http.StatusUnauthorized, 5*time.Second); err != nil {
			return fail(fmt.Errorf("%s without a token: %w", t.Name, err))
		}
	}
	return m, ts, nil
}

// refresh obtains a new user token for the JWT targets (tokens live an
// hour; the harness refreshes before each round).
func (m *petmesh) refresh(ctx context.Context) error {
	tok, err := login(ctx, m.tokenURL)
	if err != nil {
		return err
	}
	m.auth.Set("Authorization", "Bearer "+tok)
	return nil
}

// heartbeat renews the backend's registration every minute until stopped.
func heartbeat(reg *registry.HTTPClient, inst registry.Registration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if err := reg.Heartbeat(ctx, inst.ID); errors.Is(err, registry.ErrNotFound) {
					_ = reg.Register(ctx, inst)
				}
			}
		}
	})
	return func() { cancel(); wg.Wait() }
}

func hashPassword(ctx context.Context, edge, pw string) (string, error) {
	cmd := exec.CommandContext(ctx, edge, "hash-password", "-cost", "10")
	cmd.Stdin = strings.NewReader(pw + "\n")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("edge hash-password: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// login obtains a user token from the edge's token endpoint.
func login(ctx context.Context, url string) (string, error) {
	body, _ := json.Marshal(map[string]string{"username": "bench", "password": "bench-password"})
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return "", err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			var tok struct {
				AccessToken string `json:"access_token"`
			}
			derr := json.NewDecoder(resp.Body).Decode(&tok)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && derr == nil && tok.AccessToken != "" {
				return tok.AccessToken, nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("login at %s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// gitDescribe is $BENCH_COMMIT when set (a run from an exported tree),
// else the short commit of the working tree, or "dev".
func gitDescribe() string {
	if c := os.Getenv("BENCH_COMMIT"); c != "" {
		return c
	}
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "dev"
	}
	return strings.TrimSpace(string(out))
}
