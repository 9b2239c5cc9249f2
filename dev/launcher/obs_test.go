package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/jaegertest"
	"github.com/petmesh/petmesh/internal/testutil/promtest"
)

// envOf returns a process's environment as the process sees it (the last
// of a repeated variable wins).
func envOf(p Proc) map[string]string {
	m := map[string]string{}
	for _, kv := range p.Env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// TestTelemetryEnv: every petmesh process gets its own OTEL_SERVICE_NAME
// (the name the binary uses), the parent-based ratio sampler with the
// configured ratio, the instance id, and the OTLP endpoint: the local
// Jaeger's with Obs, the given one otherwise, none by default.
func TestTelemetryEnv(t *testing.T) {
	names := map[string]string{
		"petfinder-standin": "petfinder-standin", "controlplane": "controlplane", "edge": "edge",
		"pets-1": "pets", "pets-2": "pets", "sync": "sync", "stats": "stats",
		"sidecar-pets-1": "sidecar-pets", "sidecar-pets-2": "sidecar-pets", "sidecar-sync": "sidecar-sync", "sidecar-stats": "sidecar-stats",
	}
	instances := map[string]string{"pets-1": "pets-1", "pets-2": "pets-2", "sync": "sync", "stats": "stats",
		"sidecar-pets-1": "pets-1", "sidecar-pets-2": "pets-2", "sidecar-sync": "sync", "sidecar-stats": "stats"}
	for _, tc := range []struct {
		desc         string
		o            Options
		wantEndpoint string
		wantRatio    string
		wantAttrs    string // prefix of OTEL_RESOURCE_ATTRIBUTES before the instance id
		extra        map[string]string
	}{
		{desc: "default: no export, every trace", o: Options{}, wantRatio: "1"},
		{desc: "external collector and a ratio", o: Options{OTLPEndpoint: "http://collector:4318", TraceRatio: "0.25"},
			wantEndpoint: "http://collector:4318", wantRatio: "0.25"},
		{desc: "obs: the local jaeger", o: Options{Obs: true, OTLPEndpoint: "http://ignored:4318", TraceRatio: "0.1"},
			wantEndpoint: "http://127.0.0.1:4318", wantRatio: "0.1"},
		{desc: "caller's resource attributes and extra env kept", o: Options{ResourceAttributes: "deployment.environment.name=dev", Env: []string{"OTEL_BSP_SCHEDULE_DELAY=100"}},
			wantRatio: "1", wantAttrs: "deployment.environment.name=dev,", extra: map[string]string{"OTEL_BSP_SCHEDULE_DELAY": "100"}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			tc.o.RunDir, tc.o.Registry, tc.o.JaegerBin = "/run", "consul", "/bin/jaeger"
			tc.o.ConsulBin = "/bin/consul"
			seen := map[string]bool{}
			for _, p := range Topology(tc.o) {
				env := envOf(p)
				want, petmesh := names[p.Name]
				if !petmesh {
					if env["OTEL_SERVICE_NAME"] != "" {
						t.Errorf("%s: OTEL_SERVICE_NAME %q on a process that is not petmesh's", p.Name, env["OTEL_SERVICE_NAME"])
					}
					continue
				}
				seen[p.Name] = true
				if env["OTEL_SERVICE_NAME"] != want {
					t.Errorf("%s: OTEL_SERVICE_NAME %q, want %q", p.Name, env["OTEL_SERVICE_NAME"], want)
				}
				if env["OTEL_EXPORTER_OTLP_ENDPOINT"] != tc.wantEndpoint {
					t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %q, want %q", p.Name, env["OTEL_EXPORTER_OTLP_ENDPOINT"], tc.wantEndpoint)
				}
				if tc.wantEndpoint != "" && env["OTEL_EXPORTER_OTLP_PROTOCOL"] != "http/protobuf" {
					t.Errorf("%s: OTEL_EXPORTER_OTLP_PROTOCOL %q", p.Name, env["OTEL_EXPORTER_OTLP_PROTOCOL"])
				}
				if env["OTEL_TRACES_SAMPLER"] != "parentbased_traceidratio" || env["OTEL_TRACES_SAMPLER_ARG"] != tc.wantRatio {
					t.Errorf("%s: sampler %q arg %q, want parentbased_traceidratio %s", p.Name, env["OTEL_TRACES_SAMPLER"], env["OTEL_TRACES_SAMPLER_ARG"], tc.wantRatio)
				}
				wantAttrs := strings.TrimSuffix(tc.wantAttrs, ",")
				if inst := instances[p.Name]; inst != "" {
					wantAttrs = tc.wantAttrs + "service.instance.id=" + inst
				}
				if env["OTEL_RESOURCE_ATTRIBUTES"] != wantAttrs {
					t.Errorf("%s: OTEL_RESOURCE_ATTRIBUTES %q, want %q", p.Name, env["OTEL_RESOURCE_ATTRIBUTES"], wantAttrs)
				}
				for k, v := range tc.extra {
					if env[k] != v {
						t.Errorf("%s: %s=%q, want %q", p.Name, k, env[k], v)
					}
				}
			}
			if len(seen) != len(names) {
				t.Errorf("petmesh processes %v, want %d", seen, len(names))
			}
		})
	}
}

// TestRunFlags: bad observability flags are refused before anything
// starts, naming the flag.
func TestRunFlags(t *testing.T) {
	for _, tc := range []struct {
		desc    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{desc: "obs without jaeger", args: []string{"-obs"}, wantErr: "-jaeger-bin"},
		{desc: "obs without prometheus", args: []string{"-obs", "-jaeger-bin", "/bin/true", "-prometheus-bin", "petmesh-no-such-prometheus"}, wantErr: "-prometheus-bin"},
		{desc: "ratio above 1", args: []string{"-trace-ratio", "2"}, wantErr: "-trace-ratio"},
		{desc: "ratio not a number", env: map[string]string{"TRACE_RATIO": "half"}, wantErr: "-trace-ratio"},
		{desc: "PETMESH_OBS not a bool", env: map[string]string{"PETMESH_OBS": "maybe"}, wantErr: "PETMESH_OBS"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := t.TempDir()
			err := Run(context.Background(), append([]string{"-dir", dir}, tc.args...), func(k string) string { return tc.env[k] }, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("want an error naming %s, got %v", tc.wantErr, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "logs")); err == nil {
				t.Error("a process was started despite the bad flag")
			}
		})
	}
}

// testAddrs allocates every address of a topology on loopback, below the
// ephemeral port range (as the e2e harness does), so that nothing else
// takes one before the process binds it.
func testAddrs(t *testing.T) Addrs {
	t.Helper()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	next := func() string {
		for range 1000 {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(20000+rand.IntN(12000))))
			if err != nil {
				continue
			}
			held = append(held, l)
			return l.Addr().String()
		}
		t.Fatal("no free port in 20000-31999")
		return ""
	}
	inst := func() InstanceAddrs {
		return InstanceAddrs{App: next(), AppAdmin: next(), SidecarAdmin: next(), Inbound: next(), Outbound: next()}
	}
	return Addrs{Edge: next(), EdgeAdmin: next(), XDS: next(), API: next(), Standin: next(), Consul: next(),
		Pets1: inst(), Pets2: inst(), Sync: inst(), Stats: inst(),
		Jaeger:     JaegerAddrs{UI: next(), OTLPGRPC: next(), OTLPHTTP: next(), QueryGRPC: next(), Health: next(), Metrics: next()},
		Prometheus: next()}
}

// promConfig is the part of a Prometheus configuration the tests read.
type promConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// TestRenderPrometheusConfig: the committed prometheus.local.yml renders
// unchanged for the dev addresses, and for other addresses scrapes every
// admin listener of the run and no dev address; the written configuration
// passes the real `promtool check config` (rule files included).
func TestRenderPrometheusConfig(t *testing.T) {
	src := filepath.Join(testutil.RepoRoot(t), "observability", "prometheus", "prometheus.local.yml")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	same, rules, err := RenderPrometheusConfig(b, DevAddrs())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(same, b) {
		t.Error("rendering for the dev addresses changed the committed configuration")
	}
	if !slices.Equal(rules, []string{"alerts.yml"}) {
		t.Errorf("rule files %v, want [alerts.yml]", rules)
	}

	a := testAddrs(t)
	o := Options{RunDir: t.TempDir(), Addrs: a, Obs: true, PrometheusConfig: src}
	if err := PrepareObs(o); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(o.RunDir, "etc", "prometheus", "prometheus.yml")
	rendered, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var cfg promConfig
	if err := yaml.Unmarshal(rendered, &cfg); err != nil {
		t.Fatal(err)
	}
	targets := map[string]string{} // address → job
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				targets[tg] = sc.JobName
			}
		}
	}
	for addr, job := range map[string]string{
		a.EdgeAdmin: "edge", a.API: "controlplane", a.Prometheus: "prometheus", a.Consul: "consul",
		a.Pets1.AppAdmin: "pets", a.Pets2.AppAdmin: "pets", a.Sync.AppAdmin: "sync", a.Stats.AppAdmin: "stats",
		a.Pets1.SidecarAdmin: "sidecar", a.Pets2.SidecarAdmin: "sidecar", a.Sync.SidecarAdmin: "sidecar", a.Stats.SidecarAdmin: "sidecar",
	} {
		if targets[addr] != job {
			t.Errorf("%s is scraped by job %q, want %q", addr, targets[addr], job)
		}
	}
	var config []string // without the comments, which may name dev addresses
	for _, line := range strings.Split(string(rendered), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			config = append(config, line)
		}
	}
	for name, addr := range DevAddrs().named() {
		if strings.Contains(strings.Join(config, "\n"), addr) {
			t.Errorf("the rendered configuration still names the dev %s address %s", name, addr)
		}
	}
	if _, err := os.Stat(filepath.Join(o.RunDir, "etc", "jaeger.yaml")); err != nil {
		t.Errorf("jaeger config not written: %v", err)
	}
	promtool := promtest.PromtoolBin(t)
	if b, err := exec.Command(promtool, "check", "config", out).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, b)
	}
}

// TestObsRealServers starts, through the launcher and the OBS topology,
// the real Jaeger and Prometheus and one petmesh process (pets-1), all on
// free ports: pets-1's spans reach that Jaeger under its service name and
// instance id, Prometheus scrapes pets-1 and itself at the run's
// addresses, and it stores that trace as an exemplar of pets-1's latency
// histogram.
func TestObsRealServers(t *testing.T) {
	jaegerBin := jaegertest.Bin(t)
	promBin := promtest.Bin(t)
	pets := testutil.BuildBinary(t, "./services/pets/cmd/pets")
	a := testAddrs(t)
	o := Options{BinDir: filepath.Dir(pets), RunDir: t.TempDir(), Registry: "builtin", Addrs: a,
		Obs: true, JaegerBin: jaegerBin, PrometheusBin: promBin,
		PrometheusConfig: filepath.Join(testutil.RepoRoot(t), "observability", "prometheus", "prometheus.local.yml"),
		Env:              []string{"OTEL_BSP_SCHEDULE_DELAY=100"}}
	if err := Prepare(o.RunDir); err != nil {
		t.Fatal(err)
	}
	if err := PrepareObs(o); err != nil {
		t.Fatal(err)
	}
	l := &Launcher{BinDir: o.BinDir, RunDir: o.RunDir, Out: io.Discard, StartTimeout: 60 * time.Second, StopTimeout: 10 * time.Second}
	t.Cleanup(func() {
		if err := l.StopAll(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if t.Failed() {
			for _, name := range []string{"jaeger", "prometheus", "pets-1"} {
				b, _ := os.ReadFile(filepath.Join(o.RunDir, "logs", name+".log"))
				t.Logf("--- %s log ---\n%s", name, b)
			}
		}
	})
	ctx := testutil.Context(t)
	started := map[string]bool{}
	for _, p := range Topology(o) {
		if p.Name != "jaeger" && p.Name != "prometheus" && p.Name != "pets-1" {
			continue
		}
		if err := l.Start(ctx, p); err != nil {
			t.Fatal(err)
		}
		started[p.Name] = true
	}
	if len(started) != 3 {
		t.Fatalf("started %v, want jaeger, prometheus and pets-1 from the topology", started)
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(u string, out any) error {
		resp, err := hc.Get(u)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: status %d: %s", u, resp.StatusCode, b)
		}
		if out == nil {
			return nil
		}
		return json.Unmarshal(b, out)
	}
	if err := get("http://"+a.Pets1.App+"/pets?limit=1", nil); err != nil {
		t.Fatal(err)
	}

	// The request's trace: pets's server span and its database span, from
	// service "pets", instance pets-1.
	var traceID string
	testutil.Eventually(t, 30*time.Second, func() error {
		var resp struct {
			Data []struct {
				TraceID string `json:"traceID"`
				Spans   []struct {
					OperationName string `json:"operationName"`
					ProcessID     string `json:"processID"`
					Tags          []struct {
						Key   string `json:"key"`
						Value any    `json:"value"`
					} `json:"tags"`
				} `json:"spans"`
				Processes map[string]struct {
					ServiceName string `json:"serviceName"`
					Tags        []struct {
						Key   string `json:"key"`
						Value any    `json:"value"`
					} `json:"tags"`
				} `json:"processes"`
			} `json:"data"`
		}
		q := url.Values{"service": {"pets"}, "operation": {"GET /pets"}, "lookback": {"1h"}, "limit": {"20"}}
		if err := get("http://"+a.Jaeger.UI+"/api/traces?"+q.Encode(), &resp); err != nil {
			return err
		}
		for _, tr := range resp.Data {
			var server, db bool
			for _, s := range tr.Spans {
				p := tr.Processes[s.ProcessID]
				inst := ""
				for _, kv := range p.Tags {
					if kv.Key == "service.instance.id" {
						inst = fmt.Sprint(kv.Value)
					}
				}
				if p.ServiceName != "pets" || inst != "pets-1" {
					return fmt.Errorf("span %q from service %q instance %q, want pets / pets-1", s.OperationName, p.ServiceName, inst)
				}
				server = server || s.OperationName == "GET /pets"
				for _, kv := range s.Tags {
					db = db || (kv.Key == "db.system" && kv.Value == "sqlite")
				}
			}
			if server && db {
				traceID = tr.TraceID
				return nil
			}
		}
		return fmt.Errorf("no trace of GET /pets with a sqlite span yet (%d traces)", len(resp.Data))
	})

	// Prometheus scrapes pets-1 and itself, at this run's addresses.
	testutil.Eventually(t, 30*time.Second, func() error {
		var resp struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					ScrapeURL string            `json:"scrapeUrl"`
					Health    string            `json:"health"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := get("http://"+a.Prometheus+"/api/v1/targets", &resp); err != nil {
			return err
		}
		up := map[string]bool{}
		for _, tg := range resp.Data.ActiveTargets {
			if tg.Health == "up" {
				up[tg.Labels["job"]+" "+tg.Labels["instance"]+" "+tg.Labels["petmesh_instance"]] = true
			}
		}
		for _, want := range []string{"pets " + a.Pets1.AppAdmin + " pets-1", "prometheus " + a.Prometheus + " "} {
			if !up[want] {
				return fmt.Errorf("target %q not up; up: %v", want, up)
			}
		}
		return nil
	})

	// Prometheus stored the trace as an exemplar of pets's latency
	// histogram (OpenMetrics scrape, --enable-feature=exemplar-storage).
	testutil.Eventually(t, 30*time.Second, func() error {
		var resp struct {
			Data []struct {
				SeriesLabels map[string]string `json:"seriesLabels"`
				Exemplars    []struct {
					Labels map[string]string `json:"labels"`
				} `json:"exemplars"`
			} `json:"data"`
		}
		q := url.Values{"query": {`http_server_request_duration_seconds_bucket{job="pets"}`},
			"start": {strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)}, "end": {strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10)}}
		if err := get("http://"+a.Prometheus+"/api/v1/query_exemplars?"+q.Encode(), &resp); err != nil {
			return err
		}
		var seen []string
		for _, series := range resp.Data {
			for _, e := range series.Exemplars {
				if e.Labels["trace_id"] == traceID && series.SeriesLabels["http_route"] == "/pets" {
					return nil
				}
				seen = append(seen, series.SeriesLabels["http_route"]+":"+e.Labels["trace_id"])
			}
		}
		return fmt.Errorf("no exemplar with trace %s on http_server_request_duration_seconds_bucket{http_route=\"/pets\"}; seen %v", traceID, seen)
	})
}
