package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestMinimalProxyRelaysKeepAlive checks the go-minimal reference: several
// requests on one client connection reach the backend in order over one
// upstream connection, and every response comes back whole.
func TestMinimalProxyRelaysKeepAlive(t *testing.T) {
	var upstreamConns atomic.Int32
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.Path)
	}))
	backend.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			upstreamConns.Add(1)
		}
	}
	backend.Start()
	defer backend.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go minimalProxy(c, strings.TrimPrefix(backend.URL, "http://"))
		}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://proxy/pets/%d", i), nil)
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("GET /pets/%d", i); resp.StatusCode != http.StatusOK || string(b) != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, resp.StatusCode, b, want)
		}
	}
	if n := upstreamConns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 3 requests on one client connection, want 1", n)
	}
}

// TestNginxReference starts the nginx reference (one process, upstream
// keep-alive) in front of a backend and proxies a request through it.
func TestNginxReference(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "backend %s", r.URL.Path)
	}))
	defer backend.Close()
	r, err := startReference(t.Context(), "", t.TempDir(), "nginx", strings.TrimPrefix(backend.URL, "http://"))
	if err != nil {
		t.Fatal(err) // make deps installs nginx, as bench's TestHarness needs it too
	}
	defer r.p.stop()
	resp, err := http.Get("http://" + r.addr + "/pets/7")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "backend /pets/7" {
		t.Fatalf("through nginx: %d %q, want 200 %q", resp.StatusCode, b, "backend /pets/7")
	}
}
