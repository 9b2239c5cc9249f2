package httpx

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/petmesh/petmesh/internal/telemetry"
)

type payload struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func TestDecodeJSON(t *testing.T) {
	tests := []struct {
		desc   string
		body   string
		ctype  string
		max    int64
		status int
		field  string
	}{
		{desc: "ok", body: `{"name":"a","count":1}`, status: 0},
		{desc: "unknown field", body: `{"name":"a","colour":1}`, status: 400, field: "colour"},
		{desc: "wrong type", body: `{"count":"x"}`, status: 400, field: "count"},
		{desc: "empty", body: ``, status: 400, field: "body"},
		{desc: "truncated", body: `{"name":`, status: 400, field: "body"},
		{desc: "syntax", body: `{"name" 1}`, status: 400, field: "body"},
		{desc: "trailing data", body: `{"name":"a"} {}`, status: 400, field: "body"},
		{desc: "too large", body: `{"name":"` + strings.Repeat("x", 100) + `"}`, max: 50, status: 413, field: "body"},
		{desc: "wrong content type", body: `{}`, ctype: "text/plain", status: 415, field: "Content-Type"},
		{desc: "json suffix type", body: `{}`, ctype: "application/merge-patch+json", status: 0},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
			if tc.ctype != "" {
				r.Header.Set("Content-Type", tc.ctype)
			}
			var p payload
			err := DecodeJSON(httptest.NewRecorder(), r, &p, tc.max)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want *Error, got %v", err)
			}
			if e.Status != tc.status || e.Field != tc.field {
				t.Fatalf("got status %d field %q (%v), want %d %q", e.Status, e.Field, e, tc.status, tc.field)
			}
		})
	}
}

func TestWriteErrorShape(t *testing.T) {
	tests := []struct {
		desc   string
		err    error
		status int
		code   string
	}{
		{desc: "typed", err: BadRequest("limit", "want 1..100"), status: 400, code: CodeInvalidArgument},
		{desc: "wrapped typed", err: errors.Join(errors.New("ctx"), NotFound("no pet")), status: 404, code: CodeNotFound},
		{desc: "untyped hides cause", err: errors.New("db password is hunter2"), status: 500, code: CodeInternal},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			rec := httptest.NewRecorder()
			WriteError(rec, tc.err)
			var body struct {
				Error struct{ Code, Message, Field string } `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if rec.Code != tc.status || body.Error.Code != tc.code {
				t.Fatalf("got %d %+v", rec.Code, body)
			}
			if strings.Contains(rec.Body.String(), "hunter2") {
				t.Fatal("internal error leaked its cause")
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	var seen string
	h := RequestID(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		seen = telemetry.RequestID(r.Context())
	}))
	tests := []struct {
		desc     string
		incoming string
		keep     bool
	}{
		{desc: "kept", incoming: "abc-123", keep: true},
		{desc: "generated when missing", incoming: "", keep: false},
		{desc: "replaced when unsafe", incoming: "bad\nid", keep: false},
		{desc: "replaced when huge", incoming: strings.Repeat("a", 200), keep: false},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.incoming != "" {
				r.Header[HeaderRequestID] = []string{tc.incoming}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			got := rec.Header().Get(HeaderRequestID)
			if got == "" || got != seen {
				t.Fatalf("response id %q, context id %q", got, seen)
			}
			if tc.keep != (got == tc.incoming) {
				t.Fatalf("incoming %q, got %q, keep=%v", tc.incoming, got, tc.keep)
			}
		})
	}
}

func TestNewRequestIDIsUniqueHex(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := NewRequestID()
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("id %q: want 32 lowercase hex digits", id)
		}
		if seen[id] {
			t.Fatalf("id %q generated twice", id)
		}
		seen[id] = true
	}
}

func TestRecoverWritesJSON500(t *testing.T) {
	var logs bytes.Buffer
	h := Recover(slog.New(slog.NewJSONHandler(&logs, nil)))(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != 500 || !strings.Contains(rec.Body.String(), `"code":"internal"`) {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "boom") {
		t.Fatal("panic not logged")
	}
}

func TestMaxBodyRejectsDeclaredLength(t *testing.T) {
	h := MaxBody(10)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		if err != nil {
			WriteError(w, tooLarge(10))
			return
		}
		w.WriteHeader(204)
	}))
	for _, n := range []int{5, 11} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader(strings.Repeat("x", n))))
		want := 204
		if n > 10 {
			want = 413
		}
		if rec.Code != want {
			t.Fatalf("body %d: got %d want %d", n, rec.Code, want)
		}
	}
}

// TestGracefulDrain starts a real server, holds a request in flight,
// cancels the server's context, and checks that the request completes
// while new connections are refused.
func TestGracefulDrain(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		w.WriteHeader(http.StatusNoContent)
	})
	srv, err := Listen(ServerConfig{Addr: "127.0.0.1:0", ShutdownTimeout: 10 * time.Second}, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()

	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	var status int
	var reqErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp, err := client.Get(srv.URL())
		if err != nil {
			reqErr = err
			return
		}
		resp.Body.Close()
		status = resp.StatusCode
	}()
	<-entered
	cancel()
	// The listener closes promptly; the in-flight request is not cut.
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := client.Get(srv.URL())
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("server still accepting after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	if reqErr != nil || status != http.StatusNoContent {
		t.Fatalf("in-flight request: status %d err %v", status, reqErr)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestAdminMux(t *testing.T) {
	var ready Readiness
	mux := AdminMux(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "m 1\n") }), &ready)
	get := func(path string) int {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/healthz") != 200 || get("/metrics") != 200 {
		t.Fatal("healthz/metrics")
	}
	if get("/readyz") != 503 {
		t.Fatal("readyz before ready")
	}
	ready.SetReady(true)
	if get("/readyz") != 200 {
		t.Fatal("readyz after ready")
	}
	ready.SetCheck(func(context.Context) error { return errors.New("db down") })
	if get("/readyz") != 503 {
		t.Fatal("readyz with failing check")
	}
}

func TestStandardNamesSpansAfterRoute(t *testing.T) {
	tel := telemetry.NewTest(io.Discard)
	rec := tracetest.NewSpanRecorder()
	tel.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pets/{id}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) })
	h := Standard(tel, "test", 1<<10)(mux)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/pets/42", nil))
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("want 1 span, got %d", len(spans))
	}
	if got := spans[0].Name(); got != "GET /pets/{id}" {
		t.Fatalf("span name %q", got)
	}
}
