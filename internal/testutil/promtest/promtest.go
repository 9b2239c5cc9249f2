// Package promtest starts a real Prometheus server for tests: the
// prometheus binary from PATH (the Debian package that scripts/deps.sh
// installs) with a generated configuration that scrapes the given targets
// every second, listening on 127.0.0.1 on a free port, storing its data in
// t.TempDir(), killed when the test ends. Query runs PromQL through the
// HTTP API.
//
// When prometheus is not on PATH the test is skipped, unless
// PETMESH_REQUIRE_REAL=1, in which case it fails.
package promtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/petmesh/petmesh/internal/testutil"
)

// EnvRequireReal, when "1", turns a missing prometheus binary into a test
// failure.
const EnvRequireReal = "PETMESH_REQUIRE_REAL"

// Options configure StartWith.
type Options struct {
	// Targets maps a job name to the host:port addresses scraped at /metrics.
	Targets map[string][]string
	// RuleFiles are rule files (absolute paths) loaded and evaluated every
	// second.
	RuleFiles []string
	// ScrapeInterval defaults to 1s; EvaluationInterval likewise.
	ScrapeInterval time.Duration
	// StartTimeout bounds the wait for /-/ready; default 60s.
	StartTimeout time.Duration
}

// Prometheus is a running Prometheus server. Its methods are safe for
// concurrent use.
type Prometheus struct {
	t    testing.TB
	port int
	hc   *http.Client
	cfg  string

	cmd  *exec.Cmd
	done chan struct{}
	out  *testutil.SyncBuffer
}

// Bin returns the path of prometheus on PATH, skipping or failing t when
// it is missing (see the package doc).
func Bin(t testing.TB) string {
	t.Helper()
	return lookPath(t, "prometheus")
}

// PromtoolBin returns the path of promtool on PATH with the same
// skip/fail rule as Bin.
func PromtoolBin(t testing.TB) string {
	t.Helper()
	return lookPath(t, "promtool")
}

func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(EnvRequireReal) == "1" {
			t.Fatalf("%s not on PATH and %s=1; install it with scripts/deps.sh (make deps)", name, EnvRequireReal)
		}
		t.Skipf("%s not on PATH; skipping test that needs it", name)
	}
	return p
}

// Start starts Prometheus scraping scrapeTargets (job name → addresses)
// and waits until it is ready. It is killed in t.Cleanup.
func Start(t testing.TB, scrapeTargets map[string][]string) *Prometheus {
	t.Helper()
	return StartWith(t, Options{Targets: scrapeTargets})
}

// StartWith is Start with options.
func StartWith(t testing.TB, opts Options) *Prometheus {
	t.Helper()
	bin := Bin(t)
	if opts.ScrapeInterval == 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	dir := t.TempDir()
	cfgYAML, err := Config(opts)
	if err != nil {
		t.Fatalf("promtest: config: %v", err)
	}
	p := &Prometheus{t: t, hc: &http.Client{Timeout: 10 * time.Second}, cfg: filepath.Join(dir, "prometheus.yml")}
	if err := os.WriteFile(p.cfg, cfgYAML, 0o600); err != nil {
		t.Fatalf("promtest: write config: %v", err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("prometheus output:\n%s\nconfig:\n%s", p.Output(), cfgYAML)
		}
	})
	for attempt := 0; attempt < 3; attempt++ {
		p.port, err = freePort()
		if err != nil {
			t.Fatalf("promtest: free port: %v", err)
		}
		data := filepath.Join(dir, fmt.Sprintf("data-%d", attempt))
		if err = p.start(bin, data, opts.StartTimeout); err == nil {
			return p
		}
		p.stop()
	}
	t.Fatalf("promtest: start prometheus: %v\n%s", err, p.Output())
	return nil
}

// Config renders the prometheus.yml that StartWith uses: one static job
// per Targets entry (sorted by name), scraped at /metrics over HTTP.
func Config(opts Options) ([]byte, error) {
	interval := opts.ScrapeInterval
	if interval == 0 {
		interval = time.Second
	}
	type staticConfig struct {
		Targets []string `yaml:"targets"`
	}
	type scrapeConfig struct {
		JobName       string         `yaml:"job_name"`
		MetricsPath   string         `yaml:"metrics_path"`
		StaticConfigs []staticConfig `yaml:"static_configs"`
	}
	var cfg struct {
		Global struct {
			ScrapeInterval     string `yaml:"scrape_interval"`
			ScrapeTimeout      string `yaml:"scrape_timeout"`
			EvaluationInterval string `yaml:"evaluation_interval"`
		} `yaml:"global"`
		RuleFiles     []string       `yaml:"rule_files,omitempty"`
		ScrapeConfigs []scrapeConfig `yaml:"scrape_configs"`
	}
	cfg.Global.ScrapeInterval = interval.String()
	cfg.Global.ScrapeTimeout = interval.String()
	cfg.Global.EvaluationInterval = interval.String()
	cfg.RuleFiles = opts.RuleFiles
	jobs := make([]string, 0, len(opts.Targets))
	for job := range opts.Targets {
		jobs = append(jobs, job)
	}
	sort.Strings(jobs)
	cfg.ScrapeConfigs = []scrapeConfig{}
	for _, job := range jobs {
		addrs := opts.Targets[job]
		if job == "" || len(addrs) == 0 {
			return nil, fmt.Errorf("job %q: want a name and at least one target", job)
		}
		for _, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("job %q: target %q: want host:port: %w", job, a, err)
			}
		}
		cfg.ScrapeConfigs = append(cfg.ScrapeConfigs, scrapeConfig{
			JobName: job, MetricsPath: "/metrics", StaticConfigs: []staticConfig{{Targets: addrs}},
		})
	}
	return yaml.Marshal(cfg)
}

func (p *Prometheus) start(bin, data string, timeout time.Duration) error {
	cmd := exec.Command(bin,
		"--config.file="+p.cfg,
		"--storage.tsdb.path="+data,
		"--web.listen-address="+p.Addr(),
		"--web.enable-lifecycle",
		"--log.level=warn",
	)
	out := &testutil.SyncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done, p.out = cmd, done, out
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("prometheus exited before becoming ready (last poll: %v)", last)
		default:
		}
		if last = p.get(context.Background(), "/-/ready", nil); last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a readiness wait
	}
	return fmt.Errorf("not ready within %v: %w", timeout, last)
}

// Addr returns the server's address, "127.0.0.1:port".
func (p *Prometheus) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// URL returns the server's base URL.
func (p *Prometheus) URL() string { return "http://" + p.Addr() }

// Sample is one element of an instant vector.
type Sample struct {
	Metric    map[string]string
	Timestamp time.Time
	Value     float64
}

// Point is one value of a range vector series.
type Point struct {
	Timestamp time.Time
	Value     float64
}

// Series is one element of a range vector (matrix).
type Series struct {
	Metric map[string]string
	Points []Point
}

// Result is a query result: ResultType is "vector", "matrix", "scalar" or
// "string"; the matching field holds the data.
type Result struct {
	ResultType string
	Vector     []Sample
	Matrix     []Series
	Scalar     *Point
	Warnings   []string
}

// HasData reports whether the result holds at least one sample (a scalar
// always does; NaN samples do not count).
func (r Result) HasData() bool {
	switch r.ResultType {
	case "vector":
		for _, s := range r.Vector {
			if !math.IsNaN(s.Value) {
				return true
			}
		}
	case "matrix":
		for _, s := range r.Matrix {
			for _, pt := range s.Points {
				if !math.IsNaN(pt.Value) {
					return true
				}
			}
		}
	case "scalar":
		return r.Scalar != nil && !math.IsNaN(r.Scalar.Value)
	}
	return false
}

type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Warnings  []string        `json:"warnings"`
}

// Query evaluates promql at the current time (an instant query; a range
// selector such as `up[1m]` yields a matrix). A PromQL error is returned
// as an error naming the expression.
func (p *Prometheus) Query(ctx context.Context, promql string) (Result, error) {
	q := url.Values{}
	q.Set("query", promql)
	var resp apiResponse
	if err := p.get(ctx, "/api/v1/query?"+q.Encode(), &resp); err != nil {
		return Result{}, fmt.Errorf("query %q: %w", promql, err)
	}
	if resp.Status != "success" {
		return Result{}, fmt.Errorf("query %q: %s: %s", promql, resp.ErrorType, resp.Error)
	}
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return Result{}, fmt.Errorf("query %q: decode data: %w", promql, err)
	}
	r := Result{ResultType: data.ResultType, Warnings: resp.Warnings}
	switch data.ResultType {
	case "vector":
		var raw []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &raw); err != nil {
			return Result{}, fmt.Errorf("query %q: decode vector: %w", promql, err)
		}
		for _, s := range raw {
			pt, err := point(s.Value)
			if err != nil {
				return Result{}, fmt.Errorf("query %q: %w", promql, err)
			}
			r.Vector = append(r.Vector, Sample{Metric: s.Metric, Timestamp: pt.Timestamp, Value: pt.Value})
		}
	case "matrix":
		var raw []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
		}
		if err := json.Unmarshal(data.Result, &raw); err != nil {
			return Result{}, fmt.Errorf("query %q: decode matrix: %w", promql, err)
		}
		for _, s := range raw {
			ser := Series{Metric: s.Metric}
			for _, v := range s.Values {
				pt, err := point(v)
				if err != nil {
					return Result{}, fmt.Errorf("query %q: %w", promql, err)
				}
				ser.Points = append(ser.Points, pt)
			}
			r.Matrix = append(r.Matrix, ser)
		}
	case "scalar":
		var raw [2]any
		if err := json.Unmarshal(data.Result, &raw); err != nil {
			return Result{}, fmt.Errorf("query %q: decode scalar: %w", promql, err)
		}
		pt, err := point(raw)
		if err != nil {
			return Result{}, fmt.Errorf("query %q: %w", promql, err)
		}
		r.Scalar = &pt
	case "string":
	default:
		return Result{}, fmt.Errorf("query %q: unknown result type %q", promql, data.ResultType)
	}
	return r, nil
}

// point decodes a [unix seconds, "value"] pair.
func point(v [2]any) (Point, error) {
	ts, ok := v[0].(float64)
	if !ok {
		return Point{}, fmt.Errorf("sample timestamp %v: not a number", v[0])
	}
	s, ok := v[1].(string)
	if !ok {
		return Point{}, fmt.Errorf("sample value %v: not a string", v[1])
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return Point{}, fmt.Errorf("sample value %q: %w", s, err)
	}
	sec, frac := math.Modf(ts)
	return Point{Timestamp: time.Unix(int64(sec), int64(frac*1e9)), Value: f}, nil
}

// Target is one active scrape target.
type Target struct {
	Job       string
	ScrapeURL string
	Health    string // "up", "down" or "unknown"
	LastError string
}

// Targets returns the active scrape targets.
func (p *Prometheus) Targets(ctx context.Context) ([]Target, error) {
	var resp apiResponse
	if err := p.get(ctx, "/api/v1/targets?state=active", &resp); err != nil {
		return nil, err
	}
	var data struct {
		ActiveTargets []struct {
			ScrapePool string `json:"scrapePool"`
			ScrapeURL  string `json:"scrapeUrl"`
			Health     string `json:"health"`
			LastError  string `json:"lastError"`
		} `json:"activeTargets"`
	}
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return nil, fmt.Errorf("decode targets: %w", err)
	}
	out := make([]Target, 0, len(data.ActiveTargets))
	for _, a := range data.ActiveTargets {
		out = append(out, Target{Job: a.ScrapePool, ScrapeURL: a.ScrapeURL, Health: a.Health, LastError: a.LastError})
	}
	return out, nil
}

// WaitForTargetsUp polls until every active target has been scraped
// successfully (and there is at least one), or fails t after timeout.
func (p *Prometheus) WaitForTargetsUp(ctx context.Context, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		last = func() error {
			ts, err := p.Targets(ctx)
			if err != nil {
				return err
			}
			if len(ts) == 0 {
				return fmt.Errorf("no active targets")
			}
			var down []string
			for _, tg := range ts {
				if tg.Health != "up" {
					down = append(down, fmt.Sprintf("%s %s: %s %s", tg.Job, tg.ScrapeURL, tg.Health, tg.LastError))
				}
			}
			if len(down) > 0 {
				return fmt.Errorf("targets not up: %s", strings.Join(down, "; "))
			}
			return nil
		}()
		if last == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.t.Fatalf("promtest: targets not up within %v: %v", timeout, last)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a readiness wait
	}
}

// Rule is one loaded rule and its evaluation state.
type Rule struct {
	Group     string
	Name      string
	Type      string // "alerting" or "recording"
	Query     string
	Health    string
	LastError string
	State     string // alerting rules: "inactive", "pending" or "firing"
}

// Rules returns the loaded rules.
func (p *Prometheus) Rules(ctx context.Context) ([]Rule, error) {
	var resp apiResponse
	if err := p.get(ctx, "/api/v1/rules", &resp); err != nil {
		return nil, err
	}
	var data struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Type      string `json:"type"`
				Query     string `json:"query"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return nil, fmt.Errorf("decode rules: %w", err)
	}
	var out []Rule
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			out = append(out, Rule{Group: g.Name, Name: r.Name, Type: r.Type, Query: r.Query, Health: r.Health, LastError: r.LastError, State: r.State})
		}
	}
	return out, nil
}

// get fetches path and decodes a JSON body into v (when v is non-nil).
// The query API answers errors with a JSON body and a 4xx/5xx status;
// those bodies are decoded too so that callers see Prometheus's message.
func (p *Prometheus) get(ctx context.Context, path string, v any) error {
	u := p.URL() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ar apiResponse
		if v != nil && json.Unmarshal(b, &ar) == nil && ar.Status == "error" {
			return fmt.Errorf("get %s: status %d: %s: %s", path, resp.StatusCode, ar.ErrorType, ar.Error)
		}
		return fmt.Errorf("get %s: status %d: %s", path, resp.StatusCode, bytes.TrimSpace(b))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// Output returns everything Prometheus has logged so far.
func (p *Prometheus) Output() string {
	if p.out == nil {
		return ""
	}
	return p.out.String()
}

func (p *Prometheus) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
