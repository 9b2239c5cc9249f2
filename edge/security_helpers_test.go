package edge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	tu "github.com/petmesh/petmesh/internal/testutil"
)

// The security tests run the real edge binary, configured over ADS by the
// real control plane binary from secTable, in front of httptest backends
// registered in the control plane's built-in registry. Everything is sent
// over real sockets (raw TCP writes where framing matters).

const secTable = `
routes:
  - name: auth
    match: {prefix: /auth/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: well-known
    match: {prefix: /.well-known/}
    auth: {public: true}
    targets: [{service: edge}]
  - name: public
    match: {prefix: /public}
    auth: {public: true}
    targets: [{service: pets}]
  - name: slow
    match: {prefix: /slow}
    auth: {public: true}
    targets: [{service: slow}]
    timeout: 1s
  - name: admin
    match: {prefix: /pets/admin}
    auth: {roles: [admin]}
    targets: [{service: pets}]
  - name: pets
    match: {prefix: /pets}
    targets: [{service: pets}]
`

// secBackend is an upstream that counts the requests it serves and
// records the headers of the last one.
type secBackend struct {
	*httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last http.Header
	seen map[string]bool // paths served
	// respHeader is added to every response (e.g. a CORS header the edge
	// must not let through).
	respHeader http.Header
}

func newSecBackend(t *testing.T, name string, respHeader http.Header) *secBackend {
	t.Helper()
	b := &secBackend{respHeader: respHeader, seen: map[string]bool{}}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.last = r.Header.Clone()
		b.seen[r.URL.Path] = true
		b.mu.Unlock()
		for k, vs := range b.respHeader {
			w.Header()[k] = vs
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"backend":%q,"path":%q,"body_bytes":%d}`, name, r.URL.Path, len(body))
	}))
	t.Cleanup(b.Close)
	return b
}

// served tells whether a request for path reached the backend.
func (b *secBackend) served(path string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seen[path]
}

func (b *secBackend) header() http.Header {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// stallServer accepts connections, reads what arrives and never answers:
// an upstream that hangs before its response headers.
func stallServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln
}

type secOpts struct {
	table    string
	edgeArgs []string
	edgeEnv  []string
	// respHeader is sent by the pets backend on every response.
	respHeader http.Header
	keysDir    string // default a temp dir
}

// secMesh is a running control plane + edge + backends.
type secMesh struct {
	t       *testing.T
	cp      *tu.Process
	edge    *tu.Process
	url     string // edge public base URL
	addr    string // edge public host:port
	admin   string // edge admin base URL
	issuer  string
	keysDir string
	pets    *secBackend
	stall   net.Listener
	hc      *http.Client
}

func startSecMesh(t *testing.T, o secOpts) *secMesh {
	t.Helper()
	if testing.Short() {
		t.Skip("starts the control plane and the edge")
	}
	if o.table == "" {
		o.table = secTable
	}
	dir := t.TempDir()
	if o.keysDir == "" {
		o.keysDir = filepath.Join(dir, "keys")
	}
	cpBin := tu.BuildBinary(t, "./controlplane/cmd/controlplane")
	edgeBin := tu.BuildBinary(t, "./edge/cmd/edge")

	port := freePort(t)
	m := &secMesh{t: t, addr: fmt.Sprintf("127.0.0.1:%d", port), keysDir: o.keysDir,
		hc: &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	t.Cleanup(m.hc.CloseIdleConnections)
	m.url = "http://" + m.addr
	m.issuer = m.url
	tableFile := filepath.Join(dir, "table.yaml")
	if err := os.WriteFile(tableFile, []byte(o.table), 0o600); err != nil {
		t.Fatal(err)
	}
	m.cp = tu.Start(t, cpBin, tu.StartOptions{
		Args: []string{"-xds-addr", "127.0.0.1:0", "-api-addr", "127.0.0.1:0", "-debounce-quiet", "20ms", "-debounce-max", "200ms",
			"-store", "file", "-store-dir", filepath.Join(dir, "store"), "-initial-table", tableFile,
			"-jwks-url", m.url + PathJWKS, "-issuer", m.issuer},
		Env:       []string{"CONTROLPLANE_REGISTRATION_TOKEN=" + itRegToken},
		Listeners: []string{"xds", "api"},
	})

	m.pets = newSecBackend(t, "pets", o.respHeader)
	m.stall = stallServer(t)
	rc, err := registry.NewHTTPClient(m.cp.URL("api"), itRegToken)
	if err != nil {
		t.Fatal(err)
	}
	ctx := tu.Context(t)
	for _, s := range []struct{ svc, addr string }{{"pets", m.pets.Listener.Addr().String()}, {"slow", m.stall.Addr().String()}} {
		host, p, _ := net.SplitHostPort(s.addr)
		var pn int
		fmt.Sscan(p, &pn)
		if err := rc.Register(ctx, registry.Registration{Service: s.svc, ID: s.svc + "-1", Address: host, Port: pn, Version: "v1", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}

	args := append([]string{"-addr", m.addr, "-admin-addr", "127.0.0.1:0", "-xds-addr", m.cp.Addr("xds"),
		"-node-id", "edge~sec", "-users-file", writeUsers(t), "-keys-dir", o.keysDir, "-issuer", m.issuer}, o.edgeArgs...)
	m.edge = tu.Start(t, edgeBin, tu.StartOptions{Args: args, Env: o.edgeEnv, Listeners: []string{"http", "admin"}})
	m.admin = m.edge.URL("admin")
	// Ready: the configuration is applied and a token works end to end.
	tok := m.login("alice", "alice-pw")
	tu.Eventually(t, 20*time.Second, func() error {
		code, b, err := m.do("GET", "/pets/ready", tok, nil, nil)
		if err != nil || code != 200 {
			return fmt.Errorf("GET /pets/ready: %d %s %v", code, b, err)
		}
		return nil
	})
	return m
}

// do sends a request to the edge with an optional bearer token.
func (m *secMesh) do(method, path, token string, hdr map[string]string, body io.Reader) (int, []byte, error) {
	resp, err := m.doResp(method, path, token, hdr, body)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (m *secMesh) doResp(method, path, token string, hdr map[string]string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequest(method, m.url+path, body)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	return m.hc.Do(req)
}

func (m *secMesh) login(user, pw string) string {
	m.t.Helper()
	var tok string
	tu.Eventually(m.t, 20*time.Second, func() error {
		code, b, err := m.do("POST", PathToken, "", map[string]string{"Content-Type": "application/json"},
			strings.NewReader(fmt.Sprintf(`{"username":%q,"password":%q}`, user, pw)))
		if err != nil || code != 200 {
			return fmt.Errorf("login %s: %d %s %v", user, code, b, err)
		}
		const k = `"access_token":"`
		i := strings.Index(string(b), k)
		if i < 0 {
			return fmt.Errorf("no access_token in %s", b)
		}
		tok = string(b[i+len(k):])
		tok = tok[:strings.IndexByte(tok, '"')]
		return nil
	})
	return tok
}

// metric returns the value of an unlabelled counter from the admin port.
func (m *secMesh) metric(name string) float64 {
	m.t.Helper()
	resp, err := m.hc.Get(m.admin + "/metrics")
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	m.t.Fatalf("metric %s not found", name)
	return 0
}

// rawResult is what the edge answered on one raw connection.
type rawResult struct {
	resps  []*http.Response
	bodies []string
	// closed: the edge closed the connection after the last response.
	closed bool
}

// raw writes req (raw bytes, e.g. several pipelined requests) on a new TCP
// connection to the edge, reads up to n responses, then tells whether the
// edge closed the connection.
func (m *secMesh) raw(req string, n int) (rawResult, error) {
	var res rawResult
	c, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
	if err != nil {
		return res, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		return res, err
	}
	if _, err := io.WriteString(c, req); err != nil {
		return res, err
	}
	br := bufio.NewReader(c)
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				res.closed = true
				return res, nil
			}
			return res, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return res, err
		}
		res.resps = append(res.resps, resp)
		res.bodies = append(res.bodies, string(b))
	}
	if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return res, err
	}
	_, err = br.ReadByte()
	res.closed = err != nil && !isTimeout(err)
	return res, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
