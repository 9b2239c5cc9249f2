package httpx

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"runtime/debug"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/telemetry"
)

// HeaderRequestID is the request correlation header.
const HeaderRequestID = "X-Request-Id"

// NewRequestID returns a random 128-bit id in hex. A request id
// correlates log lines and is no secret, so it comes from math/rand/v2's
// ChaCha8 generator (seeded by the runtime from the OS, per thread), as
// Envoy's x-request-id comes from its ordinary random generator: a
// crypto/rand read cost the edge and every sidecar about 4 µs per request.
func NewRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// validRequestID accepts ids of printable ASCII up to 128 bytes, so that a
// client cannot inject log lines or huge values through the header.
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

// RequestID keeps a well-formed incoming X-Request-Id or generates one,
// puts it on the context (for logs) and echoes it in the response.
func RequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(HeaderRequestID)
		if !validRequestID(id) {
			id = NewRequestID()
			r.Header.Set(HeaderRequestID, id)
		}
		w.Header().Set(HeaderRequestID, id)
		next.ServeHTTP(w, r.WithContext(telemetry.WithRequestID(r.Context(), id)))
	})
}

// Recover turns a panic into a logged 500 in the JSON error format.
// http.ErrAbortHandler is re-panicked, as net/http expects.
func Recover(logger *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					logger.ErrorContext(r.Context(), "panic in handler", "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
					WriteError(w, nil)
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// MaxBody limits request bodies to n bytes; reads beyond fail with
// *http.MaxBytesError, which DecodeJSON reports as 413.
func MaxBody(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ContentLength > n {
				WriteError(w, tooLarge(n))
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, n)
			next.ServeHTTP(w, r)
		})
	}
}

// Trace wraps h in an otelhttp server handler using the telemetry's
// providers; spans are named "METHOD /route" from the mux pattern.
func Trace(t *telemetry.Telemetry, operation string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return otelhttp.NewHandler(next, operation,
			otelhttp.WithTracerProvider(t.TracerProvider),
			otelhttp.WithMeterProvider(t.MeterProvider),
			otelhttp.WithPropagators(t.Propagator),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
				if r.Pattern != "" {
					return r.Pattern
				}
				return r.Method
			}),
		)
	}
}

// RouteNames names the active server span after the ServeMux pattern that
// will serve the request ("GET /pets/{id}") and records http.route. It
// must wrap the mux directly: middleware that copies the request (to add
// a context value) hides the pattern the mux sets from outer handlers.
func RouteNames(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
			if _, pattern := mux.Handler(r); pattern != "" {
				route := pattern
				if i := strings.IndexByte(pattern, ' '); i >= 0 {
					route = pattern[i+1:]
				}
				span.SetName(r.Method + " " + route)
				span.SetAttributes(semconv.HTTPRoute(route))
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// Chain applies middleware so that the first one listed is the outermost.
func Chain(h http.Handler, mws ...func(http.Handler) http.Handler) http.Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// Standard is the middleware stack of a petmesh API: tracing, request id,
// panic recovery and a body limit.
func Standard(t *telemetry.Telemetry, operation string, maxBody int64) func(http.Handler) http.Handler {
	return func(h http.Handler) http.Handler {
		if mux, ok := h.(*http.ServeMux); ok {
			h = RouteNames(mux)
		}
		return Chain(h, Trace(t, operation), RequestID, Recover(t.Logger), MaxBody(maxBody))
	}
}

// HandlerFunc is an http handler that returns an error; the error is
// written in the JSON error format.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// ServeHTTP implements http.Handler.
func (f HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		WriteError(w, err)
	}
}
