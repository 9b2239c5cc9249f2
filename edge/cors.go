package edge

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/petmesh/petmesh/internal/httpx"
)

// cors is the edge's CORS policy (-cors-* flags). The edge owns CORS for
// everything behind it: Access-Control-* headers from upstreams are always
// removed from responses to browser requests (those with an Origin), so a
// service cannot open what the edge keeps closed. Without allowed origins
// (the default) CORS is closed: preflights are refused (403) and responses
// carry no Access-Control-Allow-Origin, so browsers on other origins cannot
// read them. Requests without an Origin header are untouched.
type cors struct {
	any     bool                // "*": every origin (never with credentials: the edge uses bearer tokens, not cookies)
	origins map[string]struct{} // exact, lowercase
	methods []string
	headers []string // canonical
	allowM  string   // Access-Control-Allow-Methods
	allowH  string   // Access-Control-Allow-Headers
	maxAge  string
}

// corsExposed are the response headers scripts may read.
const corsExposed = "X-Request-Id, Retry-After, WWW-Authenticate, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"

func newCORS(c *Config) *cors {
	if len(c.CORSAllowedOrigins) == 0 {
		return nil
	}
	p := &cors{origins: map[string]struct{}{}, methods: c.CORSAllowedMethods, maxAge: strconv.Itoa(int(c.CORSMaxAge.Seconds()))}
	for _, o := range c.CORSAllowedOrigins {
		if o == "*" {
			p.any = true
			continue
		}
		p.origins[strings.ToLower(o)] = struct{}{}
	}
	for _, h := range c.CORSAllowedHeaders {
		p.headers = append(p.headers, http.CanonicalHeaderKey(h))
	}
	p.allowM = strings.Join(p.methods, ", ")
	p.allowH = strings.Join(p.headers, ", ")
	return p
}

func (p *cors) allows(origin string) bool {
	if p == nil {
		return false
	}
	if p.any {
		return true
	}
	_, ok := p.origins[origin]
	return ok
}

// handleCORS answers a preflight (done) or returns the writer that puts the
// policy's headers on the response.
func (f *front) handleCORS(w http.ResponseWriter, r *http.Request, origin string) (http.ResponseWriter, bool) {
	p := f.cors
	allowed := p.allows(origin)
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		if p != nil {
			w.Header().Add("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
		}
		if err := p.preflight(r, allowed); err != nil {
			f.refused.WithLabelValues("cors").Inc()
			httpx.WriteError(w, err)
			return w, true
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", p.allowOrigin(origin))
		h.Set("Access-Control-Allow-Methods", p.allowM)
		if p.allowH != "" {
			h.Set("Access-Control-Allow-Headers", p.allowH)
		}
		h.Set("Access-Control-Max-Age", p.maxAge)
		w.WriteHeader(http.StatusNoContent)
		return w, true
	}
	cw := &corsWriter{ResponseWriter: w}
	if allowed {
		cw.origin = p.allowOrigin(origin)
	}
	cw.vary = p != nil
	return cw, false
}

func (p *cors) allowOrigin(origin string) string {
	if p.any {
		return "*"
	}
	return origin
}

// preflight checks a preflight request against the policy.
func (p *cors) preflight(r *http.Request, allowed bool) *httpx.Error {
	if !allowed {
		return &httpx.Error{Status: http.StatusForbidden, Code: httpx.CodePermissionDenied, Field: "Origin", Message: "cross-origin requests from this origin are not allowed"}
	}
	if m := r.Header.Get("Access-Control-Request-Method"); !slices.Contains(p.methods, m) {
		return &httpx.Error{Status: http.StatusForbidden, Code: httpx.CodePermissionDenied, Field: "Access-Control-Request-Method", Message: "method " + strconv.Quote(m) + " is not allowed cross-origin"}
	}
	for _, v := range r.Header.Values("Access-Control-Request-Headers") {
		for h := range strings.SplitSeq(v, ",") {
			h = http.CanonicalHeaderKey(strings.TrimSpace(h))
			if h != "" && !slices.Contains(p.headers, h) {
				return &httpx.Error{Status: http.StatusForbidden, Code: httpx.CodePermissionDenied, Field: "Access-Control-Request-Headers", Message: "header " + strconv.Quote(h) + " is not allowed cross-origin"}
			}
		}
	}
	return nil
}

// corsWriter replaces the upstream's Access-Control-* response headers with
// the edge's policy just before the status line is written.
type corsWriter struct {
	http.ResponseWriter
	origin string // Access-Control-Allow-Origin; "" when not allowed
	vary   bool
	wrote  bool
}

func (w *corsWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		h := w.ResponseWriter.Header()
		for k := range h {
			if strings.HasPrefix(k, "Access-Control-") {
				delete(h, k)
			}
		}
		if w.vary {
			h.Add("Vary", "Origin")
		}
		if w.origin != "" {
			h.Set("Access-Control-Allow-Origin", w.origin)
			h.Set("Access-Control-Expose-Headers", corsExposed)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *corsWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController (flush, deadlines, hijack) reach the
// server's writer.
func (w *corsWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush keeps streaming responses streaming.
func (w *corsWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}
