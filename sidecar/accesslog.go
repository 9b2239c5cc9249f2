package sidecar

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// maxAccessWrite bounds one write of batched access log lines: PIPE_BUF,
// so that a batch is never interleaved with another writer's line on a
// pipe (the process's other log lines go to the same stderr).
const maxAccessWrite = 4096

// accessLog writes one JSON line per finished request (msg "access") from
// its own goroutine, so a slow log reader never stalls the hot path: entries
// go through a bounded queue and are dropped (and counted) when it is full.
// Lines are formatted into a buffer and written in batches of whole lines
// (up to maxAccessWrite bytes, flushed as soon as the queue is empty), so a
// busy sidecar makes one write system call per batch, not one per request.
// Entries never hold credentials (dataplane.AccessEntry has no token field).
type accessLog struct {
	out     io.Writer
	buf     bytes.Buffer // formatted lines not written yet; only run touches it
	log     *slog.Logger // formats into buf
	errLog  *slog.Logger // reports write errors
	failing bool
	q       chan dataplane.AccessEntry
	dropped prometheus.Counter
}

// newAccessLog returns an access log writing to out in the format of
// telemetry.NewLogger with attrs (e.g. service and instance) on every line,
// at level (nothing is written when it is above info); errLog receives
// write errors.
func newAccessLog(out io.Writer, level slog.Level, attrs []any, errLog *slog.Logger, size int, reg prometheus.Registerer) (*accessLog, error) {
	a := &accessLog{
		out:    out,
		errLog: errLog,
		q:      make(chan dataplane.AccessEntry, size),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_sidecar_access_log_dropped_total",
			Help: "Access log entries dropped because the log queue was full.",
		}),
	}
	a.log = telemetry.NewLogger(&a.buf, level).With(attrs...)
	if err := reg.Register(a.dropped); err != nil {
		return nil, err
	}
	return a, nil
}

// record implements dataplane.AccessLogFunc; it never blocks.
func (a *accessLog) record(_ context.Context, e *dataplane.AccessEntry) {
	select {
	case a.q <- *e:
	default:
		a.dropped.Inc()
	}
}

// run writes queued entries until ctx is done, then flushes what is queued.
func (a *accessLog) run(ctx context.Context) {
	for {
		select {
		case e := <-a.q:
			a.write(&e)
			a.drain()
		case <-ctx.Done():
			a.drain()
			return
		}
	}
}

// drain formats every queued entry and writes the buffer out.
func (a *accessLog) drain() {
	for {
		select {
		case e := <-a.q:
			a.write(&e)
		default:
			a.flush(a.buf.Len())
			return
		}
	}
}

// flush writes the first n buffered bytes (whole lines).
func (a *accessLog) flush(n int) {
	if n == 0 {
		return
	}
	_, err := a.out.Write(a.buf.Next(n))
	if a.buf.Len() == 0 {
		a.buf.Reset()
	}
	switch {
	case err != nil && !a.failing:
		a.failing = true
		a.errLog.Warn("access log write failed", "error", err)
	case err == nil:
		a.failing = false
	}
}

func (a *accessLog) write(e *dataplane.AccessEntry) {
	before := a.buf.Len()
	attrs := [16]slog.Attr{
		slog.String("listener", e.Listener),
		slog.String("method", e.Method),
		slog.String("path", e.Path),
		slog.String("host", e.Host),
		slog.Int("status", e.Status),
		slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000),
		slog.Int64("bytes", e.BytesSent),
		slog.String("route", e.Route),
		slog.String("cluster", e.Cluster),
		slog.String("client_ip", e.ClientIP),
	}
	n := 10
	add := func(a slog.Attr) { attrs[n] = a; n++ }
	if e.Upstream != "" {
		add(slog.String("upstream", e.Upstream))
	}
	if e.Retries > 0 {
		add(slog.Int("retries", e.Retries))
	}
	if e.Subject != "" {
		add(slog.String("subject", e.Subject))
	}
	if e.TraceID != "" {
		add(slog.String("trace_id", e.TraceID))
	}
	if e.RequestID != "" {
		add(slog.String("request_id", e.RequestID))
	}
	if e.UpstreamError != "" {
		add(slog.String("upstream_error", e.UpstreamError))
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs[:n]...)
	if a.buf.Len() > maxAccessWrite && before > 0 {
		a.flush(before) // the lines before this one; this one starts the next batch
	}
}

// lockedWriter serializes writes of the process's loggers and the access
// log to one writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
