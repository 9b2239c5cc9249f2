package telemetry

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// Metrics recorded through the OpenTelemetry meter (otelhttp's
// http_server_request_duration_seconds and the like) get exemplars from
// the SDK: its default exemplar filter keeps a measurement made in a
// sampled span's context, and MetricsHandler exposes it in OpenMetrics as
// `# {trace_id="…",span_id="…"} value timestamp` on the histogram bucket.
// Native Prometheus collectors registered on Telemetry.Registry get none
// by themselves; Observe and Add give them the same exemplars.

// ExemplarLabels returns the exemplar labels (trace_id, span_id) of the
// span in ctx, or nil when there is none or it is not sampled: an
// exemplar must point at a trace that was exported.
func ExemplarLabels(ctx context.Context) prometheus.Labels {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return nil
	}
	return prometheus.Labels{"trace_id": sc.TraceID().String(), "span_id": sc.SpanID().String()}
}

// Observe records v on o (a histogram or summary) with the exemplar of the
// sampled span in ctx, if any. It is as cheap as o.Observe when there is
// no sampled span.
func Observe(ctx context.Context, o prometheus.Observer, v float64) {
	if eo, ok := o.(prometheus.ExemplarObserver); ok {
		if l := ExemplarLabels(ctx); l != nil {
			eo.ObserveWithExemplar(v, l)
			return
		}
	}
	o.Observe(v)
}

// Add adds v to c (a counter) with the exemplar of the sampled span in
// ctx, if any.
func Add(ctx context.Context, c prometheus.Counter, v float64) {
	if ea, ok := c.(prometheus.ExemplarAdder); ok {
		if l := ExemplarLabels(ctx); l != nil {
			ea.AddWithExemplar(v, l)
			return
		}
	}
	c.Add(v)
}
