package edge

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

// TestSecurityEdgeLimits checks the request limits of a real edge process
// over raw TCP: header block size, body size (global and per route),
// request smuggling and the upstream response-header timeout. No refused
// request reaches the backend.
func TestSecurityEdgeLimits(t *testing.T) {
	m := startSecMesh(t, secOpts{edgeArgs: []string{
		"-max-header-bytes", "16384", "-max-body", "65536", "-route-max-body", "/public/small=1024,/public=4096",
	}})
	tok := m.login("alice", "alice-pw")
	auth := "Authorization: Bearer " + tok + "\r\n"

	// errorBody checks the JSON error shape and returns its field.
	errorBody := func(t *testing.T, body string) string {
		t.Helper()
		var e struct {
			Error struct{ Code, Message, Field string }
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Code == "" {
			t.Fatalf("not the JSON error shape: %q", body)
		}
		return e.Error.Field
	}

	t.Run("header block over -max-header-bytes: 431, connection closed", func(t *testing.T) {
		res, err := m.raw("GET /pets/big HTTP/1.1\r\nHost: x\r\n"+auth+"X-Big: "+strings.Repeat("a", 40<<10)+"\r\n\r\n", 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.resps) != 1 || res.resps[0].StatusCode != http.StatusRequestHeaderFieldsTooLarge || !res.closed {
			t.Fatalf("got %d responses %v (closed %v), want one 431 and the connection closed", len(res.resps), statuses(res), res.closed)
		}
		// Control: a header block under the limit passes.
		res, err = m.raw("GET /pets/medium HTTP/1.1\r\nHost: x\r\n"+auth+"X-Big: "+strings.Repeat("a", 8<<10)+"\r\nConnection: close\r\n\r\n", 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.resps) != 1 || res.resps[0].StatusCode != http.StatusOK {
			t.Fatalf("8 KiB header block: %v, want 200", statuses(res))
		}
		if m.pets.served("/pets/big") || !m.pets.served("/pets/medium") {
			t.Fatal("the oversized header block reached the backend, or the control did not")
		}
	})

	t.Run("body limits: -max-body and -route-max-body (longest prefix)", func(t *testing.T) {
		tests := []struct {
			desc, path string
			size       int
			chunked    bool
			want       int
		}{
			{"global limit, under", "/pets/up", 60 << 10, false, 200},
			{"global limit, over", "/pets/up", 70 << 10, false, 413},
			{"global limit, over, chunked", "/pets/up", 70 << 10, true, 413},
			{"route /public, under", "/public/x", 4000, false, 200},
			{"route /public, over", "/public/x", 5000, false, 413},
			{"route /public, over, chunked", "/public/x", 5000, true, 413},
			{"longer prefix /public/small, over", "/public/small/x", 2000, false, 413},
			{"longer prefix /public/small, under", "/public/small/x", 1000, false, 200},
		}
		for i, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				path := fmt.Sprintf("%s-%d", tc.path, i)
				body := strings.Repeat("b", tc.size)
				framing := fmt.Sprintf("Content-Length: %d\r\n\r\n%s", tc.size, body)
				if tc.chunked {
					framing = fmt.Sprintf("Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", tc.size, body)
				}
				res, err := m.raw("POST "+path+" HTTP/1.1\r\nHost: x\r\n"+auth+"Connection: close\r\n"+framing, 1)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.resps) != 1 || res.resps[0].StatusCode != tc.want {
					t.Fatalf("%v %q, want %d", statuses(res), res.bodies, tc.want)
				}
				if tc.want != 200 {
					errorBody(t, res.bodies[0])
					// A chunked body is streamed: its size is known only
					// once the limit is crossed.
					if !tc.chunked && m.pets.served(path) {
						t.Fatal("a body over the limit reached the backend")
					}
					return
				}
				if !strings.Contains(res.bodies[0], fmt.Sprintf(`"body_bytes":%d`, tc.size)) {
					t.Fatalf("backend did not get the whole body: %s", res.bodies[0])
				}
			})
		}
	})

	t.Run("request smuggling is refused", func(t *testing.T) {
		smuggled := "GET /pets/admin/smuggled HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"
		tests := []struct {
			desc, req string
			want      int
			field     string
			// streamed: the header block is valid and the body malformed;
			// the edge streams bodies, so the upstream sees the start of
			// the request before the edge aborts it.
			streamed bool
		}{
			{"CL.TE", "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, 400, "Transfer-Encoding", false},
			{"TE.CL", "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + fmt.Sprintf("%x", len(smuggled)) + "\r\n" + smuggled + "\r\n0\r\n\r\n", 400, "Transfer-Encoding", false},
			{"TE folded (obs-fold) beside CL", "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled, 400, "Transfer-Encoding", false},
			{"TE in HTTP/1.0", "POST /public/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n" + smuggled, 400, "Transfer-Encoding", false},
			{"two different Content-Length", "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nContent-Length: 60\r\n\r\n0\r\n\r\n" + smuggled, 400, "", false},
			{"Content-Length list", "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 6, 60\r\n\r\n0\r\n\r\n" + smuggled, 400, "", false},
			{"Content-Length with a sign", "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: +6\r\n\r\n0\r\n\r\n" + smuggled, 400, "", false},
			{"Transfer-Encoding other than chunked", "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled, 501, "", false},
			{"two Transfer-Encoding headers", "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, 501, "", false},
			{"space before the colon", "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n" + smuggled, 400, "", false},
			{"bare LF in a chunk line", "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n" + smuggled, 400, "body", true},
		}
		for i, tc := range tests {
			t.Run(tc.desc, func(t *testing.T) {
				path := fmt.Sprintf("/public/refused-%d", i)
				res, err := m.raw(strings.Replace(tc.req, "/public/a", path, 1), 2)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.resps) == 0 || res.resps[0].StatusCode != tc.want {
					t.Fatalf("responses %v %q, want %d first", statuses(res), res.bodies, tc.want)
				}
				if len(res.resps) != 1 || !res.closed {
					t.Fatalf("responses %v (closed %v): the edge answered after the refused request", statuses(res), res.closed)
				}
				if tc.field != "" {
					if f := errorBody(t, res.bodies[0]); f != tc.field {
						t.Fatalf("error field %q, want %q", f, tc.field)
					}
				}
				if m.pets.served(path) && !tc.streamed {
					t.Fatal("a refused request reached the backend")
				}
				if m.pets.served("/pets/admin/smuggled") || strings.Contains(m.edge.Output(), "/pets/admin/smuggled") {
					t.Fatal("the smuggled request was routed")
				}
			})
		}
		// Control: valid pipelined requests on one connection, a chunked
		// one among them, are all served.
		res, err := m.raw("POST /public/p1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"+
			"POST /public/p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"+
			"GET /public/p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(statuses(res)) != "[200 200 200]" || !strings.Contains(res.bodies[0], `"body_bytes":3`) || !strings.Contains(res.bodies[1], `"body_bytes":2`) {
			t.Fatalf("pipelined valid requests: %v %q", statuses(res), res.bodies)
		}
		for _, p := range []string{"/public/p1", "/public/p2", "/public/p3"} {
			if !m.pets.served(p) {
				t.Fatalf("%s not served", p)
			}
		}
		if v := m.metric(`petmesh_edge_refused_requests_total{reason="smuggling"}`); v < 4 {
			t.Fatalf("smuggling refusals counted %v, want at least 4", v)
		}
	})

	t.Run("upstream that never sends its response headers: 504 at the route timeout", func(t *testing.T) {
		start := time.Now()
		code, body, err := m.do("GET", "/slow/x", "", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusGatewayTimeout {
			t.Fatalf("%d %s, want 504", code, body)
		}
		errorBody(t, string(body))
		// The route timeout is 1s; the bound only shows it did not hang.
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("took %v", d)
		}
	})
}

// TestSecurityEdgeSlowloris holds many connections that send their header
// block a byte at a time: the edge keeps serving other clients, and closes
// every slow connection once -read-header-timeout has passed.
func TestSecurityEdgeSlowloris(t *testing.T) {
	m := startSecMesh(t, secOpts{edgeArgs: []string{"-read-header-timeout", "2s"}})
	tok := m.login("alice", "alice-pw")

	const slow = 200
	conns := make([]net.Conn, 0, slow)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range slow {
		c, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Each slow client trickles a never-ending header block and records
	// when the edge closed its connection.
	closedAfter := make([]time.Duration, slow)
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range conns {
		wg.Go(func() {
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(c, "GET /pets/slow HTTP/1.1\r\nHost: x\r\n"); err != nil {
				closedAfter[i] = time.Since(start)
				return
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(io.Discard, c) // returns when the edge closes
			}()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					closedAfter[i] = time.Since(start)
					return
				case <-tick.C:
					if _, err := io.WriteString(c, "X"); err != nil {
						<-done
						closedAfter[i] = time.Since(start)
						return
					}
				}
			}
		})
	}

	// While they trickle, other clients are served.
	for i := range 20 {
		code, b, err := m.do("GET", fmt.Sprintf("/pets/during-%d", i), tok, nil, nil)
		if err != nil || code != 200 {
			t.Fatalf("request %d during the slow-loris: %d %s %v", i, code, b, err)
		}
	}
	wg.Wait()
	for i, d := range closedAfter {
		if d < 1500*time.Millisecond || d > 20*time.Second {
			t.Fatalf("slow connection %d closed after %v; want the edge to close it after the 2s header timeout", i, d)
		}
	}
	// And after them too.
	tu.Eventually(t, 10*time.Second, func() error {
		code, _, err := m.do("GET", "/pets/after", tok, nil, nil)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
}

func statuses(r rawResult) []int {
	var s []int
	for _, resp := range r.resps {
		s = append(s, resp.StatusCode)
	}
	return s
}
