package edge

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
)

// front is the edge's outermost public handler, in front of the data
// plane: requests the framing guard refused, load shedding, client-header
// trust, CORS and the body limits. It holds no lock; in-flight requests are
// one atomic counter.
type front struct {
	next          http.Handler
	maxConcurrent int64
	maxBody       int64
	routeLimits   []routeLimit // longest prefix first
	trusted       []netip.Prefix
	cors          *cors // nil: CORS closed
	inflight      atomic.Int64
	shed          prometheus.Counter
	refused       *prometheus.CounterVec
}

func newFront(next http.Handler, c *Config, reg prometheus.Registerer) (*front, error) {
	f := &front{
		next:          next,
		maxConcurrent: int64(c.MaxConcurrent),
		maxBody:       c.MaxBody,
		routeLimits:   c.routeLimits,
		trusted:       c.trusted,
		cors:          newCORS(c),
		shed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_edge_shed_total",
			Help: "Requests answered 503 because -max-concurrent requests were in flight.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_edge_refused_requests_total",
			Help: "Requests the edge refused before routing: reason smuggling (ambiguous framing) or cors (preflight not allowed).",
		}, []string{"reason"}),
	}
	if reg != nil {
		inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "petmesh_edge_inflight_requests",
			Help: "Requests in flight on the public listener.",
		}, func() float64 { return float64(f.inflight.Load()) })
		for _, col := range []prometheus.Collector{f.shed, f.refused, inflight} {
			if err := reg.Register(col); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if v := r.Header[framingHeader]; v != nil {
		f.refused.WithLabelValues("smuggling").Inc()
		w.Header().Set("Connection", "close")
		msg := "request has both Content-Length and Transfer-Encoding (request smuggling)"
		if v[0] == framingTE10 {
			msg = "Transfer-Encoding is not allowed in an HTTP/1.0 request"
		}
		httpx.WriteError(w, &httpx.Error{Status: http.StatusBadRequest, Code: httpx.CodeInvalidArgument, Field: "Transfer-Encoding", Message: msg})
		return
	}
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if f.maxConcurrent > 0 && n > f.maxConcurrent {
		f.shed.Inc()
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Connection", "close")
		httpx.WriteError(w, &httpx.Error{Status: http.StatusServiceUnavailable, Code: httpx.CodeUnavailable, Message: "edge overloaded"})
		return
	}
	f.sanitize(r)
	if origin := r.Header.Get("Origin"); origin != "" {
		var done bool
		if w, done = f.handleCORS(w, r, origin); done {
			return
		}
	}
	if r.Body != nil && r.Body != http.NoBody {
		body := r.Body
		if max := f.bodyLimit(r.URL.Path); max > 0 {
			if r.ContentLength > max {
				httpx.WriteError(w, &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Message: fmt.Sprintf("request body over %d bytes", max)})
				return
			}
			body = http.MaxBytesReader(w, body, max)
		}
		cb := &clientBody{ResponseWriter: w, body: body}
		w, r.Body = cb, cb
	}
	f.next.ServeHTTP(w, r)
}

// bodyLimit is the body limit of a path: the longest -route-max-body
// prefix, else -max-body (0: none).
func (f *front) bodyLimit(path string) int64 {
	for _, l := range f.routeLimits {
		if strings.HasPrefix(path, l.prefix) {
			return l.max
		}
	}
	return f.maxBody
}

// sanitize removes what a client must not decide: identity headers
// (x-petmesh-*), and forwarding headers (Forwarded, X-Forwarded-*) unless
// the peer is a trusted proxy. With a trusted peer, the client address is
// taken from X-Forwarded-For (the rightmost address that is not a trusted
// proxy) and becomes r.RemoteAddr, so rate limits, the access log and the
// X-Forwarded-For sent upstream all see the real client.
func (f *front) sanitize(r *http.Request) {
	h := r.Header
	// Fast path: most requests carry none of these headers.
	hasFwd := false
	for k := range h {
		if len(k) >= 9 && (strings.HasPrefix(k, identity.HeaderPrefix) || strings.HasPrefix(k, "X-Forwarded-") || k == "Forwarded" || k == "X-Real-Ip") {
			hasFwd = true
			break
		}
	}
	if !hasFwd {
		return
	}
	identity.StripHeaders(h)
	delete(h, "X-Real-Ip") // nobody downstream should believe a client's claim of its address
	if len(f.trusted) > 0 && f.isTrusted(peerAddr(r.RemoteAddr)) {
		if ip, ok := f.clientFromXFF(h.Values("X-Forwarded-For")); ok {
			r.RemoteAddr = net.JoinHostPort(ip.String(), "0")
		}
		h.Del("Forwarded")
		return // X-Forwarded-Proto/-Host of a trusted proxy are kept
	}
	h.Del("Forwarded")
	for k := range h {
		if strings.HasPrefix(k, "X-Forwarded-") {
			delete(h, k)
		}
	}
}

func (f *front) isTrusted(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range f.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientFromXFF walks X-Forwarded-For from the right, skipping trusted
// proxies; the first other address is the client. A malformed entry stops
// the walk (everything left of it is client-controlled).
func (f *front) clientFromXFF(vals []string) (netip.Addr, bool) {
	var last netip.Addr
	for i := len(vals) - 1; i >= 0; i-- {
		parts := strings.Split(vals[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return last, last.IsValid()
			}
			a = a.Unmap()
			if !f.isTrusted(a) {
				return a, true
			}
			last = a
		}
	}
	return last, last.IsValid()
}

func peerAddr(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err == nil {
		return ap.Addr()
	}
	a, _ := netip.ParseAddr(remote)
	return a
}

// clientBody is both the request body and the response writer of a request
// with a body. It records an error reading the client's body (over the
// body limit, a malformed chunked encoding, a short body) so that the
// upstream failure the data plane reports for it (5xx: it cannot tell the
// client's body from the upstream) is answered as the client's fault
// instead: 413 over the limit, 400 otherwise.
type clientBody struct {
	http.ResponseWriter
	body     io.ReadCloser
	err      error
	replaced bool // the 5xx was replaced; its body is dropped
}

func (c *clientBody) Read(p []byte) (int, error) {
	n, err := c.body.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && c.err == nil {
		c.err = err
	}
	return n, err
}

func (c *clientBody) Close() error { return c.body.Close() }

func (c *clientBody) WriteHeader(code int) {
	if code < 500 || c.err == nil || c.replaced {
		c.ResponseWriter.WriteHeader(code)
		return
	}
	c.replaced = true
	e := &httpx.Error{Status: http.StatusBadRequest, Code: httpx.CodeInvalidArgument, Field: "body", Message: "malformed request body"}
	if mb := (*http.MaxBytesError)(nil); errors.As(c.err, &mb) {
		e = &httpx.Error{Status: http.StatusRequestEntityTooLarge, Code: httpx.CodeTooLarge, Message: fmt.Sprintf("request body over %d bytes", mb.Limit)}
	}
	h := c.ResponseWriter.Header()
	h.Del("Content-Length")
	h.Set("Connection", "close")
	httpx.WriteError(c.ResponseWriter, e)
}

func (c *clientBody) Write(b []byte) (int, error) {
	if c.replaced {
		return len(b), nil
	}
	return c.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (c *clientBody) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Flush keeps streaming responses streaming (the data plane's writer
// flushes through an http.Flusher assertion).
func (c *clientBody) Flush() {
	if !c.replaced {
		_ = http.NewResponseController(c.ResponseWriter).Flush()
	}
}
