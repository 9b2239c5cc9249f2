package stats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/internal/telemetry"
	ptestutil "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/services/stats/store"
)

// clock is a settable clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var testNow = time.Date(2026, 11, 20, 12, 0, 30, 0, time.UTC)

func testConfig(t testing.TB) *Config {
	return &Config{
		Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		DBPath:    filepath.Join(t.TempDir(), "stats.db"),
		Retention: 7*24*time.Hour + time.Hour, RetentionInterval: time.Minute,
		PetsURL: "http://127.0.0.1:1", PetsCacheTTL: time.Minute, PetsTimeout: 5 * time.Second,
		QueueSize: 10000, BatchSize: 500, FlushInterval: 10 * time.Millisecond, LogLevel: "info",
	}
}

// newService builds a service on a temporary database. The writer is not
// running unless the test starts it.
func newService(t testing.TB, cfg *Config, clk *clock) *Service {
	t.Helper()
	if clk == nil {
		clk = &clock{t: testNow}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	svc, err := New(context.Background(), cfg, telemetry.NewTest(io.Discard), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	return svc
}

// startWriter runs the writer until the test ends.
func startWriter(t testing.TB, svc *Service) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunWriter(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func do(t testing.TB, h http.Handler, method, target, subject, roles, body string) *httptest.ResponseRecorder {
	t.Helper()
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	if subject != "" {
		r.Header.Set("X-Petmesh-Subject", subject)
		r.Header.Set("X-Petmesh-Roles", roles)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

func decodeError(t testing.TB, w *httptest.ResponseRecorder) apiError {
	t.Helper()
	var e apiError
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("error body %q: %v", w.Body.String(), err)
	}
	return e
}

// event returns a valid event as a JSON object with overrides applied
// (a nil value deletes the key).
func event(over map[string]any) map[string]any {
	e := map[string]any{
		"time": testNow.Add(-time.Second).Format(time.RFC3339Nano), "route": "pets-list", "method": "GET",
		"path": "/pets", "status": 200, "latency_ms": 1.7, "subject": "alice",
	}
	for k, v := range over {
		if v == nil {
			delete(e, k)
		} else {
			e[k] = v
		}
	}
	return e
}

func batch(evs ...map[string]any) string {
	b, _ := json.Marshal(map[string]any{"events": evs})
	return string(b)
}

func TestPostEventsValidation(t *testing.T) {
	svc := newService(t, testConfig(t), nil)
	h := svc.Handler()
	many := make([]map[string]any, MaxBatch+1)
	for i := range many {
		many[i] = event(nil)
	}
	for _, c := range []struct {
		desc      string
		body      string
		subject   string
		wantCode  int
		wantField string
	}{
		{desc: "valid", body: batch(event(nil), event(map[string]any{"pet_id": "pet_1", "trace_id": "0123456789abcdef0123456789abcdef", "upstream": "pets"})), wantCode: 202},
		{desc: "no identity", body: batch(event(nil)), subject: "-", wantCode: 401},
		{desc: "empty body", body: "", wantCode: 400, wantField: "body"},
		{desc: "malformed", body: `{"events":[`, wantCode: 400, wantField: "body"},
		{desc: "events missing", body: `{}`, wantCode: 400, wantField: "events"},
		{desc: "events empty", body: `{"events":[]}`, wantCode: 400, wantField: "events"},
		{desc: "too many events", body: batch(many...), wantCode: 400, wantField: "events"},
		{desc: "unknown top-level field", body: `{"events":[],"extra":1}`, wantCode: 400, wantField: "extra"},
		{desc: "unknown event field", body: batch(event(nil), event(nil), event(map[string]any{"colour": "red"})), wantCode: 400, wantField: "events[2].colour"},
		{desc: "status as string", body: batch(event(nil), event(map[string]any{"status": "200"})), wantCode: 400, wantField: "events[1].status"},
		{desc: "events not an array", body: `{"events":{}}`, wantCode: 400, wantField: "events"},
		{desc: "event not an object", body: `{"events":[1]}`, wantCode: 400, wantField: "events[0]"},
		{desc: "time missing", body: batch(event(map[string]any{"time": nil})), wantCode: 400, wantField: "events[0].time"},
		{desc: "time not RFC 3339", body: batch(event(map[string]any{"time": "yesterday"})), wantCode: 400, wantField: "events[0].time"},
		{desc: "time in the future", body: batch(event(map[string]any{"time": testNow.Add(time.Hour).Format(time.RFC3339)})), wantCode: 400, wantField: "events[0].time"},
		{desc: "time older than retention", body: batch(event(map[string]any{"time": testNow.Add(-8 * 24 * time.Hour).Format(time.RFC3339)})), wantCode: 400, wantField: "events[0].time"},
		{desc: "route missing", body: batch(event(map[string]any{"route": nil})), wantCode: 400, wantField: "events[0].route"},
		{desc: "route too long", body: batch(event(map[string]any{"route": strings.Repeat("r", 129)})), wantCode: 400, wantField: "events[0].route"},
		{desc: "route with control char", body: batch(event(map[string]any{"route": "a\nb"})), wantCode: 400, wantField: "events[0].route"},
		{desc: "method missing", body: batch(event(map[string]any{"method": ""})), wantCode: 400, wantField: "events[0].method"},
		{desc: "method lower case", body: batch(event(map[string]any{"method": "get"})), wantCode: 400, wantField: "events[0].method"},
		{desc: "path missing", body: batch(event(map[string]any{"path": nil})), wantCode: 400, wantField: "events[0].path"},
		{desc: "path relative", body: batch(event(map[string]any{"path": "pets"})), wantCode: 400, wantField: "events[0].path"},
		{desc: "status missing", body: batch(event(map[string]any{"status": nil})), wantCode: 400, wantField: "events[0].status"},
		{desc: "status out of range", body: batch(event(nil), event(nil), event(nil), event(map[string]any{"status": 600})), wantCode: 400, wantField: "events[3].status"},
		{desc: "status fractional", body: batch(event(map[string]any{"status": 200.5})), wantCode: 400, wantField: "events[0].status"},
		{desc: "latency missing", body: batch(event(map[string]any{"latency_ms": nil})), wantCode: 400, wantField: "events[0].latency_ms"},
		{desc: "latency negative", body: batch(event(map[string]any{"latency_ms": -1})), wantCode: 400, wantField: "events[0].latency_ms"},
		{desc: "subject optional", body: batch(event(map[string]any{"subject": nil})), wantCode: 202},
		{desc: "subject too long", body: batch(event(map[string]any{"subject": strings.Repeat("s", 257)})), wantCode: 400, wantField: "events[0].subject"},
		{desc: "pet_id too long", body: batch(event(map[string]any{"pet_id": strings.Repeat("p", 129)})), wantCode: 400, wantField: "events[0].pet_id"},
		{desc: "trace_id malformed", body: batch(event(map[string]any{"trace_id": "xyz"})), wantCode: 400, wantField: "events[0].trace_id"},
		{desc: "upstream wrong type", body: batch(event(map[string]any{"upstream": 3})), wantCode: 400, wantField: "events[0].upstream"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			subject := c.subject
			if subject == "" {
				subject = "edge"
			} else if subject == "-" {
				subject = ""
			}
			w := do(t, h, "POST", "/events", subject, "", c.body)
			if w.Code != c.wantCode {
				t.Fatalf("status = %d, want %d; body %s", w.Code, c.wantCode, w.Body)
			}
			if c.wantCode == 202 {
				return
			}
			if e := decodeError(t, w); e.Error.Field != c.wantField {
				t.Errorf("field = %q, want %q (%s)", e.Error.Field, c.wantField, e.Error.Message)
			}
		})
	}
	t.Run("body over the limit", func(t *testing.T) {
		body := `{"events":[` + strings.Repeat(" ", MaxEventsBody) + `]}`
		if w := do(t, h, "POST", "/events", "edge", "", body); w.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("status = %d, want 413; %s", w.Code, w.Body)
		}
	})
}

func TestQueueFullAnswers503(t *testing.T) {
	cfg := testConfig(t)
	cfg.QueueSize = MaxBatch
	svc := newService(t, cfg, nil) // no writer: nothing drains the queue
	h := svc.Handler()
	evs := make([]map[string]any, 600)
	for i := range evs {
		evs[i] = event(nil)
	}
	if w := do(t, h, "POST", "/events", "edge", "", batch(evs...)); w.Code != 202 {
		t.Fatalf("first batch: %d %s", w.Code, w.Body)
	}
	// 600 + 600 > 1000: the whole second batch is rejected.
	w := do(t, h, "POST", "/events", "edge", "", batch(evs...))
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("second batch: status %d, want 503", w.Code)
	}
	if w.Header().Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if got := testutil.ToFloat64(svc.Server.m.dropped.WithLabelValues(dropQueueFull)); got != 600 {
		t.Errorf("dropped = %v, want 600", got)
	}
	if got := svc.Queue.Len(); got != 600 {
		t.Errorf("queue length = %d, want 600 (all or nothing)", got)
	}
	// A batch that fits is still accepted.
	if w := do(t, h, "POST", "/events", "edge", "", batch(evs[:400]...)); w.Code != 202 {
		t.Errorf("fitting batch: %d %s", w.Code, w.Body)
	}
}

func TestWriterFlushesOnShutdown(t *testing.T) {
	cfg := testConfig(t)
	cfg.FlushInterval = time.Hour // only shutdown flushes
	cfg.BatchSize = 300
	svc := newService(t, cfg, nil)
	h := svc.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunWriter(ctx) })
	evs := make([]map[string]any, 100)
	for i := range evs {
		evs[i] = event(nil)
	}
	for range 2 {
		if w := do(t, h, "POST", "/events", "edge", "", batch(evs...)); w.Code != 202 {
			t.Fatalf("post: %d %s", w.Code, w.Body)
		}
	}
	cancel()
	wg.Wait()
	if n := svc.Queue.Len(); n != 0 {
		t.Errorf("queue holds %d events after shutdown", n)
	}
	w, _ := store.ParseWindow("1h")
	rep, err := svc.Store.Requests(context.Background(), w, store.ByRoute, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Overall.Count != 200 {
		t.Errorf("stored %d events, want 200", rep.Overall.Count)
	}
	if got := testutil.ToFloat64(svc.Server.m.ingested); got != 200 {
		t.Errorf("ingested metric = %v, want 200", got)
	}
}

func TestShutdownDuringFlushLosesNothing(t *testing.T) {
	cfg := testConfig(t)
	cfg.FlushInterval = time.Hour
	cfg.BatchSize = 50
	svc := newService(t, cfg, nil)
	evs := make([]map[string]any, MaxBatch)
	for i := range evs {
		evs[i] = event(nil)
	}
	for range 3 {
		if w := do(t, svc.Handler(), "POST", "/events", "edge", "", batch(evs...)); w.Code != 202 {
			t.Fatalf("post: %d %s", w.Code, w.Body)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunWriter(ctx) })
	// The queue holds 60 batches and the writer was woken: cancel while
	// it is writing them.
	ptestutil.Eventually(t, 10*time.Second, func() error {
		if testutil.ToFloat64(svc.Server.m.ingested) == 0 {
			return errors.New("writer has not started")
		}
		return nil
	})
	cancel()
	wg.Wait()
	if got := testutil.ToFloat64(svc.Server.m.dropped.WithLabelValues(dropStoreError)); got != 0 {
		t.Errorf("dropped %v events on shutdown", got)
	}
	if got := testutil.ToFloat64(svc.Server.m.ingested); got != 3*MaxBatch {
		t.Errorf("ingested %v, want %d", got, 3*MaxBatch)
	}
}

func TestWriterFlushesFullBatchEarly(t *testing.T) {
	cfg := testConfig(t)
	cfg.FlushInterval = time.Hour
	cfg.BatchSize = 50
	svc := newService(t, cfg, nil)
	startWriter(t, svc)
	evs := make([]map[string]any, 60)
	for i := range evs {
		evs[i] = event(nil)
	}
	if w := do(t, svc.Handler(), "POST", "/events", "edge", "", batch(evs...)); w.Code != 202 {
		t.Fatalf("post: %d %s", w.Code, w.Body)
	}
	ptestutil.Eventually(t, 10*time.Second, func() error {
		if got := testutil.ToFloat64(svc.Server.m.ingested); got != 60 {
			return fmt.Errorf("ingested %v of 60", got)
		}
		return nil
	})
}

func TestGetRequests(t *testing.T) {
	clk := &clock{t: testNow}
	svc := newService(t, testConfig(t), clk)
	startWriter(t, svc)
	h := svc.Handler()
	body := batch(
		event(map[string]any{"latency_ms": 10}),
		event(map[string]any{"latency_ms": 20, "status": 502, "subject": "bob", "route": "pets-get"}),
	)
	if w := do(t, h, "POST", "/events", "edge", "", body); w.Code != 202 {
		t.Fatalf("post: %d %s", w.Code, w.Body)
	}
	ptestutil.Eventually(t, 10*time.Second, func() error {
		w := do(t, h, "GET", "/stats/requests?window=1h&by=status", "alice", "viewer", "")
		var rep store.Report
		if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
			return err
		}
		if rep.Overall.Count != 2 {
			return fmt.Errorf("count %d", rep.Overall.Count)
		}
		if rep.Overall.ErrorRatio != 0.5 || len(rep.Groups) != 2 || rep.Groups[0].Key != "200" && rep.Groups[0].Key != "502" {
			return fmt.Errorf("unexpected report %+v", rep)
		}
		return nil
	})
	for _, c := range []struct {
		desc      string
		target    string
		subject   string
		roles     string
		wantCode  int
		wantField string
	}{
		{desc: "defaults", target: "/stats/requests", subject: "alice", wantCode: 200},
		{desc: "24h by route", target: "/stats/requests?window=24h&by=route", subject: "alice", wantCode: 200},
		{desc: "7d", target: "/stats/requests?window=7d", subject: "alice", wantCode: 200},
		{desc: "no identity", target: "/stats/requests", wantCode: 401},
		{desc: "bad window", target: "/stats/requests?window=2h", subject: "alice", wantCode: 400, wantField: "window"},
		{desc: "bad by", target: "/stats/requests?by=path", subject: "alice", wantCode: 400, wantField: "by"},
		{desc: "unknown parameter", target: "/stats/requests?limit=3", subject: "alice", wantCode: 400, wantField: "limit"},
		{desc: "repeated parameter", target: "/stats/requests?window=1h&window=7d", subject: "alice", wantCode: 400, wantField: "window"},
		{desc: "by subject needs admin", target: "/stats/requests?by=subject", subject: "alice", roles: "viewer", wantCode: 403},
		{desc: "by subject as admin", target: "/stats/requests?by=subject", subject: "root", roles: "admin", wantCode: 200},
		{desc: "wrong method", target: "/stats/requests", subject: "alice", wantCode: 405},
		{desc: "unknown path", target: "/nope", subject: "alice", wantCode: 404},
	} {
		t.Run(c.desc, func(t *testing.T) {
			method := "GET"
			if c.wantCode == 405 {
				method = "DELETE"
			}
			w := do(t, h, method, c.target, c.subject, c.roles, "")
			if w.Code != c.wantCode {
				t.Fatalf("status = %d, want %d: %s", w.Code, c.wantCode, w.Body)
			}
			if !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
				t.Errorf("content type %q", w.Header().Get("Content-Type"))
			}
			if c.wantField != "" {
				if e := decodeError(t, w); e.Error.Field != c.wantField {
					t.Errorf("field = %q, want %q", e.Error.Field, c.wantField)
				}
			}
		})
	}
}

func TestRetentionLoop(t *testing.T) {
	clk := &clock{t: testNow}
	cfg := testConfig(t)
	cfg.Retention = 2 * time.Hour
	cfg.RetentionInterval = 10 * time.Millisecond
	svc := newService(t, cfg, clk)
	ctx := context.Background()
	old := store.Event{Time: testNow.Add(-90 * time.Minute), Route: "r", Method: "GET", Path: "/", Status: 200, LatencyMS: 1}
	if err := svc.Store.Write(ctx, []store.Event{old}); err != nil {
		t.Fatal(err)
	}
	w, _ := store.ParseWindow("24h")
	count := func() int64 {
		rep, err := svc.Store.Requests(ctx, w, store.ByRoute, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return rep.Overall.Count
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { svc.RunRetention(rctx) })
	defer func() { cancel(); wg.Wait() }()
	if got := count(); got != 1 {
		t.Fatalf("before expiry count = %d, want 1", got)
	}
	clk.Add(time.Hour) // the event is now 2h30m old: past the 2h retention
	ptestutil.Eventually(t, 10*time.Second, func() error {
		if got := count(); got != 0 {
			return fmt.Errorf("count = %d, want 0", got)
		}
		return nil
	})
	if got := testutil.ToFloat64(svc.Server.m.pruned); got < 2 {
		t.Errorf("pruned metric = %v, want >= 2", got)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []struct {
		desc string
		env  map[string]string
		args []string
		want string // substring of the error; "" for success
	}{
		{desc: "defaults", want: ""},
		{desc: "env wins over default", env: map[string]string{"STATS_QUEUE_SIZE": "5000"}, want: ""},
		{desc: "retention too short", args: []string{"-retention", "30m"}, want: "-retention"},
		{desc: "bad retention env", env: map[string]string{"STATS_RETENTION": "week"}, want: "STATS_RETENTION"},
		{desc: "pets url", env: map[string]string{"STATS_PETS_URL": "ftp://x"}, want: "-pets-url"},
		{desc: "queue smaller than a batch", args: []string{"-queue-size", "10"}, want: "-queue-size"},
		{desc: "db path with query", args: []string{"-db", "x.db?mode=ro"}, want: "-db"},
		{desc: "log level", args: []string{"-log-level", "loud"}, want: "-log-level"},
		{desc: "flush interval", args: []string{"-flush-interval", "0s"}, want: "-flush-interval"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			var out bytes.Buffer
			cfg, err := ParseConfig(c.args, func(k string) string { return c.env[k] }, &out)
			if c.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if cfg.Addr != "127.0.0.1:7003" || cfg.AdminAddr != "127.0.0.1:7103" {
					t.Errorf("default addresses %q %q", cfg.Addr, cfg.AdminAddr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one naming %s", err, c.want)
			}
		})
	}
}

func TestOpenAPIServed(t *testing.T) {
	svc := newService(t, testConfig(t), nil)
	w := do(t, svc.Handler(), "GET", "/openapi.json", "", "", "")
	if w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	var doc struct {
		OpenAPI string                     `json:"openapi"`
		Paths   map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q", doc.OpenAPI)
	}
	for _, p := range []string{"/events", "/stats/requests", "/stats/pets", "/health"} {
		if _, ok := doc.Paths[p]; !ok {
			t.Errorf("path %s not documented", p)
		}
	}
}
