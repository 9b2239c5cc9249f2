package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// countingBackend is an httptest server that counts the connections it
// accepted and answers with handler.
func countingBackend(t *testing.T, handler http.HandlerFunc) (*httptest.Server, *atomic.Int32) {
	var conns atomic.Int32
	s := httptest.NewUnstartedServer(handler)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s, &conns
}

func oneRoute(t *testing.T, rt *route.Route, backendURL string) *harness {
	return newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", rt),
		[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", backendURL)))
}

func TestH1Eligible(t *testing.T) {
	for _, tc := range []struct {
		desc   string
		method string
		body   string
		hdr    map[string]string
		want   bool
	}{
		{desc: "GET", method: "GET", want: true},
		{desc: "HEAD", method: "HEAD", want: true},
		{desc: "OPTIONS", method: "OPTIONS", want: true},
		{desc: "POST with a body", method: "POST", body: "x"},
		{desc: "POST without a body (not safe to resend)", method: "POST"},
		{desc: "DELETE", method: "DELETE"},
		{desc: "GET with a body", method: "GET", body: "x"},
		{desc: "upgrade", method: "GET", hdr: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket"}},
		{desc: "expect", method: "GET", hdr: map[string]string{"Expect": "100-continue"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req := httptest.NewRequest(tc.method, "http://up/x", body)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			if got := h1Eligible(req); got != tc.want {
				t.Fatalf("h1Eligible = %v, want %v", got, tc.want)
			}
		})
	}
}

// Sequential requests share one kept-alive upstream connection; requests
// with bodies (http.Transport) work beside them.
func TestH1ReusesConnections(t *testing.T) {
	be, conns := countingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	})
	h := oneRoute(t, prefixRoute("r", "/", "a"), be.URL)
	for i := range 20 {
		st, _, body := h.do(t, "GET", fmt.Sprintf("/g%d", i), nil, nil)
		if st != 200 || body != fmt.Sprintf("GET /g%d ", i) {
			t.Fatalf("request %d: %d %q", i, st, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 20 sequential GETs, want 1", n)
	}
	pool := h.dp.cur.Load().clusters["a"].base.h1
	pool.mu.Lock()
	idle := len(pool.idle[hostOf(be.URL)])
	pool.mu.Unlock()
	if idle != 1 {
		t.Fatalf("the synchronous pool holds %d idle connections, want 1 (GETs went elsewhere)", idle)
	}
	st, _, body := h.do(t, "POST", "/p", nil, strings.NewReader("payload"))
	if st != 200 || body != "POST /p payload" {
		t.Fatalf("POST: %d %q", st, body)
	}
	st, hdr, body := h.do(t, "HEAD", "/h", nil, nil)
	if st != 200 || body != "" || hdr.Get("Content-Length") == "" {
		t.Fatalf("HEAD: %d %q %v", st, body, hdr)
	}
}

// rawBackend serves each connection with fn on its own goroutine.
func rawBackend(t *testing.T, fn func(c net.Conn, br *bufio.Reader)) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { lis.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				fn(c, bufio.NewReader(c))
			})
		}
	})
	return "http://" + lis.Addr().String()
}

// A server that closes a kept-alive connection after one response (as
// on its idle timeout): the next GET, sent on that reused connection, is
// resent once on a new connection without the client seeing an error.
func TestH1ServerClosedIdleConnection(t *testing.T) {
	var accepted atomic.Int32
	url := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		n := accepted.Add(1)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body := fmt.Sprintf("conn %d %s", n, req.URL.Path)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		// Keep-alive announced, then the connection is closed.
	})
	h := oneRoute(t, prefixRoute("r", "/", "a"), url)
	for i := 1; i <= 3; i++ {
		st, _, body := h.do(t, "GET", "/x", nil, nil)
		if st != 200 || body != fmt.Sprintf("conn %d /x", i) {
			t.Fatalf("request %d: %d %q", i, st, body)
		}
	}
}

// Responses that end the connection (Connection: close, a body read until
// the server closes) are not reused; a body the proxy does not finish
// reading (client gone) closes the connection.
func TestH1ConnectionEnd(t *testing.T) {
	var accepted atomic.Int32
	url := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		accepted.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch req.URL.Path {
			case "/close":
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
				return
			case "/until-eof":
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\n\r\nuntil eof")
				return
			case "/chunked":
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
			default:
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept")
			}
		}
	})
	h := oneRoute(t, prefixRoute("r", "/", "a"), url)
	for _, tc := range []struct{ path, body string }{
		{"/kept", "kept"}, {"/chunked", "abcde"}, {"/kept", "kept"}, {"/close", "ok"}, {"/kept", "kept"}, {"/until-eof", "until eof"}, {"/kept", "kept"},
	} {
		st, _, body := h.do(t, "GET", tc.path, nil, nil)
		if st != 200 || body != tc.body {
			t.Fatalf("%s: %d %q", tc.path, st, body)
		}
	}
	// One connection for kept+chunked+kept+close, one for kept+until-eof,
	// one for the last kept.
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}

// A route timeout while the upstream has not answered is a 504, the
// connection is dropped, and the next request works on a new one.
func TestH1TimeoutDropsConnection(t *testing.T) {
	release := make(chan struct{})
	be, conns := countingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprint(w, "done")
	})
	defer close(release)
	rt := prefixRoute("r", "/", "a")
	rt.GetRoute().Timeout = durationpb.New(150 * time.Millisecond)
	h := oneRoute(t, rt, be.URL)
	if st, _, _ := h.do(t, "GET", "/fast", nil, nil); st != 200 {
		t.Fatalf("fast: %d", st)
	}
	st, _, body := h.do(t, "GET", "/slow", nil, nil)
	if st != 504 || !strings.Contains(body, `"code":"timeout"`) {
		t.Fatalf("slow: %d %s", st, body)
	}
	if st, _, body := h.do(t, "GET", "/fast", nil, nil); st != 200 || body != "done" {
		t.Fatalf("after the timeout: %d %q", st, body)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the timed-out one is not reused)", n)
	}
}

// Response headers beyond the limit are a 502, not unbounded memory.
func TestH1ResponseHeaderLimit(t *testing.T) {
	url := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Big: " + strings.Repeat("a", 1000) + "\r\n"
		for range 2000 { // ≈ 2 MB of headers
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
		fmt.Fprint(c, "Content-Length: 0\r\n\r\n")
	})
	h := oneRoute(t, prefixRoute("r", "/", "a"), url)
	st, _, body := h.do(t, "GET", "/", nil, nil)
	if st != 502 || !strings.Contains(body, "bad_gateway") {
		t.Fatalf("got %d %s, want 502", st, body)
	}
}

// 103 Early Hints from the upstream reach the client before the response.
func TestH1ForwardsInformationalResponses(t *testing.T) {
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		fmt.Fprint(w, "final")
	}))
	defer be.Close()
	h := oneRoute(t, prefixRoute("r", "/", "a"), be.URL)
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
		got = append(got, fmt.Sprintf("%d %s", code, hdr.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", h.srv.URL+"/", nil)
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "final" || len(got) != 1 || got[0] != "103 </style.css>; rel=preload" {
		t.Fatalf("got %d %q, 1xx %q", resp.StatusCode, b, got)
	}
}

// Concurrent GETs never exceed max_connections through the pool, and
// every one is answered.
func TestH1MaxConnections(t *testing.T) {
	var open, peak atomic.Int32
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond) // keeps requests overlapping; not a readiness wait
		fmt.Fprint(w, "ok")
	}))
	be.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			n := open.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	be.Start()
	defer be.Close()
	c := edsCluster("a")
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections: wrapperspb.UInt32(4), MaxPendingRequests: wrapperspb.UInt32(1000)}}}
	h := newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")),
		[]*cluster.Cluster{c}, loadAssignment(t, "a", be.URL)))
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 16 {
		wg.Go(func() {
			for range 10 {
				resp, err := h.srv.Client().Get(h.srv.URL + "/")
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 || peak.Load() > 4 {
		t.Fatalf("%d failed, peak %d upstream connections (max 4)", failed.Load(), peak.Load())
	}
}

// An unsolicited response a server sent on an idle connection (a 408
// before closing it) is never taken for the next request's answer: a
// connection idle for longer than probeAfter is checked before reuse.
func TestH1UnsolicitedResponseOnIdleConnection(t *testing.T) {
	send408 := make(chan struct{})
	sent := make(chan struct{})
	var accepted atomic.Int32
	url := rawBackend(t, func(c net.Conn, br *bufio.Reader) {
		n := accepted.Add(1)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			body := fmt.Sprintf("conn %d %s", n, req.URL.Path)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			if n == 1 && req.URL.Path == "/first" {
				<-send408
				fmt.Fprint(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntimeout")
				close(sent) // on loopback the bytes are in the proxy's socket now
			}
		}
	})
	h := oneRoute(t, prefixRoute("r", "/", "a"), url)
	if st, _, body := h.do(t, "GET", "/first", nil, nil); st != 200 || body != "conn 1 /first" {
		t.Fatalf("first: %d %q", st, body)
	}
	close(send408)
	<-sent
	h.dp.cur.Load().clusters["a"].base.h1.probeAfter = 0 // every reuse is checked
	st, _, body := h.do(t, "GET", "/second", nil, nil)
	if st != 200 || body != "conn 2 /second" {
		t.Fatalf("second: %d %q, want the answer from a new connection", st, body)
	}
}
