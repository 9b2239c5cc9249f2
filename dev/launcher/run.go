package launcher

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/petmesh/petmesh/internal/config"
)

// Options of a dev run.
type Options struct {
	BinDir string
	RunDir string
	// Registry is "builtin" or "consul".
	Registry string
	// ConsulBin is the consul binary used with Registry "consul"; empty
	// means an agent already runs at Addrs.Consul (tests start their own).
	ConsulBin string
	// Addrs are the listener addresses; the zero value means DevAddrs.
	Addrs Addrs

	// Obs also starts a real Jaeger (JaegerBin, in-memory storage) and a
	// real Prometheus (PrometheusBin, scraping every process with the
	// configuration PrometheusConfig rendered for Addrs, see PrepareObs)
	// and points every process's OTLP exporter at that Jaeger.
	Obs              bool
	JaegerBin        string
	PrometheusBin    string // default "prometheus", looked up in PATH
	PrometheusConfig string // observability/prometheus/prometheus.local.yml

	// OTLPEndpoint, without Obs, is the OTLP/HTTP base URL every process
	// exports its spans to; empty: no export.
	OTLPEndpoint string
	// TraceRatio is the argument of every process's parent-based trace id
	// ratio sampler (OTEL_TRACES_SAMPLER_ARG): "0" to "1"; empty means 1.
	TraceRatio string
	// ResourceAttributes are OTEL_RESOURCE_ATTRIBUTES given to every
	// process, before the launcher's own service.instance.id.
	ResourceAttributes string
	// Env is more environment for every petmesh process, after the
	// launcher's (tests: OTEL_BSP_SCHEDULE_DELAY).
	Env []string
}

func (o Options) addrs() Addrs {
	if o.Addrs == (Addrs{}) {
		return DevAddrs()
	}
	return o.Addrs
}

// Run starts the topology, prints how to use it, and stops everything when
// ctx ends or a process dies.
func Run(ctx context.Context, args []string, getenv func(string) string, out io.Writer) error {
	var o Options
	f := config.New("petmesh-dev", getenv, out)
	f.String(&o.BinDir, "bin", "PETMESH_BIN", "bin", "directory holding the petmesh binaries")
	f.String(&o.RunDir, "dir", "PETMESH_RUN_DIR", ".run", "run directory for logs, pids and data")
	f.String(&o.Registry, "registry", "REGISTRY", "builtin", "service registry and route store: builtin or consul")
	f.String(&o.ConsulBin, "consul-bin", "PETMESH_CONSUL_BIN", "", "consul binary for -registry consul (make run builds it with scripts/tool.sh consul)")
	f.Bool(&o.Obs, "obs", "PETMESH_OBS", false, "also run a real Jaeger and Prometheus and send every process's traces to that Jaeger")
	f.String(&o.JaegerBin, "jaeger-bin", "PETMESH_JAEGER_BIN", "", "jaeger binary for -obs (make run OBS=1 builds it with scripts/tool.sh jaeger)")
	f.String(&o.PrometheusBin, "prometheus-bin", "PETMESH_PROMETHEUS_BIN", "prometheus", "prometheus binary for -obs (make deps installs it)")
	f.String(&o.PrometheusConfig, "prometheus-config", "PETMESH_PROMETHEUS_CONFIG", "observability/prometheus/prometheus.local.yml", "Prometheus configuration for -obs, written for the dev ports")
	f.String(&o.OTLPEndpoint, "otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "", "without -obs: OTLP/HTTP endpoint every process exports its traces to (empty: none)")
	f.String(&o.TraceRatio, "trace-ratio", "TRACE_RATIO", "1", "share of new traces sampled (parentbased_traceidratio), 0 to 1")
	if err := f.Parse(args); err != nil {
		return err
	}
	o.ResourceAttributes = getenv("OTEL_RESOURCE_ATTRIBUTES")
	if o.Registry != "builtin" && o.Registry != "consul" {
		return fmt.Errorf("-registry: want builtin or consul, got %q", o.Registry)
	}
	if o.Registry == "consul" && o.ConsulBin == "" {
		return fmt.Errorf("-consul-bin: required with -registry consul")
	}
	if err := validTraceRatio(o.TraceRatio); err != nil {
		return fmt.Errorf("-trace-ratio: %w", err)
	}
	if o.Obs {
		if o.JaegerBin == "" {
			return fmt.Errorf("-jaeger-bin: required with -obs (scripts/tool.sh jaeger builds it)")
		}
		p, err := exec.LookPath(o.PrometheusBin)
		if err != nil {
			return fmt.Errorf("-prometheus-bin: %w (make deps installs prometheus)", err)
		}
		o.PrometheusBin = p
		if o.PrometheusConfig, err = filepath.Abs(o.PrometheusConfig); err != nil {
			return err
		}
	}
	bin, err := filepath.Abs(o.BinDir)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(o.RunDir)
	if err != nil {
		return err
	}
	o.BinDir, o.RunDir = bin, dir
	if err := Prepare(dir); err != nil {
		return err
	}
	if o.Obs {
		if err := PrepareObs(o); err != nil {
			return err
		}
	}
	l := &Launcher{BinDir: bin, RunDir: dir, Out: out}
	fmt.Fprintf(out, "petmesh: starting the topology (logs in %s)\n", filepath.Join(dir, "logs"))
	for _, p := range Topology(o) {
		if err := l.Start(ctx, p); err != nil {
			_ = l.StopAll()
			return err
		}
	}
	fmt.Fprint(out, Banner(o))
	exited := l.Exited()
	select {
	case <-ctx.Done():
		fmt.Fprintln(out, "petmesh: stopping")
	case msg := <-exited:
		fmt.Fprintln(out, "petmesh:", msg, "- stopping everything")
	}
	stopErr := l.StopAll()
	// Give the OS a moment to release the ports before a quick restart.
	time.Sleep(100 * time.Millisecond)
	return stopErr
}
