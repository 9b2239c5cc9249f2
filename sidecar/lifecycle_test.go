package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
)

// recordingTelemetry is test telemetry whose spans rec records, sampled
// as an app's are by default (parent-based, always on), its metrics
// discarded.
func recordingTelemetry() (tel *telemetry.Telemetry, rec *tracetest.SpanRecorder) {
	rec = tracetest.NewSpanRecorder()
	tel = telemetry.NewTest(io.Discard)
	tel.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)) // parentbased_always_on
	tel.MeterProvider = metricnoop.NewMeterProvider()
	return tel, rec
}

// wantUnsampled fails the test unless traceparent, sent on the request
// what names, is a valid W3C trace context with the sampled flag off.
func wantUnsampled(t *testing.T, what, traceparent string) {
	t.Helper()
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier{"Traceparent": []string{traceparent}}))
	if !sc.IsValid() || sc.IsSampled() {
		t.Errorf("%s traceparent %q: valid %v sampled %v, want a valid, unsampled context", what, traceparent, sc.IsValid(), sc.IsSampled())
	}
}

// TestHealthProbeIsNotTraced: the app health probe carries a valid W3C
// trace context with the sampled flag off, so an app traced with the
// default parent-based sampler records no span for it, while it does for
// a request without a trace context.
func TestHealthProbeIsNotTraced(t *testing.T) {
	tel, rec := recordingTelemetry()
	headers := make(chan http.Header, 4)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Clone()
		w.WriteHeader(http.StatusOK)
	})
	app := httptest.NewServer(httpx.Standard(tel, "app", 1<<10)(mux))
	defer app.Close()

	cfg := Config{AppAddr: strings.TrimPrefix(app.URL, "http://"), AppHealthPath: "/health",
		HealthInterval: time.Second, HealthTimeout: 2 * time.Second, TTL: 10 * time.Second}
	l, err := newLifecycle(cfg, telemetry.NewLogger(io.Discard, 0), nil, registry.Registration{}, nil, func() bool { return true }, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if h, out := l.checkApp(context.Background()); h != registry.HealthPassing {
		t.Fatalf("probe: %s %s", h, out)
	}
	hdr := <-headers
	wantUnsampled(t, "probe", hdr.Get("traceparent"))

	// The control: the same app traces a request that has no context. Its
	// span is then the only one: none for the probe before it.
	resp, err := http.Get(app.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	<-headers
	// The server span ends just after the response is written.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(rec.Ended()); n != 1 {
			return fmt.Errorf("the app recorded %d spans for a probe and a plain request, want 1", n)
		}
		return nil
	})
	// Each probe has its own trace id.
	l.checkApp(context.Background())
	if again := (<-headers).Get("traceparent"); again == hdr.Get("traceparent") {
		t.Errorf("two probes sent the same traceparent %q", again)
	}
}
