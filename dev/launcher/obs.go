package launcher

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/observability"
)

// JaegerAddrs are the listeners of the Jaeger that `make run OBS=1`
// starts (observability/jaeger/config.yaml reads them from JAEGER_*
// variables).
type JaegerAddrs struct {
	// UI is the UI and query HTTP API (/api/traces).
	UI string
	// OTLPGRPC and OTLPHTTP are the OTLP receivers.
	OTLPGRPC, OTLPHTTP string
	// QueryGRPC is the query gRPC API.
	QueryGRPC string
	// Health serves GET /status; Metrics is Jaeger's own /metrics.
	Health, Metrics string
}

// devJaeger and devPrometheus are the fixed observability addresses of
// `make run OBS=1` (README documents them).
func devJaeger() JaegerAddrs {
	return JaegerAddrs{UI: "127.0.0.1:16686", OTLPGRPC: "127.0.0.1:4317", OTLPHTTP: "127.0.0.1:4318",
		QueryGRPC: "127.0.0.1:16685", Health: "127.0.0.1:13133", Metrics: "127.0.0.1:8888"}
}

const devPrometheus = "127.0.0.1:9090"

// Telemetry names of the processes: OTEL_SERVICE_NAME is what the
// binaries call themselves (edge, controlplane, pets, sync, stats,
// sidecar-<service>, petfinder-standin), set explicitly so that an
// OTEL_SERVICE_NAME in the caller's environment cannot give every process
// the same name. Instances of one service are told apart by
// service.instance.id.

// telemetryEnv returns the OTEL_* variables of one petmesh process.
func telemetryEnv(o Options, service, instance string) []string {
	env := []string{"OTEL_SERVICE_NAME=" + service}
	if ep := o.otlpEndpoint(); ep != "" {
		env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT="+ep, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
	}
	env = append(env, "OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG="+o.traceRatio())
	attrs := o.ResourceAttributes
	if instance != "" {
		if attrs != "" {
			attrs += ","
		}
		attrs += "service.instance.id=" + instance
	}
	if attrs != "" {
		env = append(env, "OTEL_RESOURCE_ATTRIBUTES="+attrs)
	}
	return append(env, o.Env...)
}

// otlpEndpoint is the OTLP/HTTP base URL every process exports to: the
// local Jaeger's with Obs, else OTLPEndpoint (possibly empty: no export).
func (o Options) otlpEndpoint() string {
	if o.Obs {
		return "http://" + o.addrs().Jaeger.OTLPHTTP
	}
	return o.OTLPEndpoint
}

// traceRatio is the sampler argument: TraceRatio, or "1" when unset.
func (o Options) traceRatio() string {
	if o.TraceRatio == "" {
		return "1"
	}
	return o.TraceRatio
}

// validTraceRatio checks a sampler argument as the processes will.
func validTraceRatio(s string) error {
	r, err := strconv.ParseFloat(s, 64)
	if err != nil || r < 0 || r > 1 {
		return fmt.Errorf("want a ratio between 0 and 1, got %q", s)
	}
	return nil
}

// jaegerProc is the real Jaeger (v2, in-memory storage) of Obs, with the
// configuration that PrepareObs writes.
func jaegerProc(o Options) Proc {
	j := o.addrs().Jaeger
	host, port, _ := net.SplitHostPort(j.Metrics)
	return Proc{Name: "jaeger", Bin: o.JaegerBin, Absolute: true,
		Args: []string{"--config", "file:" + filepath.Join(o.RunDir, "etc", "jaeger.yaml")},
		Env: []string{
			"JAEGER_OTLP_GRPC_ENDPOINT=" + j.OTLPGRPC,
			"JAEGER_OTLP_HTTP_ENDPOINT=" + j.OTLPHTTP,
			"JAEGER_QUERY_HTTP_ENDPOINT=" + j.UI,
			"JAEGER_QUERY_GRPC_ENDPOINT=" + j.QueryGRPC,
			"JAEGER_HEALTH_ENDPOINT=" + j.Health,
			"JAEGER_METRICS_HOST=" + host,
			"JAEGER_METRICS_PORT=" + port,
			"JAEGER_LOG_LEVEL=warn",
		},
		Ready: allReady(httpReady("http://"+j.Health+"/status", nil, nil), httpReady("http://"+j.UI+"/api/services", nil, nil)),
	}
}

// prometheusProc is the real Prometheus of Obs: it scrapes every process
// with the configuration that PrepareObs renders, stores exemplars, and
// keeps its data in the run directory.
func prometheusProc(o Options) Proc {
	a := o.addrs()
	return Proc{Name: "prometheus", Bin: o.prometheusBin(), Absolute: true,
		Args: []string{
			"--config.file=" + filepath.Join(o.RunDir, "etc", "prometheus", "prometheus.yml"),
			"--storage.tsdb.path=" + filepath.Join(o.RunDir, "data", "prometheus"),
			"--web.listen-address=" + a.Prometheus,
			"--enable-feature=exemplar-storage",
		},
		Ready: httpReady("http://"+a.Prometheus+"/-/ready", nil, nil),
	}
}

func (o Options) prometheusBin() string {
	if o.PrometheusBin == "" {
		return "prometheus"
	}
	return o.PrometheusBin
}

// PrepareObs writes the Jaeger and Prometheus configuration of an Obs run
// into <RunDir>/etc: observability/jaeger/config.yaml as it is (its
// addresses come from the environment), and the Prometheus configuration
// o.PrometheusConfig rendered for o's addresses (RenderPrometheusConfig)
// with its rule files copied beside it.
func PrepareObs(o Options) error {
	etc := filepath.Join(o.RunDir, "etc")
	if err := os.MkdirAll(filepath.Join(etc, "prometheus"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "jaeger.yaml"), observability.JaegerConfig(), 0o644); err != nil {
		return err
	}
	src, err := os.ReadFile(o.PrometheusConfig)
	if err != nil {
		return fmt.Errorf("prometheus config: %w", err)
	}
	out, rules, err := RenderPrometheusConfig(src, o.addrs())
	if err != nil {
		return fmt.Errorf("prometheus config %s: %w", o.PrometheusConfig, err)
	}
	for _, r := range rules {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(o.PrometheusConfig), r))
		if err != nil {
			return fmt.Errorf("prometheus rule file: %w", err)
		}
		dst := filepath.Join(etc, "prometheus", r)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(etc, "prometheus", "prometheus.yml"), out, 0o644)
}

// RenderPrometheusConfig adapts observability/prometheus/prometheus.local.yml,
// written for the fixed addresses of `make run` (DevAddrs), to the
// addresses a: every quoted dev address is replaced by the same listener's
// address in a, in one pass. It also returns the relative rule files the
// configuration loads (relative to the configuration file, which the
// caller copies beside the rendered one).
func RenderPrometheusConfig(src []byte, a Addrs) ([]byte, []string, error) {
	var doc struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, nil, err
	}
	var rules []string
	for _, r := range doc.RuleFiles {
		if filepath.IsAbs(r) || strings.ContainsAny(r, "*?[") || strings.HasPrefix(filepath.Clean(r), "..") {
			return nil, nil, fmt.Errorf("rule file %q: want a plain path relative to the configuration", r)
		}
		rules = append(rules, r)
	}
	dev, run := DevAddrs().named(), a.named()
	var pairs []string
	for name, d := range dev {
		if r := run[name]; r != "" && r != d {
			pairs = append(pairs, `"`+d+`"`, `"`+r+`"`)
		}
	}
	return []byte(strings.NewReplacer(pairs...).Replace(string(src))), rules, nil
}

// named returns every address of a by listener name, observability
// included.
func (a Addrs) named() map[string]string {
	m := map[string]string{"edge": a.Edge, "edge admin": a.EdgeAdmin, "xds": a.XDS, "api": a.API, "standin": a.Standin, "consul": a.Consul,
		"prometheus": a.Prometheus, "jaeger ui": a.Jaeger.UI, "jaeger otlp grpc": a.Jaeger.OTLPGRPC, "jaeger otlp http": a.Jaeger.OTLPHTTP,
		"jaeger query grpc": a.Jaeger.QueryGRPC, "jaeger health": a.Jaeger.Health, "jaeger metrics": a.Jaeger.Metrics}
	for _, i := range []struct {
		name string
		ia   InstanceAddrs
	}{{"pets-1", a.Pets1}, {"pets-2", a.Pets2}, {"sync", a.Sync}, {"stats", a.Stats}} {
		m[i.name+" app"], m[i.name+" app admin"] = i.ia.App, i.ia.AppAdmin
		m[i.name+" sidecar admin"], m[i.name+" inbound"], m[i.name+" outbound"] = i.ia.SidecarAdmin, i.ia.Inbound, i.ia.Outbound
	}
	return m
}

// allReady passes when every check passes, in order.
func allReady(checks ...func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}
