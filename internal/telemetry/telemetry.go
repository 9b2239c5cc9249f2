// Package telemetry sets up logging, tracing and metrics for a petmesh
// process in one call.
//
// Logs are JSON (log/slog) and carry trace_id, span_id and request_id taken
// from the context. Traces and metrics use the OpenTelemetry SDK; OTLP
// exporters are configured only by the standard OTEL_* environment variables
// and none is created when they are unset. Metrics are exposed in the
// Prometheus format (with exemplars, via OpenMetrics) on a per-process
// registry so that several processes can live in one test binary.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
)

// Config describes the process being instrumented.
type Config struct {
	// ServiceName is the OpenTelemetry service.name (OTEL_SERVICE_NAME wins).
	ServiceName string
	// ServiceVersion is service.version.
	ServiceVersion string
	// InstanceID is service.instance.id; optional.
	InstanceID string
	// LogLevel is the minimum level logged.
	LogLevel slog.Level
	// LogWriter receives JSON log lines; os.Stderr when nil.
	LogWriter io.Writer
	// Getenv reads the OTEL_* variables; os.Getenv when nil.
	Getenv func(string) string
}

// Telemetry holds the providers of one process. It is safe for concurrent use.
type Telemetry struct {
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
	// Registry is the Prometheus registry that /metrics exposes. Packages
	// may register native Prometheus collectors on it.
	Registry *prometheus.Registry
}

// Tracer returns a named tracer.
func (t *Telemetry) Tracer(name string) trace.Tracer { return t.TracerProvider.Tracer(name) }

// Meter returns a named meter.
func (t *Telemetry) Meter(name string) metric.Meter { return t.MeterProvider.Meter(name) }

// MetricsHandler serves the registry in the Prometheus text format, or in
// OpenMetrics (with exemplars) when the scraper asks for it.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// Setup builds the logger and the tracer and meter providers. The returned
// shutdown flushes and stops the exporters; call it once, with a deadline.
// Setup also installs the providers and the W3C propagator as the otel
// globals so that libraries that only know the globals (otelhttp defaults,
// database drivers) take part in the same traces.
func Setup(ctx context.Context, cfg Config) (*Telemetry, func(context.Context) error, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	w := cfg.LogWriter
	if w == nil {
		w = os.Stderr
	}
	name := cfg.ServiceName
	if v := getenv("OTEL_SERVICE_NAME"); v != "" {
		name = v
	}
	logger := NewLogger(w, cfg.LogLevel).With("service", name)

	attrs := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(name)),
		resource.WithTelemetrySDK(),
	}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(cfg.ServiceVersion)))
	}
	if cfg.InstanceID != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceInstanceID(cfg.InstanceID)))
	}
	if ra := getenv("OTEL_RESOURCE_ATTRIBUTES"); ra != "" {
		kvs, err := parseResourceAttributes(ra)
		if err != nil {
			return nil, nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
		}
		attrs = append(attrs, resource.WithAttributes(kvs...))
	}
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		return nil, nil, fmt.Errorf("telemetry resource: %w", err)
	}

	tpOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	exp, err := traceExporter(ctx, getenv)
	if err != nil {
		return nil, nil, err
	}
	if exp != nil {
		tpOpts = append(tpOpts, sdktrace.WithBatcher(exp))
	}
	sampler, err := samplerFromEnv(getenv)
	if err != nil {
		return nil, nil, err
	}
	tpOpts = append(tpOpts, sdktrace.WithSampler(sampler))
	tp := sdktrace.NewTracerProvider(tpOpts...)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(promExp), sdkmetric.WithView(latestExemplarView))

	prop := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(prop)

	t := &Telemetry{Logger: logger, TracerProvider: tp, MeterProvider: mp, Propagator: prop, Registry: reg}
	shutdown := func(ctx context.Context) error {
		return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
	}
	return t, shutdown, nil
}

// NewTest returns telemetry for unit tests: logs to w, no exporters, a fresh
// registry, and no change to the otel globals.
func NewTest(w io.Writer) *Telemetry {
	tp := sdktrace.NewTracerProvider()
	reg := prometheus.NewRegistry()
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		panic(err) // only fails on a duplicate registration in a fresh registry: a programming error
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(promExp), sdkmetric.WithView(latestExemplarView))
	return &Telemetry{
		Logger:         NewLogger(w, slog.LevelDebug),
		TracerProvider: tp,
		MeterProvider:  mp,
		Propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		Registry:       reg,
	}
}

// TracesExported reports whether Setup configures a trace exporter for this
// environment: OTEL_TRACES_EXPORTER is "otlp", or it is unset while an OTLP
// endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or its traces variant) is set.
// Without one, hot paths should not build spans at all (the SDK would
// build them, attributes and all, only to drop them): the edge and the
// sidecars then give their data plane a no-op TracerProvider.
func TracesExported(getenv func(string) string) bool {
	switch getenv("OTEL_TRACES_EXPORTER") {
	case "otlp":
		return true
	case "":
		return firstNonEmpty(getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), getenv("OTEL_EXPORTER_OTLP_ENDPOINT")) != ""
	}
	return false
}

// traceExporter follows the OTLP exporter specification: an exporter exists
// only when OTEL_TRACES_EXPORTER=otlp or an OTLP endpoint is set; the
// protocol comes from OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, default
// http/protobuf. The exporter packages read the remaining OTEL_* variables.
func traceExporter(ctx context.Context, getenv func(string) string) (sdktrace.SpanExporter, error) {
	switch kind := getenv("OTEL_TRACES_EXPORTER"); kind {
	case "", "otlp", "none":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: unsupported exporter %q (want otlp or none)", kind)
	}
	if !TracesExported(getenv) {
		return nil, nil
	}
	proto := firstNonEmpty(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
	// The exporters read the other OTEL_* variables (headers, timeouts,
	// TLS) from the process environment; the endpoint is passed
	// explicitly so that an injected getenv is honoured.
	signalURL := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	baseURL := getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	switch proto {
	case "grpc":
		var opts []otlptracegrpc.Option
		if u := firstNonEmpty(signalURL, baseURL); u != "" {
			opts = append(opts, otlptracegrpc.WithEndpointURL(u))
		}
		e, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp grpc exporter: %w", err)
		}
		return e, nil
	case "http/protobuf":
		var opts []otlptracehttp.Option
		switch {
		case signalURL != "":
			opts = append(opts, otlptracehttp.WithEndpointURL(signalURL))
		case baseURL != "":
			opts = append(opts, otlptracehttp.WithEndpointURL(strings.TrimSuffix(baseURL, "/")+"/v1/traces"))
		}
		e, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp http exporter: %w", err)
		}
		return e, nil
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: unsupported protocol %q (want grpc or http/protobuf)", proto)
	}
}

// samplerFromEnv implements OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG,
// defaulting to parentbased_always_on.
func samplerFromEnv(getenv func(string) string) (sdktrace.Sampler, error) {
	arg := getenv("OTEL_TRACES_SAMPLER_ARG")
	ratio := 1.0
	if arg != "" {
		if _, err := fmt.Sscanf(arg, "%g", &ratio); err != nil || ratio < 0 || ratio > 1 {
			return nil, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: want a ratio between 0 and 1, got %q", arg)
		}
	}
	switch s := getenv("OTEL_TRACES_SAMPLER"); s {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		return sdktrace.TraceIDRatioBased(ratio), nil
	case "parentbased_traceidratio":
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio)), nil
	default:
		return nil, fmt.Errorf("OTEL_TRACES_SAMPLER: unsupported sampler %q", s)
	}
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
