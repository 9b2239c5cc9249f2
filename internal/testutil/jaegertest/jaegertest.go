// Package jaegertest starts a real Jaeger v2 for tests: the jaeger binary
// with observability/jaeger/config.yaml (in-memory storage), its OTLP gRPC
// and HTTP receivers, query API and health check bound to 127.0.0.1 on free
// ports, killed when the test ends. Traces reads traces back through the
// query HTTP API (/api/traces), the same one the Jaeger UI uses.
//
// The binary comes from PETMESH_JAEGER_BIN (scripts/tool.sh jaeger builds
// and prints it). When the variable is unset the test is skipped, unless
// PETMESH_REQUIRE_REAL=1, in which case it fails.
package jaegertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/observability"
)

// EnvBin names the environment variable holding the jaeger binary path.
const EnvBin = "PETMESH_JAEGER_BIN"

// EnvRequireReal, when "1", turns a missing binary into a test failure.
const EnvRequireReal = testutil.EnvRequireReal

// Jaeger is a running Jaeger. Its methods are safe for concurrent use.
type Jaeger struct {
	t     testing.TB
	ports ports
	hc    *http.Client

	cmd  *exec.Cmd
	done chan struct{}
	out  *testutil.SyncBuffer
}

type ports struct {
	otlpGRPC, otlpHTTP, queryHTTP, queryGRPC, health, metrics int
}

// Bin returns the jaeger binary path from PETMESH_JAEGER_BIN, skipping or
// failing t when it is unset (see the package doc).
func Bin(t testing.TB) string {
	t.Helper()
	return testutil.RealBinary(t, EnvBin, "Jaeger", "build jaeger with scripts/tool.sh jaeger")
}

// Start starts Jaeger and waits until its health check reports ready and
// its query API answers. It is killed in t.Cleanup.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := Bin(t)
	cfg := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(cfg, observability.JaegerConfig(), 0o600); err != nil {
		t.Fatalf("jaegertest: write config: %v", err)
	}
	j := &Jaeger{t: t, hc: &http.Client{Timeout: 5 * time.Second}}
	t.Cleanup(func() {
		j.stop()
		if t.Failed() {
			t.Logf("jaeger output:\n%s", j.Output())
		}
	})
	// Free ports are found by binding and closing; another process may
	// grab one in between, so retry a few times with fresh ports.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		j.ports, err = freePorts()
		if err != nil {
			t.Fatalf("jaegertest: free ports: %v", err)
		}
		if err = j.start(bin, cfg); err == nil {
			return j
		}
		j.stop()
	}
	t.Fatalf("jaegertest: start jaeger: %v\n%s", err, j.Output())
	return nil
}

func (j *Jaeger) env() []string {
	p := j.ports
	addr := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	return []string{
		"JAEGER_OTLP_GRPC_ENDPOINT=" + addr(p.otlpGRPC),
		"JAEGER_OTLP_HTTP_ENDPOINT=" + addr(p.otlpHTTP),
		"JAEGER_QUERY_HTTP_ENDPOINT=" + addr(p.queryHTTP),
		"JAEGER_QUERY_GRPC_ENDPOINT=" + addr(p.queryGRPC),
		"JAEGER_HEALTH_ENDPOINT=" + addr(p.health),
		"JAEGER_METRICS_HOST=127.0.0.1",
		"JAEGER_METRICS_PORT=" + strconv.Itoa(p.metrics),
		"JAEGER_LOG_LEVEL=warn",
	}
}

func (j *Jaeger) start(bin, cfg string) error {
	cmd := exec.Command(bin, "--config", "file:"+cfg)
	cmd.Env = append(os.Environ(), j.env()...)
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
	j.cmd, j.done, j.out = cmd, done, out
	return j.waitReady(done, 60*time.Second)
}

// waitReady polls the health check and the query API until both answer.
func (j *Jaeger) waitReady(done <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	health := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(j.ports.health)) + "/status"
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("jaeger exited before becoming ready (last poll: %v)", last)
		default:
		}
		last = func() error {
			if err := j.get(context.Background(), health, nil); err != nil {
				return err
			}
			return j.get(context.Background(), j.QueryURL()+"/api/services", nil)
		}()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a readiness wait
	}
	return fmt.Errorf("not ready within %v: %w", timeout, last)
}

// OTLPHTTPEndpoint returns the OTLP/HTTP receiver's base URL,
// "http://127.0.0.1:port", suitable for OTEL_EXPORTER_OTLP_ENDPOINT with
// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (the default).
func (j *Jaeger) OTLPHTTPEndpoint() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(j.ports.otlpHTTP))
}

// OTLPGRPCEndpoint returns the OTLP/gRPC receiver's URL,
// "http://127.0.0.1:port" (plaintext), for OTEL_EXPORTER_OTLP_ENDPOINT with
// OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
func (j *Jaeger) OTLPGRPCEndpoint() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(j.ports.otlpGRPC))
}

// QueryURL returns the base URL of the query HTTP API and UI.
func (j *Jaeger) QueryURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(j.ports.queryHTTP))
}

// MetricsURL returns the URL of Jaeger's own Prometheus metrics.
func (j *Jaeger) MetricsURL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(j.ports.metrics)) + "/metrics"
}

// Env returns the OTEL_* variables that point a petmesh process's OTLP
// exporter (http/protobuf) at this Jaeger, with every span sampled.
func (j *Jaeger) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPHTTPEndpoint(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
}

// Trace is one trace as returned by the query API, with each span's
// process resolved.
type Trace struct {
	TraceID string `json:"traceID"`
	Spans   []Span `json:"spans"`
}

// Span is one span of a Trace.
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	// StartTime is in microseconds since the epoch; Duration in microseconds.
	StartTime int64    `json:"startTime"`
	Duration  int64    `json:"duration"`
	Tags      []KV     `json:"tags"`
	ProcessID string   `json:"processID"`
	Process   *Process `json:"-"`
}

// Reference links a span to another (its parent for CHILD_OF).
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Process is the emitting process (OTel resource) of a span.
type Process struct {
	ServiceName string `json:"serviceName"`
	Tags        []KV   `json:"tags"`
}

// KV is a tag; Value is a string, bool, float64 (JSON numbers) or nil.
type KV struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// ServiceName returns the span's process service name ("" if unknown).
func (s Span) ServiceName() string {
	if s.Process == nil {
		return ""
	}
	return s.Process.ServiceName
}

// ParentSpanID returns the span id of the CHILD_OF reference within the
// same trace, or "" for a root span.
func (s Span) ParentSpanID() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" && r.TraceID == s.TraceID {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of the span tag key and whether it is present.
func (s Span) Tag(key string) (any, bool) {
	for _, kv := range s.Tags {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// Span returns the span with the given id.
func (t Trace) Span(id string) (Span, bool) {
	for _, s := range t.Spans {
		if s.SpanID == id {
			return s, true
		}
	}
	return Span{}, false
}

// Roots returns the spans without a parent in the trace.
func (t Trace) Roots() []Span {
	var out []Span
	for _, s := range t.Spans {
		if s.ParentSpanID() == "" {
			out = append(out, s)
		}
	}
	return out
}

type tracesResponse struct {
	Data []struct {
		Trace
		Processes map[string]Process `json:"processes"`
	} `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

// Traces returns the traces (up to 1000, from the last hour) that contain
// a span of service, newest first as Jaeger orders them. A service Jaeger
// has not seen yet yields no traces and no error.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]Trace, error) {
	q := url.Values{}
	q.Set("service", service)
	q.Set("limit", "1000")
	q.Set("lookback", "1h")
	var resp tracesResponse
	if err := j.get(ctx, j.QueryURL()+"/api/traces?"+q.Encode(), &resp); err != nil {
		var se *statusError
		if errors.As(err, &se) && se.code == http.StatusNotFound {
			return nil, nil
		}
		return nil, err
	}
	if len(resp.Errors) > 0 {
		return nil, fmt.Errorf("jaeger query: %d: %s", resp.Errors[0].Code, resp.Errors[0].Msg)
	}
	out := make([]Trace, 0, len(resp.Data))
	for _, d := range resp.Data {
		tr := d.Trace
		for i := range tr.Spans {
			if p, ok := d.Processes[tr.Spans[i].ProcessID]; ok {
				tr.Spans[i].Process = &p
			}
		}
		out = append(out, tr)
	}
	return out, nil
}

// Trace returns one trace by id.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (Trace, error) {
	var resp tracesResponse
	if err := j.get(ctx, j.QueryURL()+"/api/traces/"+url.PathEscape(traceID), &resp); err != nil {
		return Trace{}, err
	}
	if len(resp.Data) != 1 {
		return Trace{}, fmt.Errorf("jaeger query: trace %s: got %d traces", traceID, len(resp.Data))
	}
	d := resp.Data[0]
	tr := d.Trace
	for i := range tr.Spans {
		if p, ok := d.Processes[tr.Spans[i].ProcessID]; ok {
			tr.Spans[i].Process = &p
		}
	}
	return tr, nil
}

// Services returns the service names Jaeger has received spans from.
func (j *Jaeger) Services(ctx context.Context) ([]string, error) {
	var resp struct {
		Data []string `json:"data"`
	}
	if err := j.get(ctx, j.QueryURL()+"/api/services", &resp); err != nil {
		return nil, err
	}
	return resp.Data, nil
}

type statusError struct {
	url  string
	code int
	body string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("GET %s: status %d: %s", e.url, e.code, e.body)
}

// get fetches u and decodes a JSON body into v (when v is non-nil).
func (j *Jaeger) get(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("new request: %w", err)
	}
	resp, err := j.hc.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{url: u, code: resp.StatusCode, body: string(bytes.TrimSpace(b))}
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", u, err)
	}
	return nil
}

// Output returns everything Jaeger has written so far.
func (j *Jaeger) Output() string {
	if j.out == nil {
		return ""
	}
	return j.out.String()
}

// stop kills the process (SIGKILL) and waits for it.
func (j *Jaeger) stop() {
	if j.cmd == nil || j.cmd.Process == nil {
		return
	}
	_ = j.cmd.Process.Kill()
	<-j.done
}

// freePorts reserves six distinct loopback TCP ports.
func freePorts() (ports, error) {
	var got []int
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	for len(got) < 6 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, err
		}
		closers = append(closers, l)
		got = append(got, l.Addr().(*net.TCPAddr).Port)
	}
	return ports{otlpGRPC: got[0], otlpHTTP: got[1], queryHTTP: got[2], queryGRPC: got[3], health: got[4], metrics: got[5]}, nil
}
