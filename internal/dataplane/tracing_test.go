package dataplane

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/protobuf/types/known/durationpb"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

const testTraceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

// traceBackend records the traceparent each request arrived with.
func traceBackend(t *testing.T) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var got []string
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Traceparent"))
		mu.Unlock()
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(s.Close)
	return s, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), got...) }
}

func TestTracingSpans(t *testing.T) {
	be, seen := traceBackend(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	var entry AccessEntry
	var logged trace.SpanContext
	h := newHarness(t, Options{TracerProvider: tp, Propagator: propagation.TraceContext{},
		AccessLog: func(ctx context.Context, e *AccessEntry) { entry, logged = *e, trace.SpanContextFromContext(ctx) }},
		resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("pets", "/pets", "a"), prefixRoute("rest", "/", "a")),
			[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))

	if st, _, _ := h.do(t, "GET", "/pets/7", map[string]string{"Traceparent": testTraceparent}, nil); st != 200 {
		t.Fatalf("status %d", st)
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("want a server and a client span, got %d", len(spans))
	}
	var server, client sdktrace.ReadOnlySpan
	for _, s := range spans {
		switch s.SpanKind() {
		case trace.SpanKindServer:
			server = s
		case trace.SpanKindClient:
			client = s
		}
	}
	if server == nil || client == nil {
		t.Fatalf("span kinds: %v", spans)
	}
	if server.Name() != "GET "+testListener || server.Parent().SpanID().String() != "b7ad6b7169203331" ||
		server.SpanContext().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("server span %q parent %v trace %v", server.Name(), server.Parent().SpanID(), server.SpanContext().TraceID())
	}
	if client.Parent().SpanID() != server.SpanContext().SpanID() {
		t.Fatal("the client span is not a child of the server span")
	}
	attrs := map[string]string{}
	for _, kv := range server.Attributes() {
		attrs[string(kv.Key)] = kv.Value.String()
	}
	// Semantic conventions: http.route is the route's template, not its
	// name (kept as petmesh.route) nor the concrete path; server.address
	// is the host alone, the port separate.
	_, srvPort, _ := net.SplitHostPort(hostOf(h.srv.URL))
	if attrs["http.response.status_code"] != "200" || attrs["http.route"] != "/pets" || attrs["petmesh.route"] != "pets" ||
		attrs["http.request.method"] != "GET" || attrs["server.address"] != "127.0.0.1" || attrs["server.port"] != srvPort {
		t.Fatalf("server attributes %v", attrs)
	}
	cattrs := map[string]string{}
	for _, kv := range client.Attributes() {
		cattrs[string(kv.Key)] = kv.Value.String()
	}
	_, bePort, _ := net.SplitHostPort(hostOf(be.URL))
	if client.Name() != "GET" || cattrs["server.address"] != "127.0.0.1" || cattrs["server.port"] != bePort {
		t.Fatalf("client span %q attributes %v, want name GET and the endpoint's address and port", client.Name(), cattrs)
	}
	want := "00-0af7651916cd43dd8448eb211c80319c-" + client.SpanContext().SpanID().String() + "-01"
	if got := seen(); len(got) != 1 || got[0] != want {
		t.Fatalf("upstream traceparent %v, want %s", got, want)
	}
	if entry.TraceID != "0af7651916cd43dd8448eb211c80319c" || logged.SpanID() != server.SpanContext().SpanID() {
		t.Fatalf("access log trace %q, context span %v", entry.TraceID, logged.SpanID())
	}

	// An upstream 503 marks both spans as errors.
	if st, _, _ := h.do(t, "GET", "/fail", nil, nil); st != 503 {
		t.Fatalf("status %d", st)
	}
	for _, s := range rec.Ended()[2:] {
		if s.Status().Code.String() != "Error" {
			t.Fatalf("%s span status %v", s.SpanKind(), s.Status())
		}
	}
}

// Without a TracerProvider, or with the no-op one, no span is made and the
// caller's traceparent reaches the upstream unchanged.
func TestTracingOffForwardsTraceparent(t *testing.T) {
	for _, tc := range []struct {
		desc string
		tp   trace.TracerProvider
	}{
		{"nil provider", nil},
		{"no-op provider", noop.NewTracerProvider()},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			be, seen := traceBackend(t)
			var entry AccessEntry
			h := newHarness(t, Options{TracerProvider: tc.tp, AccessLog: func(_ context.Context, e *AccessEntry) { entry = *e }},
				resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("pets", "/", "a")),
					[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
			if h.dp.tracing != nil {
				t.Fatal("tracing is on")
			}
			h.do(t, "GET", "/pets", map[string]string{"Traceparent": testTraceparent}, nil)
			h.do(t, "GET", "/pets", nil, nil)
			got := seen()
			if len(got) != 2 || got[0] != testTraceparent || got[1] != "" {
				t.Fatalf("upstream traceparents %q", got)
			}
			if entry.TraceID != "" {
				t.Fatalf("trace id %q logged for a request without one", entry.TraceID)
			}
		})
	}
}

// Every upstream attempt gets its own client span, and the retry says so.
func TestTracingRetrySpans(t *testing.T) {
	be, seen := traceBackend(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	rt := retryRoute("5xx", 1, false)
	h := newHarness(t, Options{TracerProvider: tp},
		resources(listenerRDS(t, testListener, "r"), routeConfig("r", rt), []*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	if st, _, _ := h.do(t, "GET", "/fail", nil, nil); st != 503 {
		t.Fatalf("status %d", st)
	}
	var clients []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			clients = append(clients, s)
		}
	}
	got := seen()
	if len(clients) != 2 || len(got) != 2 {
		t.Fatalf("%d client spans, %d upstream requests", len(clients), len(got))
	}
	resend := ""
	for _, kv := range clients[1].Attributes() {
		if kv.Key == "http.request.resend_count" {
			resend = kv.Value.String()
		}
	}
	if resend != "1" {
		t.Fatalf("retry span resend_count %q", resend)
	}
	for i, s := range clients {
		if !strings.Contains(got[i], s.SpanContext().SpanID().String()) {
			t.Fatalf("attempt %d sent traceparent %q, span %v", i, got[i], s.SpanContext().SpanID())
		}
	}
}

// scrapeOpenMetrics returns the registry's exposition in OpenMetrics, the
// format that carries exemplars.
func scrapeOpenMetrics(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// The request duration histogram carries the sampled request's trace id as
// its exemplar; an unsampled request leaves none.
func TestDurationExemplar(t *testing.T) {
	be, _ := traceBackend(t)
	tp := sdktrace.NewTracerProvider() // parent-based: follows the caller's sampled flag
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h := newHarness(t, Options{TracerProvider: tp, Propagator: propagation.TraceContext{}},
		resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("sampled", "/s", "a"), prefixRoute("unsampled", "/u", "a")),
			[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", be.URL)))
	const unsampled = "00-11111111111111111111111111111111-2222222222222222-00"
	h.do(t, "GET", "/s", map[string]string{"Traceparent": testTraceparent}, nil)
	h.do(t, "GET", "/u", map[string]string{"Traceparent": unsampled}, nil)
	exp := scrapeOpenMetrics(t, h.reg)
	var sampledLines, unsampledLines []string
	for _, line := range strings.Split(exp, "\n") {
		if !strings.HasPrefix(line, "petmesh_dataplane_request_duration_seconds_bucket{") || !strings.Contains(line, " # {") {
			continue
		}
		switch {
		case strings.Contains(line, `route="sampled"`):
			sampledLines = append(sampledLines, line)
		case strings.Contains(line, `route="unsampled"`):
			unsampledLines = append(unsampledLines, line)
		}
	}
	if len(sampledLines) != 1 || !strings.Contains(sampledLines[0], `trace_id="0af7651916cd43dd8448eb211c80319c"`) {
		t.Fatalf("sampled request: exemplar lines %q, want one with its trace id\n%s", sampledLines, exp)
	}
	if len(unsampledLines) != 0 {
		t.Fatalf("unsampled request left exemplars %q", unsampledLines)
	}
}

// Active health checks send a traceparent with the sampled flag off, so a
// parent-based sampler upstream never makes them traces.
func TestHealthCheckTraceparentUnsampled(t *testing.T) {
	var mu sync.Mutex
	var got []string
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Traceparent"))
		mu.Unlock()
	}))
	defer be.Close()
	c := edsCluster("a")
	c.HealthChecks = []*core.HealthCheck{{Interval: durationpb.New(20 * time.Millisecond), Timeout: durationpb.New(time.Second),
		HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{Path: "/healthz"}}}}
	newHarness(t, Options{}, resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("r", "/", "a")),
		[]*cluster.Cluster{c}, loadAssignment(t, "a", be.URL)))
	tu.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) < 2 {
			return fmt.Errorf("%d health checks so far", len(got))
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	prop := propagation.TraceContext{}
	for i, tp := range got {
		sc := trace.SpanContextFromContext(prop.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp}))
		if !sc.IsValid() || sc.IsSampled() {
			t.Fatalf("health check %d traceparent %q: valid %v sampled %v, want a valid unsampled context", i, tp, sc.IsValid(), sc.IsSampled())
		}
	}
	if got[0] == got[1] {
		t.Fatalf("two health checks share the trace context %q", got[0])
	}
}
