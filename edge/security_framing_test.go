package edge

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// chunkConn is a net.Conn whose reads return src in pieces of the given
// sizes (cycled): the framing guard must not depend on how TCP splits a
// request.
type chunkConn struct {
	net.Conn // nil: only Read is used
	src      []byte
	sizes    []int
	i        int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = max(1, c.sizes[c.i%len(c.sizes)])
		c.i++
	}
	n = min(n, len(p), len(c.src))
	copy(p, c.src[:n])
	c.src = c.src[n:]
	return n, nil
}

// guardOutput reads everything a framingConn releases for input; cut
// tells whether the guard stopped releasing (after a refused request, or
// framing net/http refuses and closes the connection on).
func guardOutput(t testing.TB, input []byte, sizes []int, readSize int) (out []byte, cut bool) {
	t.Helper()
	fc := &framingConn{Conn: &chunkConn{src: input, sizes: sizes}, limit: 64 << 10}
	buf := make([]byte, max(1, readSize))
	for range 1 << 20 {
		n, err := fc.Read(buf)
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return out, fc.state == fsEOF
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	t.Fatal("no EOF")
	return nil, false
}

// checkGuardOutput checks the guard's one allowed change: the bytes it
// releases are the input, except that after a refused request's line it
// inserts the marker and then releases at most the rest of the input.
func checkGuardOutput(t testing.TB, input, out []byte, cut bool) (marked string) {
	t.Helper()
	i := 0
	for i < len(out) && i < len(input) && out[i] == input[i] {
		i++
	}
	if i == len(out) {
		if len(out) != len(input) && !cut {
			t.Fatalf("output is a strict prefix (%d of %d bytes) though the guard did not stop", len(out), len(input))
		}
		return ""
	}
	rest := out[i:]
	if !bytes.HasPrefix(rest, []byte(framingHeader+": ")) {
		t.Fatalf("output differs from the input at %d: %q vs %q", i, rest[:min(len(rest), 40)], input[i:min(len(input), i+40)])
	}
	line, after, _ := bytes.Cut(rest, []byte("\r\n"))
	if i == 0 || out[i-1] != '\n' {
		t.Fatalf("marker not after a request line: %q", out[:i])
	}
	if !bytes.HasPrefix(input[i:], after) {
		t.Fatalf("after the marker the output is not the input: %q", after[:min(len(after), 40)])
	}
	return string(line[len(framingHeader)+2:])
}

func TestFramingGuardPassesValidTrafficUnchanged(t *testing.T) {
	valid := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: y\r\n\r\n" +
		"PUT /d HTTP/1.1\nHost: x\nContent-Length: 0\n\n" +
		"GET /e HTTP/1.0\r\n\r\n" +
		"POST /f HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\nGET / HTTP/1"
	for _, sizes := range [][]int{nil, {1}, {3, 7}, {4096}, {17, 1, 200}} {
		for _, rs := range []int{1, 5, 4096} {
			out, cut := guardOutput(t, []byte(valid), sizes, rs)
			if m := checkGuardOutput(t, []byte(valid), out, false); m != "" || cut {
				t.Fatalf("sizes %v read %d: valid traffic marked %q (cut %v)", sizes, rs, m, cut)
			}
		}
	}
}

func TestFramingGuardMarksAmbiguousRequests(t *testing.T) {
	tests := []struct {
		desc, input, want string
	}{
		{"CL then TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", framingCLTE},
		{"TE then CL", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", framingCLTE},
		{"TE folded onto the next line", "POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", framingCLTE},
		{"odd case", "POST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 6\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n", framingCLTE},
		{"second request of a keep-alive connection", "GET /ok HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", framingCLTE},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", framingTE10},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			for _, sizes := range [][]int{nil, {1}, {4096}, {9, 2}} {
				out, cut := guardOutput(t, []byte(tc.input), sizes, 4096)
				if got := checkGuardOutput(t, []byte(tc.input), out, cut); got != tc.want {
					t.Fatalf("sizes %v: marked %q, want %q; output %q", sizes, got, tc.want, out)
				}
				if bytes.Contains(out, []byte("/smuggled")) {
					t.Fatalf("the request after a refused one was released: %q", out)
				}
			}
		})
	}
}

// TestFramingGuardUnderNetHTTP runs a real net/http server on a framing
// listener: pipelined valid requests are served as without the guard, and
// a CL+TE request reaches the handler marked, with nothing after it.
func TestFramingGuardUnderNetHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprintf("%s %s %q %s", r.Method, r.URL.Path, b, r.Header.Get(framingHeader)))
		mu.Unlock()
		if r.Header.Get(framingHeader) != "" {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusBadRequest)
		}
	})}
	go func() { _ = srv.Serve(framingListener{Listener: ln, limit: 1 << 16}) }()
	t.Cleanup(func() { _ = srv.Close() })

	send := func(raw string, n int) []int {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		var codes []int
		for range n {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
		}
		return codes
	}
	reset := func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := seen
		seen = nil
		return s
	}

	codes := send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"+
		"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"+
		"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 4)
	got := reset()
	want := []string{`GET /a "" `, `POST /b "hello" `, `POST /c "abcde" `, `GET /d "" `}
	if fmt.Sprint(codes) != "[200 200 200 200]" || strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("pipelined valid requests: codes %v, served %q, want %q", codes, got, want)
	}

	codes = send("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 2)
	got = reset()
	if fmt.Sprint(codes) != "[400]" || len(got) != 1 || !strings.HasSuffix(got[0], framingCLTE) {
		t.Fatalf("CL+TE: codes %v, served %q; want one marked request and nothing after it", codes, got)
	}
}

// FuzzFramingGuard: for any bytes and any TCP split, the guard never
// panics and releases the input unchanged, or with one marker after a
// request line followed by a prefix of the rest.
func FuzzFramingGuard(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
		"\x16\x03\x01\x00\xa5\x01\x00",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	} {
		f.Add([]byte(s), []byte{1, 7, 200})
	}
	f.Fuzz(func(t *testing.T, input, split []byte) {
		sizes := make([]int, len(split))
		for i, b := range split {
			sizes[i] = int(b)
		}
		out, cut := guardOutput(t, input, sizes, 4096)
		checkGuardOutput(t, input, out, cut)
	})
}

// BenchmarkFramingGuard compares keep-alive requests (a GET and a small
// POST) through a real net/http server on a plain listener and on the
// framing listener.
func BenchmarkFramingGuard(b *testing.B) {
	for _, guarded := range []bool{false, true} {
		name := "plain"
		if guarded {
			name = "guarded"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var l net.Listener = ln
			if guarded {
				l = framingListener{Listener: ln, limit: 1 << 16}
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				_, _ = io.WriteString(w, "ok")
			})}
			go func() { _ = srv.Serve(l) }()
			defer srv.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			body := `{"name":"Rex","species":"dog","age":3}`
			req := []byte("GET /pets/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + strings.Repeat("t", 400) + "\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n" +
				fmt.Sprintf("POST /pets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				for range 2 {
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
}
