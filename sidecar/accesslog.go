package sidecar

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/dataplane"
)

// accessLog writes one JSON line per finished request (msg "access") from
// its own goroutine, so a slow log reader never stalls the hot path: entries
// go through a bounded queue and are dropped (and counted) when it is full.
// Entries never hold credentials (dataplane.AccessEntry has no token field).
type accessLog struct {
	log     *slog.Logger
	q       chan dataplane.AccessEntry
	dropped prometheus.Counter
}

func newAccessLog(log *slog.Logger, size int, reg prometheus.Registerer) (*accessLog, error) {
	a := &accessLog{
		log: log,
		q:   make(chan dataplane.AccessEntry, size),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_sidecar_access_log_dropped_total",
			Help: "Access log entries dropped because the log queue was full.",
		}),
	}
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
		case <-ctx.Done():
			for {
				select {
				case e := <-a.q:
					a.write(&e)
				default:
					return
				}
			}
		}
	}
}

func (a *accessLog) write(e *dataplane.AccessEntry) {
	attrs := []slog.Attr{
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
	if e.Upstream != "" {
		attrs = append(attrs, slog.String("upstream", e.Upstream))
	}
	if e.Retries > 0 {
		attrs = append(attrs, slog.Int("retries", e.Retries))
	}
	if e.Subject != "" {
		attrs = append(attrs, slog.String("subject", e.Subject))
	}
	if e.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", e.TraceID))
	}
	if e.RequestID != "" {
		attrs = append(attrs, slog.String("request_id", e.RequestID))
	}
	if e.UpstreamError != "" {
		attrs = append(attrs, slog.String("upstream_error", e.UpstreamError))
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}
