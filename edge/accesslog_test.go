package edge

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// slogAccessLine is the access line as the edge wrote it through slog
// (telemetry.NewLogger, service=edge) before appendAccessLine.
func slogAccessLine(t *testing.T, ctx context.Context, at time.Time, e *dataplane.AccessEntry) string {
	var buf bytes.Buffer
	logger := telemetry.NewLogger(&buf, slog.LevelInfo).With("service", "edge")
	attrs := []slog.Attr{
		slog.String("client_ip", e.ClientIP),
		slog.String("method", e.Method),
		slog.String("path", e.Path),
		slog.String("route", e.Route),
		slog.Int("status", e.Status),
		slog.Int64("bytes", e.BytesSent),
		slog.Float64("latency_ms", float64(e.Duration.Microseconds())/1000),
		slog.String("cluster", e.Cluster),
		slog.String("upstream", e.Upstream),
		slog.Int("retries", e.Retries),
		slog.String("subject", e.Subject),
		slog.String("request_id", e.RequestID),
	}
	if e.UpstreamError != "" {
		attrs = append(attrs, slog.String("upstream_error", e.UpstreamError))
	}
	if !trace.SpanContextFromContext(ctx).IsValid() && e.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", e.TraceID))
	}
	r := slog.NewRecord(at, slog.LevelInfo, "access", 0)
	r.AddAttrs(attrs...)
	if err := logger.Handler().Handle(ctx, r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestAccessLineMatchesSlog(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:  trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31}, TraceFlags: trace.FlagsSampled})
	spanCtx := trace.ContextWithSpanContext(context.Background(), sc)
	base := dataplane.AccessEntry{ClientIP: "203.0.113.7", Method: "GET", Path: "/pets/1", Route: "pets", Status: 200,
		BytesSent: 45, Duration: 1234 * time.Microsecond, Cluster: "pets", Upstream: "127.0.0.1:7001", Subject: "alice",
		RequestID: "8f14e45fceea167a5a36dedd4bea2543"}
	for _, tc := range []struct {
		desc string
		ctx  context.Context
		at   time.Time
		edit func(e *dataplane.AccessEntry)
	}{
		{desc: "plain", at: time.Date(2026, 12, 3, 7, 31, 59, 0, time.UTC)},
		{desc: "whole second", at: time.Date(2026, 12, 3, 7, 31, 59, 999_999_999, time.UTC).Add(time.Nanosecond)},
		{desc: "other zone", at: time.Date(2026, 1, 2, 3, 4, 5, 120_000_000, time.FixedZone("x", -4*3600-30*60))},
		{desc: "trace id from the header", edit: func(e *dataplane.AccessEntry) { e.TraceID = "0af7651916cd43dd8448eb211c80319c" }},
		{desc: "server span", ctx: spanCtx, edit: func(e *dataplane.AccessEntry) { e.TraceID = "0af7651916cd43dd8448eb211c80319c" }},
		{desc: "upstream error, retries, 499", edit: func(e *dataplane.AccessEntry) {
			e.UpstreamError, e.Retries, e.Status, e.BytesSent = `dial tcp 127.0.0.1:7001: connect: connection refused`, 2, 499, 0
		}},
		{desc: "escapes", edit: func(e *dataplane.AccessEntry) {
			e.Path = "/a\"b\\c\n\r\t\x00\x1f\x7f<&>/é/\u2028\u2029/\xff\xfe/😀"
			e.Subject = "\xc3"
			e.Method = ""
		}},
		{desc: "latencies", edit: func(e *dataplane.AccessEntry) { e.Duration = 0 }},
		{desc: "sub-millisecond", edit: func(e *dataplane.AccessEntry) { e.Duration = time.Microsecond }},
		{desc: "very long", edit: func(e *dataplane.AccessEntry) { e.Duration = 40 * 24 * time.Hour }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			e := base
			if tc.edit != nil {
				tc.edit(&e)
			}
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			at := tc.at
			if at.IsZero() {
				at = time.Date(2026, 12, 3, 7, 31, 59, 123_456_789, time.UTC)
			}
			want := slogAccessLine(t, ctx, at, &e)
			traceID, spanID := e.TraceID, ""
			if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
				traceID, spanID = sc.TraceID().String(), sc.SpanID().String()
			}
			if got := string(appendAccessLine(nil, at, &e, traceID, spanID)); got != want {
				t.Fatalf("line differs from slog's\n got %s\nwant %s", got, want)
			}
		})
	}
}

func BenchmarkAccessLine(b *testing.B) {
	e := dataplane.AccessEntry{ClientIP: "203.0.113.7", Method: "GET", Path: "/pets/1", Route: "pets", Status: 200,
		BytesSent: 45, Duration: 1234 * time.Microsecond, Cluster: "pets", Upstream: "127.0.0.1:7001", Subject: "alice",
		RequestID: "8f14e45fceea167a5a36dedd4bea2543", TraceID: "0af7651916cd43dd8448eb211c80319c"}
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = appendAccessLine(buf[:0], time.Now(), &e, e.TraceID, "")
		}
	})
	b.Run("slog", func(b *testing.B) {
		b.ReportAllocs()
		logger := telemetry.NewLogger(discard{}, slog.LevelInfo).With("service", "edge")
		ctx := context.Background()
		for b.Loop() {
			logger.LogAttrs(ctx, slog.LevelInfo, "access", slog.String("client_ip", e.ClientIP), slog.String("method", e.Method),
				slog.String("path", e.Path), slog.String("route", e.Route), slog.Int("status", e.Status), slog.Int64("bytes", e.BytesSent),
				slog.Float64("latency_ms", float64(e.Duration.Microseconds())/1000), slog.String("cluster", e.Cluster),
				slog.String("upstream", e.Upstream), slog.Int("retries", e.Retries), slog.String("subject", e.Subject),
				slog.String("request_id", e.RequestID), slog.String("trace_id", e.TraceID))
		}
	})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
