// Package statsink ships access events to the stats service
// (POST /events, see services/stats/README.md) asynchronously: Send puts an
// event in a bounded queue and never blocks; Run drains the queue in batches.
// What cannot be queued or delivered is counted, never retried forever.
//
// Run wakes every FlushInterval, or as soon as a batch is full, never once
// per event: at a steady rate a wake-up per event costs the sender (the
// edge) a futex wake and a scheduler round trip per request.
package statsink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/petmesh/petmesh/internal/batchq"
	"github.com/petmesh/petmesh/internal/identity"
)

// Event is one finished request, in the stats wire format.
type Event struct {
	Time      time.Time `json:"time"`
	Route     string    `json:"route"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Status    int       `json:"status"`
	LatencyMS float64   `json:"latency_ms"`
	Subject   string    `json:"subject,omitempty"`
	PetID     string    `json:"pet_id,omitempty"`
	TraceID   string    `json:"trace_id,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
}

// Defaults.
const (
	DefaultQueueSize     = 10000
	DefaultBatchSize     = 500
	MaxBatchSize         = 1000 // stats refuses larger batches
	DefaultFlushInterval = time.Second
	DefaultTimeout       = 5 * time.Second
	// UnmatchedRoute names events of requests no route matched (stats
	// requires a route).
	UnmatchedRoute = "unmatched"
)

// Config configures a Sink.
type Config struct {
	// URL is the base URL of stats; batches go to URL + "/events".
	URL string
	// QueueSize bounds the events waiting to be sent; BatchSize bounds one
	// POST (at most 1000); FlushInterval is the longest an event waits.
	QueueSize     int
	BatchSize     int
	FlushInterval time.Duration
	// Timeout bounds one POST.
	Timeout time.Duration
	// Token returns the bearer token sent with every batch (the caller
	// caches and renews it); nil sends none.
	Token func() (string, error)
	// Identity, when set, is also sent as X-Petmesh-Subject/-Roles: only for
	// direct calls to stats (no sidecar in front of it to verify the token).
	Identity *identity.Identity
	// Client posts the batches; a dedicated client with Timeout when nil.
	Client *http.Client
	// Namespace names the metrics: petmesh_<Namespace>_events_* (e.g. "edge").
	Namespace  string
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Sink is the bounded, non-blocking event shipper. Send is safe for
// concurrent use; Run must be called once.
type Sink struct {
	cfg      Config
	endpoint string
	log      *slog.Logger

	q *batchq.Queue[Event] // at most cfg.QueueSize; Run is woken per batch

	dropped     *prometheus.CounterVec
	sent        prometheus.Counter
	batchErrors prometheus.Counter
}

// New validates cfg and returns a Sink; metrics are registered on
// cfg.Registerer.
func New(cfg Config) (*Sink, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("statsink: url %q: want an http(s) base URL", cfg.URL)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case cfg.QueueSize < 1:
		return nil, fmt.Errorf("statsink: queue size %d: must be positive", cfg.QueueSize)
	case cfg.BatchSize < 1 || cfg.BatchSize > MaxBatchSize:
		return nil, fmt.Errorf("statsink: batch size %d: must be 1..%d", cfg.BatchSize, MaxBatchSize)
	case cfg.FlushInterval < 0 || cfg.Timeout < 0:
		return nil, errors.New("statsink: durations must be positive")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "edge"
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{
			Proxy: nil, MaxIdleConnsPerHost: 2, IdleConnTimeout: 90 * time.Second,
			ResponseHeaderTimeout: cfg.Timeout,
		}}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		cfg:      cfg,
		endpoint: strings.TrimSuffix(cfg.URL, "/") + "/events",
		q:        batchq.New[Event](cfg.QueueSize, cfg.BatchSize),
		log:      log,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petmesh_" + cfg.Namespace + "_events_dropped_total",
			Help: "Access events not delivered to stats, by reason (queue_full, send_failed, rejected, shutdown).",
		}, []string{"reason"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_" + cfg.Namespace + "_events_sent_total",
			Help: "Access events accepted by stats.",
		}),
		batchErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petmesh_" + cfg.Namespace + "_events_batch_errors_total",
			Help: "Batches stats did not accept (network error or non-2xx).",
		}),
	}
	for _, r := range []string{"queue_full", "send_failed", "rejected", "shutdown"} {
		s.dropped.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.dropped, s.sent, s.batchErrors} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("statsink: %w", err)
			}
		}
	}
	return s, nil
}

// Send queues e and returns at once; when the queue is full the event is
// dropped and counted. It never blocks.
func (s *Sink) Send(e Event) bool {
	if !s.q.Add(e) {
		s.dropped.WithLabelValues("queue_full").Inc()
		return false
	}
	return true
}

// Counters returns events sent, dropped (all reasons) and failed batches.
func (s *Sink) Counters() (sent, dropped, batchErrors float64) {
	return counterValue(s.sent), sumVec(s.dropped), counterValue(s.batchErrors)
}

// Run sends batches until ctx is done, then sends what is still queued
// (bounded by one Timeout per batch, at most a few seconds overall) and
// returns.
func (s *Sink) Run(ctx context.Context) error {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("statsink: panic", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	var buf bytes.Buffer
	for {
		select {
		case <-s.q.Ready():
		case <-t.C:
		case <-ctx.Done():
			s.finish(ctx, &buf, nil)
			return nil
		}
		events := s.q.Take()
		if left := s.send(ctx, &buf, events); left > 0 { // ctx ended meanwhile
			s.finish(ctx, &buf, events[len(events)-left:])
			return nil
		}
		s.q.Give(events)
	}
}

// finish sends carried and what is still queued with a deadline of its
// own (ctx is done), and counts what it could not send.
func (s *Sink) finish(ctx context.Context, buf *bytes.Buffer, carried []Event) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.Timeout)
	defer cancel()
	events := append(slices.Clone(carried), s.q.Take()...)
	if left := s.send(fctx, buf, events); left > 0 {
		s.dropped.WithLabelValues("shutdown").Add(float64(left))
	}
}

// send posts events in batches until ctx is done and returns how many
// were left unsent.
func (s *Sink) send(ctx context.Context, buf *bytes.Buffer, events []Event) (left int) {
	for i := 0; i < len(events); i += s.cfg.BatchSize {
		if ctx.Err() != nil {
			return len(events) - i
		}
		s.post(ctx, buf, events[i:min(i+s.cfg.BatchSize, len(events))])
	}
	return 0
}

// post sends one batch; one retry after a short pause on a network error or
// a 503 (stats' queue is full).
func (s *Sink) post(ctx context.Context, buf *bytes.Buffer, batch []Event) {
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(struct {
		Events []Event `json:"events"`
	}{batch}); err != nil {
		s.dropped.WithLabelValues("rejected").Add(float64(len(batch)))
		return
	}
	body := buf.Bytes()
	var status int
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		status, err = s.do(ctx, body)
		if err == nil && status/100 == 2 {
			s.sent.Add(float64(len(batch)))
			return
		}
		if err == nil && status != http.StatusServiceUnavailable {
			break // 4xx: the batch will not get better
		}
		if ctx.Err() != nil {
			break
		}
	}
	s.batchErrors.Inc()
	reason := "send_failed"
	if err == nil && status/100 == 4 {
		reason = "rejected"
	}
	s.dropped.WithLabelValues(reason).Add(float64(len(batch)))
	s.log.Warn("statsink: batch not delivered", "events", len(batch), "status", status, "err", err)
}

func (s *Sink) do(ctx context.Context, body []byte) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if s.cfg.Token != nil {
		tok, err := s.cfg.Token()
		if err != nil {
			return 0, fmt.Errorf("token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if s.cfg.Identity != nil {
		identity.SetHeaders(req.Header, *s.cfg.Identity)
	}
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// Sanitize makes e acceptable to stats (whose validation rejects a whole
// batch for one bad event): a route for unmatched requests, an upper-case
// method of at most 16 bytes, a path starting with "/" of at most 2048
// bytes, a status in 100..599, bounded subject and upstream, and a trace id
// only when it is 32 lower-case hex digits.
func Sanitize(e *Event) {
	if e.Route == "" {
		e.Route = UnmatchedRoute
	}
	e.Route = truncate(e.Route, 128)
	e.Method = truncate(strings.ToUpper(e.Method), 16)
	if e.Method == "" {
		e.Method = "GET"
	}
	if !strings.HasPrefix(e.Path, "/") {
		e.Path = "/" + e.Path
	}
	e.Path = truncate(e.Path, 2048)
	if e.Status < 100 || e.Status > 599 {
		e.Status = 500
	}
	if e.LatencyMS < 0 {
		e.LatencyMS = 0
	}
	e.Subject = truncate(e.Subject, 256)
	e.Upstream = truncate(e.Upstream, 128)
	e.PetID = truncate(e.PetID, 128)
	if !isTraceID(e.TraceID) {
		e.TraceID = ""
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut at a rune boundary so the JSON stays valid UTF-8.
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

func isTraceID(s string) bool {
	if len(s) != 32 || s == "00000000000000000000000000000000" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func sumVec(v *prometheus.CounterVec) float64 {
	ch := make(chan prometheus.Metric, 8)
	go func() { v.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		var d dto.Metric
		_ = m.Write(&d)
		sum += d.GetCounter().GetValue()
	}
	return sum
}
