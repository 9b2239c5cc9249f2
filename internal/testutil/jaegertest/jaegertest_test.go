package jaegertest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/jaegertest"
)

// TestSpansReachQueryAPI exports a parent and a child span through
// telemetry.Setup's OTLP exporter, over each protocol, and reads them back
// from Jaeger's query API with their links, tags and service name.
func TestSpansReachQueryAPI(t *testing.T) {
	j := jaegertest.Start(t)

	tests := []struct {
		desc     string
		protocol string
		endpoint string
	}{
		{desc: "otlp http/protobuf", protocol: "http/protobuf", endpoint: j.OTLPHTTPEndpoint()},
		{desc: "otlp grpc", protocol: "grpc", endpoint: j.OTLPGRPCEndpoint()},
	}
	for i, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			ctx := testutil.Context(t)
			service := fmt.Sprintf("jaegertest-%d", i)
			env := map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": tc.endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL": tc.protocol,
			}
			tel, shutdown, err := telemetry.Setup(ctx, telemetry.Config{
				ServiceName: service,
				LogWriter:   io.Discard,
				Getenv:      func(k string) string { return env[k] },
			})
			if err != nil {
				t.Fatalf("telemetry setup: %v", err)
			}
			tracer := tel.Tracer("jaegertest")
			pctx, parent := tracer.Start(ctx, "GET /pets", trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(attribute.String("http.request.method", "GET"), attribute.Int("http.response.status_code", 200)))
			_, child := tracer.Start(pctx, "db.query", trace.WithSpanKind(trace.SpanKindClient))
			child.End()
			parent.End()
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := shutdown(sctx); err != nil {
				t.Fatalf("telemetry shutdown (flush): %v", err)
			}

			wantTrace := parent.SpanContext().TraceID().String()
			var got jaegertest.Trace
			testutil.Eventually(t, 20*time.Second, func() error {
				traces, err := j.Traces(ctx, service)
				if err != nil {
					return err
				}
				for _, tr := range traces {
					if tr.TraceID == wantTrace && len(tr.Spans) == 2 {
						got = tr
						return nil
					}
				}
				return fmt.Errorf("trace %s with 2 spans not found among %d traces of %s", wantTrace, len(traces), service)
			})

			p, ok := got.Span(parent.SpanContext().SpanID().String())
			if !ok {
				t.Fatalf("parent span %s missing from %+v", parent.SpanContext().SpanID(), got)
			}
			c, ok := got.Span(child.SpanContext().SpanID().String())
			if !ok {
				t.Fatalf("child span %s missing from %+v", child.SpanContext().SpanID(), got)
			}
			checks := []struct {
				desc      string
				got, want any
			}{
				{desc: "parent operation", got: p.OperationName, want: "GET /pets"},
				{desc: "child operation", got: c.OperationName, want: "db.query"},
				{desc: "parent is root", got: p.ParentSpanID(), want: ""},
				{desc: "child's parent", got: c.ParentSpanID(), want: p.SpanID},
				{desc: "parent service", got: p.ServiceName(), want: service},
				{desc: "child service", got: c.ServiceName(), want: service},
				{desc: "roots", got: len(got.Roots()), want: 1},
				{desc: "method tag", got: tag(p, "http.request.method"), want: "GET"},
				{desc: "status tag", got: tag(p, "http.response.status_code"), want: float64(200)},
				{desc: "span kind tag", got: tag(c, "span.kind"), want: "client"},
			}
			for _, ck := range checks {
				if ck.got != ck.want {
					t.Errorf("%s: got %v (%T), want %v (%T)", ck.desc, ck.got, ck.got, ck.want, ck.want)
				}
			}

			byID, err := j.Trace(ctx, wantTrace)
			if err != nil {
				t.Fatalf("trace by id: %v", err)
			}
			if len(byID.Spans) != 2 {
				t.Errorf("trace by id: got %d spans, want 2", len(byID.Spans))
			}
		})
	}
}

func tag(s jaegertest.Span, key string) any {
	v, _ := s.Tag(key)
	return v
}

func TestUnknownServiceHasNoTraces(t *testing.T) {
	j := jaegertest.Start(t)
	traces, err := j.Traces(testutil.Context(t), "never-seen")
	if err != nil {
		t.Fatalf("traces: %v", err)
	}
	if len(traces) != 0 {
		t.Errorf("got %d traces for an unknown service, want 0", len(traces))
	}
	if _, err := j.Trace(testutil.Context(t), "00000000000000000000000000000001"); err == nil {
		t.Error("trace by unknown id: want an error")
	} else if errors.Is(err, context.Canceled) {
		t.Errorf("trace by unknown id: unexpected %v", err)
	}
}
