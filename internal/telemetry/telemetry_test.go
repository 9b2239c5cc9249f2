package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoggerCarriesCorrelationIDs(t *testing.T) {
	var buf bytes.Buffer
	tel := NewTest(&buf)
	ctx, span := tel.Tracer("test").Start(context.Background(), "op")
	ctx = WithRequestID(ctx, "req-1")
	tel.Logger.InfoContext(ctx, "hello", "k", "v")
	span.End()

	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	sc := span.SpanContext()
	for k, want := range map[string]string{
		"trace_id":   sc.TraceID().String(),
		"span_id":    sc.SpanID().String(),
		"request_id": "req-1",
		"msg":        "hello",
	} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v", k, rec[k], want)
		}
	}
}

func TestSetupEnv(t *testing.T) {
	tests := []struct {
		desc    string
		env     map[string]string
		wantErr string
	}{
		{desc: "nothing set: no exporter", env: nil},
		{desc: "bad sampler", env: map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, wantErr: "OTEL_TRACES_SAMPLER"},
		{desc: "bad ratio", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: "OTEL_TRACES_SAMPLER_ARG"},
		{desc: "bad protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{desc: "bad resource attributes", env: map[string]string{"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, wantErr: "OTEL_RESOURCE_ATTRIBUTES"},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			_, shutdown, err := Setup(context.Background(), Config{ServiceName: "t", LogWriter: io.Discard, Getenv: func(k string) string { return tc.env[k] }})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error naming %s, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOTLPExportOnShutdown points the standard OTLP/HTTP variables at a
// real HTTP server and checks that shutdown flushes the spans to it.
func TestOTLPExportOnShutdown(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" {
			posts.Add(1)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL, "OTEL_SERVICE_NAME": "from-env"}
	tel, shutdown, err := Setup(context.Background(), Config{ServiceName: "t", LogWriter: io.Discard, Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer("test").Start(context.Background(), "op")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if posts.Load() == 0 {
		t.Fatal("no OTLP export reached the collector")
	}
}

func TestMetricsHandlerExposesOTelAndNative(t *testing.T) {
	tel := NewTest(io.Discard)
	c, err := tel.Meter("test").Int64Counter("petmesh_test_things")
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3)
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "petmesh_test_things_total 3") {
		t.Fatalf("counter missing from exposition:\n%s", rec.Body.String())
	}
}

// TestTracesExported: the exporter choice the edge and the sidecars read
// to decide whether their data plane builds spans.
func TestTracesExported(t *testing.T) {
	tests := []struct {
		desc string
		env  map[string]string
		want bool
	}{
		{desc: "nothing set", want: false},
		{desc: "exporter otlp", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, want: true},
		{desc: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, want: true},
		{desc: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, want: true},
		{desc: "exporter none wins over an endpoint", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, want: false},
		{desc: "an unsupported exporter exports nothing", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			if got := TracesExported(func(k string) string { return tc.env[k] }); got != tc.want {
				t.Fatalf("TracesExported = %v, want %v", got, tc.want)
			}
		})
	}
}
