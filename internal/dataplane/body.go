package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/petmesh/petmesh/internal/httpx"
)

// clientBody wraps every request body the listener receives. It records the
// first error reading it (the client went away, a truncated or malformed
// chunked body, a body over the buffer filter's limit), so that the
// upstream failure that error causes is answered as the client's fault
// (400, 413, 499) and never counted against the upstream, and it enforces
// the route's max_request_bytes while the body streams.
type clientBody struct {
	body  io.ReadCloser
	limit int64 // max_request_bytes; < 0: none
	n     int64
	err   error
}

func newClientBody(b io.ReadCloser) *clientBody { return &clientBody{body: b, limit: -1} }

func (c *clientBody) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.limit >= 0 && int64(len(p)) > c.limit-c.n+1 {
		p = p[:c.limit-c.n+1] // read one byte past the limit to see it crossed
	}
	n, err := c.body.Read(p)
	c.n += int64(n)
	if c.limit >= 0 && c.n > c.limit {
		n -= int(c.n - c.limit)
		c.n = c.limit
		c.err = &http.MaxBytesError{Limit: c.limit}
		return n, c.err
	}
	if err != nil && !errors.Is(err, io.EOF) {
		c.err = err
	}
	return n, err
}

func (c *clientBody) Close() error { return c.body.Close() }

// failed reports whether reading the client's body failed.
func (c *clientBody) failed() bool { return c != nil && c.err != nil }

// clientBodyError maps a failed client body to the response: 413 over the
// limit, 499 when the client reset the connection (nobody reads the
// answer), 400 for a body cut short or malformed (as nginx answers a
// client that closed its connection while sending the body).
func clientBodyError(err error) *httpx.Error {
	if mb := (*http.MaxBytesError)(nil); errors.As(err, &mb) {
		return tooLarge(mb.Limit)
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) {
		return &httpx.Error{Status: StatusClientClosedRequest, Code: httpx.CodeClientClosed, Message: "client closed the request"}
	}
	return &httpx.Error{Status: http.StatusBadRequest, Code: httpx.CodeInvalidArgument, Field: "body", Message: "malformed or truncated request body"}
}

func tooLarge(limit int64) *httpx.Error {
	return &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Field: "body",
		Message: fmt.Sprintf("request body over %d bytes", limit)}
}

// bufferFilter is Envoy's envoy.filters.http.buffer limit without the
// buffering: a Content-Length over max_request_bytes is refused up front
// (413), a body of unknown length is cut off once it crosses the limit
// while streaming (413 when the upstream has not answered yet).
type bufferFilter struct {
	next http.Handler
	max  int64
}

func (f *bufferFilter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > f.max {
		w.Header().Set("Connection", "close") // the unread body is not drained
		httpx.WriteError(w, tooLarge(f.max))
		return
	}
	if st := stateOf(w); st != nil && st.body != nil && (st.body.limit < 0 || st.body.limit > f.max) {
		st.body.limit = f.max
	}
	f.next.ServeHTTP(w, r)
}
