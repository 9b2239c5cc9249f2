package dataplane

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// tracerName is the instrumentation scope of the data plane's spans.
const tracerName = "github.com/petmesh/petmesh/internal/dataplane"

// tracing is the data plane's span instrumentation: one server span per
// request at the listener and one client span per upstream attempt, with
// the W3C context extracted from and injected into the headers.
//
// It replaces otelhttp on the hot path, which built both spans with a dozen
// attributes each and recorded four OTel HTTP histograms per request (about
// a sixth of the edge's CPU with no trace exporter configured). Here the
// attributes are only computed for a span the sampler records, and the
// request counts and durations are the petmesh_dataplane_* Prometheus
// metrics with pre-resolved children (metrics.go). A nil *tracing (no
// TracerProvider, or a no-op one) does nothing at all: the caller's
// traceparent header is then forwarded unchanged by the reverse proxy.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

// newTracing returns nil when tp records nothing (nil or the OTel no-op
// provider), so that the hot path skips span work with one nil check.
func newTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) *tracing {
	switch tp.(type) {
	case nil, noop.TracerProvider, *noop.TracerProvider:
		return nil
	}
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return &tracing{tracer: tp.Tracer(tracerName), prop: prop}
}

// serverSpanNames holds "METHOD listener" for the common methods, so that
// naming a span does not concatenate strings per request.
type serverSpanNames map[string]string

func newServerSpanNames(listener string) serverSpanNames {
	n := serverSpanNames{}
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions} {
		n[m] = m + " " + listener
	}
	return n
}

func (n serverSpanNames) name(method, listener string) string {
	if s, ok := n[method]; ok {
		return s
	}
	return "HTTP " + listener // arbitrary methods would make span names unbounded
}

// startServer extracts the caller's context from r's headers and starts the
// server span of the request under it.
func (t *tracing) startServer(ctx context.Context, r *http.Request, name string) (context.Context, trace.Span) {
	ctx = t.prop.Extract(ctx, propagation.HeaderCarrier(r.Header))
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		client, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			client = r.RemoteAddr
		}
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		host, port := splitHostPort(r.Host)
		if port > 0 {
			span.SetAttributes(semconv.ServerPort(port))
		}
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.URLPath(r.URL.Path),
			semconv.URLScheme(scheme),
			semconv.ServerAddress(host),
			semconv.ClientAddress(client),
			semconv.NetworkProtocolVersion(strconv.Itoa(r.ProtoMajor)+"."+strconv.Itoa(r.ProtoMinor)),
			semconv.UserAgentOriginal(r.UserAgent()),
		)
	}
	return ctx, span
}

// attrRouteName is the matched route's name (http.route is its path
// template).
const attrRouteName = attribute.Key("petmesh.route")

// splitHostPort splits a Host header into server.address and server.port
// (0 when the header names no port).
func splitHostPort(hostport string) (string, int) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport, 0
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return host, 0
	}
	return host, p
}

// endServer records the outcome on the server span and ends it: the
// route's path template as http.route (semantic conventions: the template,
// never the concrete path nor a name) and its name as petmesh.route.
func endServer(span trace.Span, route, template string, status int) {
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		if template != "" {
			span.SetAttributes(semconv.HTTPRoute(template))
		}
		if route != "" {
			span.SetAttributes(attrRouteName.String(route))
		}
		if status >= 500 {
			span.SetStatus(codes.Error, "")
		}
	}
	span.End()
}

// startClient starts the client span of one upstream attempt and injects
// its context into req's headers (req is the proxy's outgoing request).
func (t *tracing) startClient(req *http.Request, addr string, attempt int) (*http.Request, trace.Span) {
	ctx, span := t.tracer.Start(req.Context(), clientSpanName(req.Method), trace.WithSpanKind(trace.SpanKindClient))
	if span.IsRecording() {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		span.SetAttributes(
			semconv.HTTPRequestMethodKey.String(req.Method),
			semconv.ServerAddress(host),
			semconv.ServerPort(p),
			semconv.URLPath(req.URL.Path),
		)
		if attempt > 0 {
			span.SetAttributes(semconv.HTTPRequestResendCount(attempt))
		}
	}
	t.prop.Inject(ctx, propagation.HeaderCarrier(req.Header))
	return req.WithContext(ctx), span
}

// clientSpanName is "{method}" as the HTTP client semantic conventions
// name a span without a URL template; "HTTP" for a method outside the
// standard set (span names stay bounded).
func clientSpanName(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "HTTP"
}

// endClient records the attempt's outcome; on success the span ends when
// the response body is closed.
func endClient(span trace.Span, resp *http.Response, err error) {
	if err != nil {
		if span.IsRecording() {
			span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		return
	}
	if span.IsRecording() {
		span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
		if resp.StatusCode >= 500 {
			span.SetStatus(codes.Error, "")
		}
	}
	resp.Body = &spanBody{ReadCloser: resp.Body, span: span}
}

func errorType(err error) string {
	switch {
	case isConnectErr(err):
		return "connect_error"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "_OTHER"
}

// spanBody ends the client span when the proxy has copied the response.
type spanBody struct {
	io.ReadCloser
	span trace.Span
}

func (b *spanBody) Close() error {
	err := b.ReadCloser.Close()
	b.span.End()
	return err
}
