package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/dev/launcher"
	"github.com/petmesh/petmesh/internal/testutil"
)

// binaries of the topology: launcher binary name → package.
var binaries = map[string]string{
	"controlplane":      "./controlplane/cmd/controlplane",
	"petctl":            "./controlplane/cmd/petctl",
	"edge":              "./edge/cmd/edge",
	"sidecar":           "./sidecar/cmd/sidecar",
	"pets":              "./services/pets/cmd/pets",
	"sync":              "./services/sync/cmd/sync",
	"stats":             "./services/stats/cmd/stats",
	"petfinder-standin": "./dev/petfinder-standin/cmd/petfinder-standin",
}

// healthInterval is the sidecars' app health check period in the test
// topology (default 2s): the kill -9 scenario bounds the removal of a dead
// instance by 2s plus this interval.
const healthInterval = 500 * time.Millisecond

// fixtures is the number of animals the Petfinder stand-in serves by
// default; the initial sync copies all of them into pets.
const fixtures = 250

// mesh is a running topology.
type mesh struct {
	t      *testing.T
	l      *launcher.Launcher
	o      launcher.Options
	a      launcher.Addrs
	petctl string
	client *http.Client

	pets1, pets2, syncI, stats launcher.Instance

	tokMu  sync.Mutex
	tokens map[string]string
}

// startMesh builds the binaries and starts the make-run topology on free
// ports with the given registry ("builtin", or "consul" with an agent
// already running at consulAddr). Everything is stopped when t ends.
//
// opts adjust the launcher options before anything starts (TestTraces
// points every process's OTLP exporter at a Jaeger).
func startMesh(t *testing.T, registry, consulAddr string, opts ...func(*launcher.Options)) *mesh {
	t.Helper()
	began := time.Now()
	var binDir string
	for name, pkg := range binaries {
		p := testutil.BuildBinary(t, pkg)
		if filepath.Base(p) != name {
			t.Fatalf("binary of %s is %s, want the name %s", pkg, p, name)
		}
		binDir = filepath.Dir(p)
	}
	built := time.Now()
	dir := t.TempDir()
	if keep := os.Getenv("PETMESH_E2E_KEEP"); keep != "" {
		// Keep the run directory (logs, data) for a look afterwards.
		d, err := os.MkdirTemp(keep, "petmesh-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
		t.Logf("run directory %s", dir)
	}
	if err := launcher.Prepare(dir); err != nil {
		t.Fatal(err)
	}
	a := freeAddrs(t)
	a.Consul = consulAddr
	o := launcher.Options{BinDir: binDir, RunDir: dir, Registry: registry, Addrs: a}
	for _, f := range opts {
		f(&o)
	}
	m := &mesh{t: t, o: o, a: a, petctl: filepath.Join(binDir, "petctl"), tokens: map[string]string{},
		l: &launcher.Launcher{BinDir: binDir, RunDir: dir, Out: io.Discard, StartTimeout: 60 * time.Second, StopTimeout: 20 * time.Second},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 256, MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}},
	}
	m.pets1, m.pets2, m.syncI, m.stats = a.Instances()
	t.Cleanup(func() {
		stopping := time.Now()
		if err := m.l.StopAll(); err != nil {
			t.Errorf("stop the mesh: %v", err)
		}
		t.Logf("mesh stopped in %v", time.Since(stopping).Round(time.Millisecond))
		m.client.CloseIdleConnections()
		if t.Failed() {
			m.dumpLogs()
		}
	})
	ctx := testutil.Context(t)
	for _, p := range launcher.Topology(o) {
		if err := m.l.Start(ctx, tuned(p)); err != nil {
			t.Fatalf("start the mesh: %v", err)
		}
	}
	started := time.Now()
	// Converged: the initial sync has copied the fixtures into pets.
	ops := m.token("ops")
	testutil.Eventually(t, 30*time.Second, func() error {
		n, err := m.countPets(ops)
		if err != nil {
			return err
		}
		if n != fixtures {
			return fmt.Errorf("pets has %d pets, want %d", n, fixtures)
		}
		return nil
	})
	t.Logf("binaries built in %v, mesh started in %v, converged after %v more",
		built.Sub(began).Round(time.Millisecond), started.Sub(built).Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	return m
}

// tuned adapts a process of the dev topology to the tests (flags given
// twice: the last one wins).
func tuned(p launcher.Proc) launcher.Proc {
	if strings.HasPrefix(p.Name, "sidecar-") {
		p.Args = append(append([]string(nil), p.Args...), "-health-interval", healthInterval.String())
	}
	return p
}

// freeAddrs allocates the topology's ports below the kernel's ephemeral
// range (32768+), so that no socket another test binds to port 0, and no
// outgoing connection, can take one between this check and the process
// binding it. Each port is held until all are found.
func freeAddrs(t *testing.T) launcher.Addrs {
	t.Helper()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	next := func() string {
		for range 1000 {
			port := 20000 + rand.IntN(12000)
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				continue
			}
			held = append(held, l)
			return l.Addr().String()
		}
		t.Fatal("no free port found in 20000-31999")
		return ""
	}
	inst := func() launcher.InstanceAddrs {
		return launcher.InstanceAddrs{App: next(), AppAdmin: next(), SidecarAdmin: next(), Inbound: next(), Outbound: next()}
	}
	return launcher.Addrs{Edge: next(), EdgeAdmin: next(), XDS: next(), API: next(), Standin: next(),
		Pets1: inst(), Pets2: inst(), Sync: inst(), Stats: inst()}
}

// dumpLogs prints the tail of every process log.
func (m *mesh) dumpLogs() {
	files, _ := filepath.Glob(filepath.Join(m.o.RunDir, "logs", "*.log"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		var keep []string
		for _, l := range lines {
			if !strings.Contains(l, `"msg":"access"`) || strings.Contains(l, `"status":5`) {
				keep = append(keep, l)
			}
		}
		if len(keep) > 60 {
			keep = keep[len(keep)-60:]
		}
		m.t.Logf("--- %s (last %d non-access lines of %d) ---\n%s", filepath.Base(f), len(keep), len(lines), strings.Join(keep, "\n"))
	}
}

func (m *mesh) edgeURL(path string) string { return "http://" + m.a.Edge + path }
func (m *mesh) apiURL(path string) string  { return "http://" + m.a.API + path }

var passwords = map[string]string{"alice": "alice-dev", "ops": "ops-dev"}

// token logs in through the edge once per user and mesh (the /auth/ route
// is rate limited per client IP).
func (m *mesh) token(user string) string {
	m.t.Helper()
	m.tokMu.Lock()
	defer m.tokMu.Unlock()
	if tok, ok := m.tokens[user]; ok {
		return tok
	}
	tok, status, err := m.login(user, passwords[user])
	if err != nil || status != http.StatusOK {
		m.t.Fatalf("log in as %s: status %d: %v", user, status, err)
	}
	m.tokens[user] = tok
	return tok
}

// login posts the credentials to the edge's token endpoint.
func (m *mesh) login(user, password string) (token string, status int, err error) {
	body, _ := json.Marshal(map[string]string{"username": user, "password": password})
	resp, err := m.client.Post(m.edgeURL("/auth/token"), "application/json", bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return "", resp.StatusCode, fmt.Errorf("%s", b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", resp.StatusCode, err
	}
	if out.AccessToken == "" || out.TokenType != "Bearer" {
		return "", resp.StatusCode, fmt.Errorf("token response %+v", out)
	}
	return out.AccessToken, resp.StatusCode, nil
}

// do sends a request with an optional bearer token and returns the
// response with its body read.
func (m *mesh) do(method, url, token string, body any) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// getJSON GETs url and decodes a 200 JSON answer into out.
func (m *mesh) getJSON(url, token string, out any) error {
	resp, b, err := m.do(http.MethodGet, url, token, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("GET %s: %w: %s", url, err, b)
	}
	return nil
}

// countPets pages through GET /pets on the edge.
func (m *mesh) countPets(token string) (int, error) {
	n, cursor := 0, ""
	for range 100 {
		var page struct {
			Pets       []json.RawMessage `json:"pets"`
			NextCursor string            `json:"next_cursor"`
		}
		u := m.edgeURL("/pets?limit=100")
		if cursor != "" {
			u += "&cursor=" + cursor
		}
		if err := m.getJSON(u, token, &page); err != nil {
			return 0, err
		}
		n += len(page.Pets)
		if page.NextCursor == "" {
			return n, nil
		}
		cursor = page.NextCursor
	}
	return 0, errors.New("more than 100 pages of pets")
}

// runPetctl runs the real petctl binary as ops.
func (m *mesh) runPetctl(args ...string) (string, error) {
	cmd := exec.Command(m.petctl, args...)
	cmd.Env = append(os.Environ(), "PETMESH_API=http://"+m.a.API, "PETMESH_TOKEN="+m.token("ops"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// accessLines returns the access log lines of a process's log.
func (m *mesh) accessLines(proc string) ([]accessLine, error) {
	f, err := os.Open(filepath.Join(m.o.RunDir, "logs", proc+".log"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []accessLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), []byte(`"msg":"access"`)) {
			continue
		}
		var a accessLine
		if json.Unmarshal(sc.Bytes(), &a) == nil && a.Msg == "access" {
			out = append(out, a)
		}
	}
	return out, sc.Err()
}

// accessLine is the part of an edge or sidecar access log line the tests
// read.
type accessLine struct {
	Msg       string `json:"msg"`
	Listener  string `json:"listener"`
	Method    string `json:"method"`
	Path      string `json:"path"`
	Route     string `json:"route"`
	Status    int    `json:"status"`
	Upstream  string `json:"upstream"`
	Subject   string `json:"subject"`
	RequestID string `json:"request_id"`
	Retries   int    `json:"retries"`
}

// routeVersion returns the current route table version.
func (m *mesh) routeVersion() (int, error) {
	var v struct {
		Version int `json:"version"`
	}
	err := m.getJSON(m.apiURL("/v1/routes"), m.token("ops"), &v)
	return v.Version, err
}

// proxyStatus is the part of GET /v1/proxies the tests read.
type proxyStatus struct {
	ID           string `json:"id"`
	Kind         string `json:"kind"`
	Connected    bool   `json:"connected"`
	RouteVersion int    `json:"route_version"`
	Synced       bool   `json:"synced"`
	Error        string `json:"error"`
	Types        []struct {
		Type   string `json:"type"`
		Latest string `json:"latest"`
		Acked  string `json:"acked"`
	} `json:"types"`
}

// allSynced checks that the edge and the sidecars of every instance are
// connected and have ACKed the latest version of every type, built from
// route table version want.
func (m *mesh) allSynced(want int) error {
	var out struct {
		Proxies []proxyStatus `json:"proxies"`
	}
	if err := m.getJSON(m.apiURL("/v1/proxies"), m.token("ops"), &out); err != nil {
		return err
	}
	need := map[string]bool{}
	for _, i := range []launcher.Instance{m.pets1, m.pets2, m.syncI, m.stats} {
		need["sidecar~"+i.Service+"~"+i.Name] = true
	}
	edges := 0
	for _, p := range out.Proxies {
		if p.Kind == "edge" {
			edges++
		} else if !need[p.ID] {
			continue
		}
		delete(need, p.ID)
		if !p.Connected || !p.Synced || p.RouteVersion != want || len(p.Types) < 4 {
			return fmt.Errorf("proxy %s: connected %v synced %v route version %d (want %d) types %d error %q",
				p.ID, p.Connected, p.Synced, p.RouteVersion, want, len(p.Types), p.Error)
		}
		for _, ty := range p.Types {
			if ty.Latest == "" || ty.Acked != ty.Latest {
				return fmt.Errorf("proxy %s: %s latest %q acked %q", p.ID, ty.Type, ty.Latest, ty.Acked)
			}
		}
	}
	if edges != 1 || len(need) > 0 {
		return fmt.Errorf("edges %d (want 1), missing sidecars %v", edges, need)
	}
	return nil
}

// instanceHealth returns the registry's view of a pets instance: its
// health, or "" when it is not registered.
func (m *mesh) instanceHealth(id string) (string, error) {
	var out struct {
		Services []struct {
			Name      string `json:"name"`
			Instances []struct {
				ID     string `json:"id"`
				Health string `json:"health"`
			} `json:"instances"`
		} `json:"services"`
	}
	if err := m.getJSON(m.apiURL("/v1/services"), m.token("ops"), &out); err != nil {
		return "", err
	}
	for _, s := range out.Services {
		for _, i := range s.Instances {
			if i.ID == id {
				return i.Health, nil
			}
		}
	}
	return "", nil
}

// edgeEndpoint returns the edge's view of an endpoint of cluster pets:
// present, EDS healthy and actively healthy.
func (m *mesh) edgeEndpoint(addr string) (present, edsHealthy, healthy bool, err error) {
	var out struct {
		State map[string][]struct {
			Address    string `json:"address"`
			Healthy    bool   `json:"healthy"`
			EDSHealthy bool   `json:"eds_healthy"`
		} `json:"endpoint_state"`
	}
	if err := m.getJSON("http://"+m.a.EdgeAdmin+"/config_dump", "", &out); err != nil {
		return false, false, false, err
	}
	for _, ep := range out.State["pets"] {
		if ep.Address == addr {
			return true, ep.EDSHealthy, ep.Healthy, nil
		}
	}
	return false, false, false, nil
}

// edgeEndpoints counts the EDS-healthy endpoints of cluster pets at the
// edge.
func (m *mesh) edgeEndpoints() (int, error) {
	var out struct {
		State map[string][]struct {
			EDSHealthy bool `json:"eds_healthy"`
		} `json:"endpoint_state"`
	}
	if err := m.getJSON("http://"+m.a.EdgeAdmin+"/config_dump", "", &out); err != nil {
		return 0, err
	}
	n := 0
	for _, ep := range out.State["pets"] {
		if ep.EDSHealthy {
			n++
		}
	}
	return n, nil
}

// instanceServing checks that an instance is registered passing and a
// healthy endpoint at the edge.
func (m *mesh) instanceServing(i launcher.Instance) error {
	h, err := m.instanceHealth(i.Name)
	if err != nil {
		return err
	}
	if h != "passing" {
		return fmt.Errorf("%s: registry health %q", i.Name, h)
	}
	present, eds, healthy, err := m.edgeEndpoint(i.Addrs.Inbound)
	if err != nil {
		return err
	}
	if !present || !eds || !healthy {
		return fmt.Errorf("%s at the edge: present %v eds healthy %v healthy %v", i.Name, present, eds, healthy)
	}
	return nil
}

// metrics returns the Prometheus text lines of an admin /metrics whose
// metric name starts with one of the prefixes.
func (m *mesh) metrics(adminAddr string, prefixes ...string) string {
	resp, body, err := m.do(http.MethodGet, "http://"+adminAddr+"/metrics", "", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("metrics of %s: %v", adminAddr, err)
	}
	var out []string
	for _, l := range strings.Split(string(body), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// load sends GET requests through the edge from several workers until
// stopped, counting successes and failures.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	ok, fail int
	failures []string
}

// startLoad starts workers sending GET path with token.
func (m *mesh) startLoad(workers int, path, token string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel}
	url := m.edgeURL(path)
	for range workers {
		ld.wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				start := time.Now()
				resp, err := m.client.Do(req)
				var status int
				var body []byte
				if err == nil {
					status = resp.StatusCode
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				if ctx.Err() != nil && err != nil {
					return // stopped mid-request: not the mesh's failure
				}
				ld.mu.Lock()
				if err == nil && status == http.StatusOK {
					ld.ok++
				} else {
					ld.fail++
					if len(ld.failures) < 10 {
						ld.failures = append(ld.failures, fmt.Sprintf("%s: status %d err %v body %.200s",
							start.Format("15:04:05.000"), status, err, body))
					}
				}
				ld.mu.Unlock()
			}
		})
	}
	return ld
}

// counts returns the successes and failures so far.
func (ld *load) counts() (ok, fail int) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return ld.ok, ld.fail
}

// stop stops the workers and returns the totals.
func (ld *load) stop() (ok, fail int, failures []string) {
	ld.cancel()
	ld.wg.Wait()
	return ld.ok, ld.fail, ld.failures
}

// checkLoad stops ld and fails t unless every request succeeded and at
// least minOK did.
func checkLoad(t *testing.T, ld *load, minOK int) {
	t.Helper()
	ok, fail, failures := ld.stop()
	t.Logf("load: %d ok, %d failed", ok, fail)
	if fail > 0 {
		t.Errorf("%d of %d requests failed; first failures:\n%s", fail, ok+fail, strings.Join(failures, "\n"))
	}
	if ok < minOK {
		t.Errorf("only %d requests succeeded, want at least %d", ok, minOK)
	}
}

// waitCounts waits until ld has at least n more successes than now.
func waitMore(t *testing.T, ld *load, n int) {
	t.Helper()
	base, _ := ld.counts()
	testutil.Eventually(t, 20*time.Second, func() error {
		if ok, _ := ld.counts(); ok < base+n {
			return fmt.Errorf("%d requests succeeded since, want %d", ok-base, n)
		}
		return nil
	})
}
