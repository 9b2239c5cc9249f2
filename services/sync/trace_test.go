package syncsvc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/services/sync/petfinder"
)

// ctxSource is an AnimalSource that serves one empty page and records the
// span context its calls are made in.
type ctxSource struct {
	mu  sync.Mutex
	scs []trace.SpanContext
}

func (s *ctxSource) Each(ctx context.Context, _ petfinder.Query, fn func(context.Context, *petfinder.Page) error) error {
	s.mu.Lock()
	s.scs = append(s.scs, trace.SpanContextFromContext(ctx))
	s.mu.Unlock()
	return fn(ctx, &petfinder.Page{})
}

func (s *ctxSource) last() trace.SpanContext {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.scs) == 0 {
		return trace.SpanContext{}
	}
	return s.scs[len(s.scs)-1]
}

// TestRunJoinsTheCallersTrace: a run asked for by a request is a "sync
// run" span that is a child of the request's span, so the run's calls and
// log lines are in the request's trace; a scheduled run is a trace of its
// own.
func TestRunJoinsTheCallersTrace(t *testing.T) {
	ctx := testutil.Context(t)
	st, err := OpenStore(ctx, filepath.Join(t.TempDir(), "sync.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	var logs bytes.Buffer
	var logMu sync.Mutex
	src := &ctxSource{}
	s := NewSyncer(Options{Store: st, Locker: &FileLocker{Path: filepath.Join(t.TempDir(), "lock")}, Source: src,
		Logger: telemetry.NewLogger(lockedWriter{&logs, &logMu}, slog.LevelInfo), Tracer: tp.Tracer("test")})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	defer func() { stop(); <-done }()

	finished := func(id string) func() error {
		return func() error {
			r, err := st.Get(ctx, id)
			if err != nil {
				return err
			}
			if r.Status != StatusSucceeded {
				return fmt.Errorf("run %s: %s", id, r.Status)
			}
			for _, sp := range rec.Ended() {
				if sp.Name() == "sync run" && attr(sp, "petmesh.sync.run_id") == id {
					return nil
				}
			}
			return fmt.Errorf("no ended sync run span for %s", id)
		}
	}
	runSpan := func(id string) sdktrace.ReadOnlySpan {
		for _, sp := range rec.Ended() {
			if sp.Name() == "sync run" && attr(sp, "petmesh.sync.run_id") == id {
				return sp
			}
		}
		t.Fatalf("no sync run span for %s", id)
		return nil
	}

	// Asked for by a request.
	reqCtx, reqSpan := tp.Tracer("test").Start(ctx, "POST /sync/runs", trace.WithSpanKind(trace.SpanKindServer))
	run, err := s.Trigger(reqCtx, TriggerManual, false)
	reqSpan.End() // the request ends before the run does
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, finished(run.ID))
	sp := runSpan(run.ID)
	want := reqSpan.SpanContext()
	if sp.SpanContext().TraceID() != want.TraceID() || sp.Parent().SpanID() != want.SpanID() {
		t.Errorf("sync run span: trace %s parent %s, want trace %s parent %s",
			sp.SpanContext().TraceID(), sp.Parent().SpanID(), want.TraceID(), want.SpanID())
	}
	if got := src.last(); got.SpanID() != sp.SpanContext().SpanID() {
		t.Errorf("the Petfinder calls ran in span %s, want the sync run span %s", got.SpanID(), sp.SpanContext().SpanID())
	}
	if got := attr(sp, "petmesh.sync.status"); got != StatusSucceeded {
		t.Errorf("span status attribute %q", got)
	}
	logMu.Lock()
	lines := logs.String()
	logMu.Unlock()
	for _, msg := range []string{"sync run started", "sync run finished"} {
		if !logLineHasTrace(lines, msg, run.ID, want.TraceID().String()) {
			t.Errorf("no %q log line for %s with trace_id %s:\n%s", msg, run.ID, want.TraceID(), lines)
		}
	}

	// Scheduled: no caller span, the run is a root.
	run2, err := s.Trigger(ctx, TriggerSchedule, false)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, finished(run2.ID))
	if sp := runSpan(run2.ID); sp.Parent().IsValid() || sp.SpanContext().TraceID() == want.TraceID() {
		t.Errorf("scheduled run span has parent %v in trace %s", sp.Parent().SpanID(), sp.SpanContext().TraceID())
	}
}

func attr(sp sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range sp.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.String()
		}
	}
	return ""
}

// logLineHasTrace reports whether a JSON log line with msg and run id
// carries traceID.
func logLineHasTrace(lines, msg, run, traceID string) bool {
	for _, l := range strings.Split(lines, "\n") {
		var rec struct {
			Msg     string `json:"msg"`
			Run     string `json:"run"`
			TraceID string `json:"trace_id"`
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == msg && rec.Run == run && rec.TraceID == traceID {
			return true
		}
	}
	return false
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
