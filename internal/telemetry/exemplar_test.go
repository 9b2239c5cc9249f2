package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// scrape returns the /metrics exposition: OpenMetrics when openMetrics,
// else the Prometheus text format.
func scrape(t *testing.T, tel *Telemetry, openMetrics bool) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if openMetrics {
		// What Prometheus sends.
		req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
	}
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: status %d", rec.Code)
	}
	return rec.Body.String()
}

// exemplarRE matches an OpenMetrics sample with an exemplar; group 1 is
// the exemplar's labels.
var exemplarRE = regexp.MustCompile(`^\S+(?:\{[^}]*\})? \S+ # \{([^}]*)\} \S+`)

// exemplars returns the exemplar labels (`trace_id="…",span_id="…"` as
// written) of the sample lines that start with prefix.
func exemplars(body, prefix string) []string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if m := exemplarRE.FindStringSubmatch(line); m != nil && strings.HasPrefix(line, prefix) {
			out = append(out, m[1])
		}
	}
	return out
}

// sameExemplar reports whether an exemplar's labels (in any order) are
// exactly sc's trace and span ids.
func sameExemplar(labels string, sc trace.SpanContext) bool {
	want := []string{`trace_id="` + sc.TraceID().String() + `"`, `span_id="` + sc.SpanID().String() + `"`}
	parts := strings.Split(labels, ",")
	if len(parts) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.Contains(parts, w) {
			return false
		}
	}
	return true
}

func exemplarOf(sc trace.SpanContext) string {
	return `trace_id="` + sc.TraceID().String() + `",span_id="` + sc.SpanID().String() + `"`
}

// TestOTelHistogramExemplars: a histogram recorded through Setup's meter
// provider within a sampled span carries that span's trace and span id as
// an OpenMetrics exemplar; one recorded in an unsampled span or with no
// span carries none, and the Prometheus text format has none.
func TestOTelHistogramExemplars(t *testing.T) {
	tel, shutdown, err := Setup(context.Background(), Config{ServiceName: "t", LogWriter: io.Discard,
		Getenv: func(k string) string { return map[string]string{"OTEL_TRACES_EXPORTER": "none"}[k] }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()) })
	sampled, err := tel.Meter("test").Float64Histogram("petmesh_test_sampled_seconds")
	if err != nil {
		t.Fatal(err)
	}
	unsampled, err := tel.Meter("test").Float64Histogram("petmesh_test_unsampled_seconds")
	if err != nil {
		t.Fatal(err)
	}
	ctx, span := tel.Tracer("test").Start(context.Background(), "op")
	sampled.Record(ctx, 0.3)
	span.End()
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	uctx, uspan := never.Tracer("test").Start(context.Background(), "op")
	unsampled.Record(uctx, 0.3)
	unsampled.Record(context.Background(), 0.3)
	uspan.End()

	body := scrape(t, tel, true)
	got := exemplars(body, "petmesh_test_sampled_seconds_bucket")
	if len(got) != 1 || !sameExemplar(got[0], span.SpanContext()) {
		t.Errorf("sampled histogram exemplars %v, want one with %s\n%s", got, exemplarOf(span.SpanContext()), body)
	}
	if got := exemplars(body, "petmesh_test_unsampled_seconds"); len(got) != 0 {
		t.Errorf("unsampled histogram exemplars %v, want none", got)
	}
	if text := scrape(t, tel, false); strings.Contains(text, "trace_id") {
		t.Errorf("the Prometheus text format carries exemplars:\n%s", text)
	}
}

// TestNativeExemplars: Observe and Add give native Prometheus histograms
// and counters the exemplar of a sampled span, and nothing otherwise.
func TestNativeExemplars(t *testing.T) {
	tel := NewTest(io.Discard)
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "petmesh_test_native_seconds", Help: "h", Buckets: []float64{0.1, 1}}, []string{"case"})
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petmesh_test_native_things_total", Help: "c"}, []string{"case"})
	tel.Registry.MustRegister(h, c)

	ctx, span := tel.Tracer("test").Start(context.Background(), "op")
	Observe(ctx, h.WithLabelValues("sampled"), 0.5)
	Add(ctx, c.WithLabelValues("sampled"), 2)
	span.End()
	never := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	uctx, uspan := never.Tracer("test").Start(context.Background(), "op")
	Observe(uctx, h.WithLabelValues("unsampled"), 0.5)
	Add(uctx, c.WithLabelValues("unsampled"), 2)
	uspan.End()
	Observe(context.Background(), h.WithLabelValues("none"), 0.5)
	Add(context.Background(), c.WithLabelValues("none"), 2)

	body := scrape(t, tel, true)
	want := exemplarOf(span.SpanContext())
	for _, metric := range []string{`petmesh_test_native_seconds_bucket{case="sampled"`, `petmesh_test_native_things_total{case="sampled"`} {
		if got := exemplars(body, metric); len(got) != 1 || !sameExemplar(got[0], span.SpanContext()) {
			t.Errorf("%s exemplars %v, want one with %s\n%s", metric, got, want, body)
		}
	}
	for _, metric := range []string{`petmesh_test_native_seconds_bucket{case="unsampled"`, `petmesh_test_native_seconds_bucket{case="none"`,
		`petmesh_test_native_things_total{case="unsampled"`, `petmesh_test_native_things_total{case="none"`} {
		if got := exemplars(body, metric); len(got) != 0 {
			t.Errorf("%s exemplars %v, want none", metric, got)
		}
	}
	// The value is recorded whatever the exemplar.
	for _, line := range []string{`petmesh_test_native_seconds_count{case="none"} 1`, `petmesh_test_native_things_total{case="unsampled"} 2`} {
		if !strings.Contains(body, line) {
			t.Errorf("exposition lacks %q", line)
		}
	}
}

// TestOTelHistogramExemplarIsTheLatest: many sampled measurements in the
// same bucket between two scrapes leave the latest one as the bucket's
// exemplar (the SDK's default reservoir would keep a random one), in
// Setup's meter provider and in NewTest's.
func TestOTelHistogramExemplarIsTheLatest(t *testing.T) {
	setup, shutdown, err := Setup(context.Background(), Config{ServiceName: "t", LogWriter: io.Discard,
		Getenv: func(k string) string { return map[string]string{"OTEL_TRACES_EXPORTER": "none"}[k] }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()) })
	test := NewTest(io.Discard)
	test.TracerProvider = setup.TracerProvider // sampled spans
	for name, tel := range map[string]*Telemetry{"Setup": setup, "NewTest": test} {
		t.Run(name, func(t *testing.T) {
			h, err := tel.Meter("test").Float64Histogram("petmesh_test_latest_seconds")
			if err != nil {
				t.Fatal(err)
			}
			for round := range 3 {
				var last trace.SpanContext
				for range 50 {
					ctx, span := tel.Tracer("test").Start(context.Background(), "op")
					h.Record(ctx, 0.001) // all in the first bucket
					span.End()
					last = span.SpanContext()
				}
				body := scrape(t, tel, true)
				got := exemplars(body, "petmesh_test_latest_seconds_bucket")
				if len(got) != 1 || !sameExemplar(got[0], last) {
					t.Fatalf("round %d: exemplars %v, want only the latest, %s\n%s", round, got, exemplarOf(last), body)
				}
			}
		})
	}
}
