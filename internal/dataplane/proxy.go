package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	oxyutils "github.com/vulcand/oxy/v2/utils"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/httpx"
)

// HeaderOverloaded marks a 503 caused by a circuit-breaker threshold.
const HeaderOverloaded = "X-Petmesh-Overloaded"

// retryPolicy is a compiled Envoy RetryPolicy.
type retryPolicy struct {
	num                        int
	perTry                     time.Duration
	base, max                  time.Duration
	on5xx, onGw, onReset, onCF bool
	codes                      []int
	nonIdempotent              bool
	// avoidPrevious: retry_host_predicate previous_hosts, a retry goes to
	// a host this request has not tried when another eligible one exists.
	avoidPrevious bool
}

func (p *retryPolicy) retriableStatus(code int) bool {
	switch {
	case p.on5xx && code >= 500:
		return true
	case p.onGw && (code == 502 || code == 503 || code == 504):
		return true
	}
	for _, c := range p.codes {
		if c == code {
			return true
		}
	}
	return false
}

func (p *retryPolicy) retriableErr(err error) bool {
	switch {
	case isConnectErr(err):
		return p.onCF || p.on5xx || p.onGw
	case errors.Is(err, context.DeadlineExceeded): // per-try timeout
		return p.on5xx || p.onGw
	default: // reset, EOF, protocol error
		return p.onReset || p.on5xx
	}
}

func isConnectErr(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// target is one (route, cluster) pair with its reverse proxy.
type target struct {
	clusterName string
	weight      uint64
	cl          *clusterRT // nil when the cluster is missing
	proxy       *httputil.ReverseProxy
	stats       *rcStats
	// local serves the cluster in process (Options.LocalClusters).
	local http.Handler
	rw    rewriteCfg
}

// router is the terminal handler of a route: it picks a weighted target,
// applies the cluster's circuit breakers and proxies with retries.
type router struct {
	targets     []*target
	totalWeight uint64
	rand        func(uint64) uint64
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := rt.targets[0]
	if len(rt.targets) > 1 {
		n := rt.rand(rt.totalWeight)
		for _, c := range rt.targets {
			if n < c.weight {
				t = c
				break
			}
			n -= c.weight
		}
	}
	st := stateOf(w)
	if st != nil {
		st.stats, st.entry.Cluster = t.stats, t.clusterName
	}
	if t.local != nil {
		t.serveLocal(w, r, st)
		return
	}
	if t.cl == nil {
		writeUpstreamError(w, r, errClusterNotFound)
		return
	}
	if c := t.cl.cache; c != nil && st != nil && cacheableRequest(r) {
		if c.serve(w, st.entry.Route, r) {
			return
		}
		st.capture = &capture{}
		w = &captureWriter{ResponseWriter: w, c: st.capture}
		defer c.store(st.entry.Route, r, st.capture)
	}
	if err := t.cl.admit(r.Context()); err != nil {
		writeUpstreamError(w, r, err)
		return
	}
	defer t.cl.release()
	t.proxy.ServeHTTP(w, r)
}

// serveLocal hands the request to an in-process handler with the
// route's rewrites applied.
func (t *target) serveLocal(w http.ResponseWriter, r *http.Request, st *reqState) {
	if t.cl != nil {
		if err := t.cl.admit(r.Context()); err != nil {
			writeUpstreamError(w, r, err)
			return
		}
		defer t.cl.release()
	}
	if st != nil {
		st.entry.Upstream = "local"
	}
	if t.rw.prefixRewrite != "" || t.rw.host != "" {
		r2 := new(http.Request)
		*r2 = *r
		u := *r.URL
		r2.URL = &u
		t.rw.rewritePath(r2.URL)
		if t.rw.host != "" {
			r2.Host = t.rw.host
		}
		r = r2
	}
	t.local.ServeHTTP(w, r)
}

var bufPool = &bytePool{p: sync.Pool{New: func() any { return new([32 << 10]byte) }}}

// bytePool is the reverse proxy's copy buffer pool. It pools array
// pointers, so that Put converts the slice back without allocating (a
// pool of *[]byte allocates a new pointer on every Put).
type bytePool struct{ p sync.Pool }

func (b *bytePool) Get() []byte { return b.p.Get().(*[32 << 10]byte)[:] }

func (b *bytePool) Put(s []byte) {
	if cap(s) == 32<<10 {
		b.p.Put((*[32 << 10]byte)(s[:32<<10]))
	}
}

// rewriteCfg is the per-route request rewrite.
type rewriteCfg struct {
	prefix, prefixRewrite string
	host                  string
	trustedHops           int
}

// rewritePath applies prefix_rewrite to u.
func (rw *rewriteCfg) rewritePath(u *url.URL) {
	if rw.prefixRewrite == "" && rw.prefix == "" {
		return
	}
	if strings.HasPrefix(u.Path, rw.prefix) {
		p := rw.prefixRewrite + u.Path[len(rw.prefix):]
		if p == "" || p[0] != '/' {
			p = "/" + p
		}
		u.Path, u.RawPath = p, ""
	}
}

func newProxy(cl *clusterRT, policy *retryPolicy, rw rewriteCfg, maxBody int64, tr *tracing) *httputil.ReverseProxy {
	at := &attemptTransport{cl: cl, policy: policy, maxBody: maxBody, tr: tr}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			out := pr.Out
			out.URL.Scheme = "http"
			out.URL.Host = cl.name // replaced by the chosen endpoint per attempt
			rw.rewritePath(out.URL)
			if rw.host != "" {
				out.Host = rw.host
			} else {
				out.Host = pr.In.Host
			}
			if rw.trustedHops > 0 {
				if xff := pr.In.Header["X-Forwarded-For"]; len(xff) > 0 {
					out.Header["X-Forwarded-For"] = xff
				}
			}
			pr.SetXForwarded()
		},
		Transport:    at,
		BufferPool:   bufPool,
		ErrorHandler: writeUpstreamError,
		ModifyResponse: func(resp *http.Response) error {
			if st := stateFromContext(resp.Request.Context()); st != nil && st.capture != nil {
				st.capture.status, st.capture.header = resp.StatusCode, resp.Header.Clone()
			}
			// The proxy's own request id is already on the response.
			resp.Header.Del("X-Request-Id")
			return nil
		},
	}
}

// attemptTransport runs the attempts of one request: endpoint choice,
// per-try timeout, retries with backoff under the budget, and outlier
// accounting.
type attemptTransport struct {
	cl      *clusterRT
	policy  *retryPolicy
	maxBody int64
	tr      *tracing // client spans; nil: none
}

func (a *attemptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	cl, p := a.cl, a.policy
	st := stateFromContext(req.Context())
	retries := 0
	var replay []byte
	if p != nil && p.num > 0 && (p.nonIdempotent || idempotent(req.Method)) {
		retries = p.num
		if req.Body != nil && req.Body != http.NoBody {
			if req.ContentLength > a.maxBody {
				retries = 0
			} else {
				buf, err := io.ReadAll(io.LimitReader(req.Body, a.maxBody+1))
				if err != nil {
					return nil, err
				}
				if int64(len(buf)) > a.maxBody {
					retries = 0 // too large to replay: send once
					req.Body = struct {
						io.Reader
						io.Closer
					}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
				} else {
					req.Body.Close()
					replay = buf
					req.Body = io.NopCloser(bytes.NewReader(buf))
				}
			}
		}
	}
	var triedBuf [4]*endpointRT
	tried := triedBuf[:0] // hosts tried so far (previous_hosts predicate)
	for attempt := 0; ; attempt++ {
		ep := cl.pick(tried)
		if p != nil && p.avoidPrevious && retries > 0 && ep != nil && !slices.Contains(tried, ep) {
			tried = append(tried, ep)
		}
		if ep == nil {
			if attempt > 0 {
				cl.retryDone()
			}
			return nil, errNoHealthyUpstream
		}
		// The first attempt sends req itself; a retry sends a copy with its
		// own URL (the endpoint differs) and a fresh body reader.
		areq := req
		var cancel context.CancelFunc
		if p != nil && p.perTry > 0 {
			var ctx context.Context
			ctx, cancel = context.WithTimeout(req.Context(), p.perTry)
			areq = req.WithContext(ctx)
		} else if attempt > 0 {
			areq = req.WithContext(req.Context())
		}
		if attempt > 0 {
			u := *req.URL
			areq.URL = &u
			if replay != nil {
				areq.Body = io.NopCloser(bytes.NewReader(replay))
			}
		}
		areq.URL.Host = ep.addr
		if st != nil {
			st.entry.Upstream = ep.addr
		}
		var span trace.Span
		if a.tr != nil {
			areq, span = a.tr.startClient(areq, ep.addr, attempt)
		}
		ep.active.Add(1)
		resp, err := cl.transport.RoundTrip(areq)
		ep.active.Add(-1)
		if err == nil && st != nil && st.body.failed() {
			// The upstream answered a request whose body broke on the way
			// (it saw it cut off): the answer is the client's error, not
			// the upstream's response.
			resp.Body.Close()
			resp, err = nil, st.body.err
		}
		if span != nil {
			endClient(span, resp, err)
		}
		if attempt > 0 {
			cl.retryDone()
		}

		o := outcomeOK
		switch {
		case err != nil && st != nil && st.body.failed():
			// The client's body failed (gone, malformed, over the limit):
			// not the endpoint's fault, and not worth a retry.
			o, retries = outcomeNone, 0
		case err != nil:
			if req.Context().Err() == nil { // not the client's or the route's doing
				o = outcomeGateway
			}
		case resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504:
			o = outcomeGateway
		case resp.StatusCode >= 500:
			o = outcome5xx
		}
		cl.report(ep, o)

		retry := attempt < retries && req.Context().Err() == nil
		if retry {
			if err != nil {
				retry = p.retriableErr(err) && !errors.Is(err, errOverloaded)
			} else {
				retry = p.retriableStatus(resp.StatusCode)
			}
		}
		if retry && !cl.retryAllowed() {
			retry = false
		}
		if !retry {
			if err != nil {
				if cancel != nil {
					cancel()
				}
				return nil, err
			}
			if cancel != nil {
				resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
			}
			return resp, nil
		}
		if resp != nil {
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		}
		if cancel != nil {
			cancel()
		}
		cl.stats.retries.WithLabelValues(cl.name).Inc()
		if st != nil {
			st.entry.Retries++
		}
		if !a.backoff(req.Context(), attempt) {
			cl.retryDone()
			return nil, req.Context().Err()
		}
	}
}

// backoff sleeps a random time in [0, min(max, base*2^attempt)) (full
// jitter); false when ctx ends first.
func (a *attemptTransport) backoff(ctx context.Context, attempt int) bool {
	p := a.policy
	d := p.base << min(attempt, 16)
	if d > p.max || d <= 0 {
		d = p.max
	}
	if d <= 0 {
		return ctx.Err() == nil
	}
	d = time.Duration(a.cl.opts.Rand(uint64(d)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// StatusClientClosedRequest is the status recorded (never seen by the
// client) when the client went away before the response (oxy's and
// nginx's 499).
const StatusClientClosedRequest = oxyutils.StatusClientClosedRequest

// errorStatus maps an upstream error to the response: circuit breaker and
// no healthy endpoint 503, connect failure 503, timeouts 504, client gone
// 499, as Envoy does. Any other error is classified by oxy's error handler
// (a network timeout 504, a reset or another network error 502), always
// as a gateway error: an error oxy does not know (a malformed response)
// is a 502, never a 500.
func errorStatus(r *http.Request, err error) *httpx.Error {
	switch {
	case errors.Is(err, errOverloaded):
		return &httpx.Error{Status: 503, Code: httpx.CodeUnavailable, Message: "upstream overloaded"}
	case errors.Is(err, errNoHealthyUpstream):
		return &httpx.Error{Status: 503, Code: httpx.CodeUnavailable, Message: "no healthy upstream"}
	case errors.Is(err, errClusterNotFound):
		return &httpx.Error{Status: 503, Code: httpx.CodeUnavailable, Message: "cluster not found"}
	case errors.Is(r.Context().Err(), context.Canceled):
		return &httpx.Error{Status: StatusClientClosedRequest, Code: httpx.CodeClientClosed, Message: "client closed the request"}
	case errors.Is(r.Context().Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return &httpx.Error{Status: 504, Code: httpx.CodeTimeout, Message: "upstream request timeout"}
	case isConnectErr(err):
		return &httpx.Error{Status: 503, Code: httpx.CodeUnavailable, Message: "upstream connect error"}
	}
	if oxyStatus(r, err) == http.StatusGatewayTimeout {
		return &httpx.Error{Status: 504, Code: httpx.CodeTimeout, Message: "upstream request timeout"}
	}
	return &httpx.Error{Status: 502, Code: httpx.CodeBadGateway, Message: "upstream reset or protocol error"}
}

// oxyStatus is the status oxy's default error handler gives err. Its
// plain-text body is discarded (petmesh answers with its JSON error); only
// the error path pays for it.
func oxyStatus(r *http.Request, err error) int {
	var rec statusOnly
	oxyutils.DefaultHandler.ServeHTTP(&rec, r, err)
	return rec.code
}

// statusOnly is a ResponseWriter that keeps the status and drops the rest.
type statusOnly struct {
	code int
	h    http.Header
}

func (s *statusOnly) Header() http.Header {
	if s.h == nil {
		s.h = http.Header{}
	}
	return s.h
}
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.code = code }

func writeUpstreamError(w http.ResponseWriter, r *http.Request, err error) {
	e := errorStatus(r, err)
	if st := stateOf(w); st != nil {
		st.upstreamErr = err
		if st.body.failed() && !errors.Is(r.Context().Err(), context.DeadlineExceeded) {
			// The upstream failed because the client's body did: answer
			// as the client's fault (400, 413, 499), never 502.
			e = clientBodyError(st.body.err)
			st.upstreamErr = fmt.Errorf("client body: %w", st.body.err)
			w.Header().Set("Connection", "close") // the rest of the body is not drained
		}
	}
	if errors.Is(err, errOverloaded) {
		w.Header().Set(HeaderOverloaded, "true")
	}
	if e.Status == StatusClientClosedRequest {
		if st := stateOf(w); st != nil {
			st.rw.status = StatusClientClosedRequest
		}
		return // nobody is listening; recorded for logs and metrics
	}
	httpx.WriteError(w, e)
}
