package dataplane

import (
	"context"
	"net"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// AccessEntry describes one finished request. It never holds credentials.
type AccessEntry struct {
	Time          time.Time
	Listener      string
	Route         string
	Cluster       string
	Upstream      string // endpoint address of the last attempt
	Method        string
	Path          string
	Host          string
	ClientIP      string
	Status        int
	BytesSent     int64
	Duration      time.Duration
	Retries       int
	Subject       string
	TraceID       string
	RequestID     string
	UpstreamError string
}

// AccessLogFunc receives every finished request. The entry is only valid
// during the call (copy it to keep it); the function must not block.
type AccessLogFunc func(ctx context.Context, e *AccessEntry)

// reqState is the per-request state: one allocation that is both the
// request's context (so the upstream transport finds it) and the
// response-writer wrapper (so filters and the router record into it).
type reqState struct {
	context.Context
	rw          respWriter
	entry       AccessEntry
	stats       *rcStats
	upstreamErr error
	// id is the identity the jwt_authn filter verified (zero: anonymous).
	id identity.Identity
	// capture records a cacheable upstream response (nil otherwise).
	capture *capture
	// body wraps the request body (nil without one): its read errors are
	// the client's fault, and the buffer filter's limit applies to it.
	body *clientBody
}

type stateKey struct{}

func (s *reqState) Value(k any) any {
	if k == (stateKey{}) {
		return s
	}
	return s.Context.Value(k)
}

func stateFromContext(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

func stateOf(w http.ResponseWriter) *reqState {
	switch rw := w.(type) {
	case *respWriter:
		return rw.st
	case *captureWriter:
		return stateOf(rw.ResponseWriter)
	}
	return nil
}

type respWriter struct {
	http.ResponseWriter
	st     *reqState
	status int
	bytes  int64
}

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *respWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		f.Flush()
	}
}

func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// listenerRT is the handler of one listener: identity-header stripping,
// request id, route match, per-route filter chain, metrics and access log.
type listenerRT struct {
	name        string
	table       *routeTable
	genID       bool
	trustedHops int
	accessLog   AccessLogFunc
	now         func() time.Time
	notFound    *rcStats
	// tr starts the server span (nil: no spans); spanNames names them.
	tr        *tracing
	spanNames serverSpanNames
}

func (l *listenerRT) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := l.now()
	identity.StripHeaders(r.Header)
	ids := r.Header[httpx.HeaderRequestID]
	id := ""
	if len(ids) > 0 {
		id = ids[0]
	}
	if !validRequestID(id) {
		if l.genID {
			id = httpx.NewRequestID()
			ids = []string{id}
			r.Header[httpx.HeaderRequestID] = ids
		} else {
			id = ""
			delete(r.Header, httpx.HeaderRequestID)
		}
	}
	if id != "" {
		// One value slice for the request and the response (capped, so an
		// append to either copies).
		w.Header()[httpx.HeaderRequestID] = ids[:1:1]
	}
	st := &reqState{Context: r.Context()}
	st.rw = respWriter{ResponseWriter: w, st: st}
	st.entry.RequestID = id
	if r.Body != nil && r.Body != http.NoBody {
		st.body = newClientBody(r.Body)
		r.Body = st.body
	}
	var span trace.Span
	if l.tr != nil {
		st.Context, span = l.tr.startServer(st.Context, r, l.spanNames.name(r.Method, l.name))
	}
	rt := l.table.match(r)
	template := ""
	var cancel context.CancelFunc
	if rt == nil {
		st.stats = l.notFound
		httpx.WriteError(&st.rw, &httpx.Error{Status: http.StatusNotFound, Code: httpx.CodeNotFound, Message: "no route matches " + r.Method + " " + r.URL.Path})
	} else {
		st.entry.Route, st.stats, template = rt.name, rt.stats, rt.match.template()
		if rt.timeout.d > 0 {
			st.Context, cancel = context.WithTimeout(st.Context, time.Duration(rt.timeout.d))
		}
		rt.handler.ServeHTTP(&st.rw, r.WithContext(st))
		if cancel != nil {
			cancel()
		}
	}
	l.finish(r, st, start, span, template)
}

// finish records the request: server span, metrics (the duration with the
// sampled trace as its exemplar) and access log. template is the matched
// route's path template (http.route), empty when no route matched.
func (l *listenerRT) finish(r *http.Request, st *reqState, start time.Time, span trace.Span, template string) {
	d := l.now().Sub(start)
	status := st.rw.status
	if status == 0 {
		status = http.StatusOK
	}
	if span != nil {
		endServer(span, st.entry.Route, template, status)
	}
	if s := st.stats; s != nil {
		s.code(status).Inc()
		telemetry.Observe(st, s.dur, d.Seconds())
	}
	if l.accessLog == nil {
		return
	}
	e := &st.entry
	e.Time, e.Listener, e.Method, e.Path, e.Host = start, l.name, r.Method, r.URL.Path, r.Host
	e.ClientIP = clientIP(r, l.trustedHops)
	e.Status, e.BytesSent, e.Duration = status, st.rw.bytes, d
	if st.upstreamErr != nil {
		e.UpstreamError = st.upstreamErr.Error()
	}
	if span != nil {
		if sc := span.SpanContext(); sc.IsValid() {
			e.TraceID = sc.TraceID().String()
		}
	} else if tp := r.Header.Get("Traceparent"); len(tp) >= 35 {
		e.TraceID = tp[3:35]
	}
	// st carries the server span (the log handler adds trace and span
	// ids from it); its deadline may have passed, which logging ignores.
	l.accessLog(st, e)
}

// clientIP is the remote address, or with trusted hops the address that
// many entries from the right of X-Forwarded-For (as Envoy's
// xff_num_trusted_hops).
func clientIP(r *http.Request, trustedHops int) string {
	if trustedHops > 0 {
		if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
			parts := strings.Split(strings.Join(xff, ","), ",")
			if i := len(parts) - trustedHops; i >= 0 && i < len(parts) {
				if ip := strings.TrimSpace(parts[i]); ip != "" {
					return ip
				}
			}
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// directResponse answers from the route itself.
type directResponse struct {
	status int
	body   []byte
}

func (d *directResponse) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if len(d.body) > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.WriteHeader(d.status)
	_, _ = w.Write(d.body)
}
