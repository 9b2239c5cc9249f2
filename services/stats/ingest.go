package stats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/services/stats/store"
)

// Ingestion limits.
const (
	// MaxBatch is the most events one POST /events may carry.
	MaxBatch = 1000
	// MaxEventsBody bounds the POST /events body (1000 events with long
	// paths fit).
	MaxEventsBody = 4 << 20
	// maxFutureSkew is how far in the future an event time may lie.
	maxFutureSkew = 5 * time.Minute
)

// wireEvent is one event as posted. Required numbers are pointers so that
// a missing value is told apart from zero.
type wireEvent struct {
	Time      string   `json:"time"`
	Route     string   `json:"route"`
	Method    string   `json:"method"`
	Path      string   `json:"path"`
	Status    *int     `json:"status"`
	LatencyMS *float64 `json:"latency_ms"`
	Subject   string   `json:"subject"`
	PetID     string   `json:"pet_id"`
	TraceID   string   `json:"trace_id"`
	Upstream  string   `json:"upstream"`
}

type eventsRequest struct {
	Events []wireEvent `json:"events"`
}

// decodeEvents reads and validates a POST /events body. Every client error
// is an *httpx.Error naming the field, e.g. "events[3].status".
func decodeEvents(w http.ResponseWriter, r *http.Request, now time.Time, retention time.Duration) ([]store.Event, error) {
	var raw json.RawMessage
	if err := httpx.DecodeJSON(w, r, &raw, MaxEventsBody); err != nil {
		return nil, err
	}
	var req eventsRequest
	if err := strictUnmarshal(raw, &req); err != nil {
		return nil, locateDecodeError(raw, err)
	}
	switch {
	case req.Events == nil:
		return nil, httpx.BadRequest("events", "required")
	case len(req.Events) == 0:
		return nil, httpx.BadRequest("events", "must hold at least one event")
	case len(req.Events) > MaxBatch:
		return nil, httpx.BadRequest("events", "holds %d events; at most %d per batch", len(req.Events), MaxBatch)
	}
	out := make([]store.Event, len(req.Events))
	for i := range req.Events {
		e, err := validateEvent(&req.Events[i], now, retention)
		if err != nil {
			err.Field = fmt.Sprintf("events[%d].%s", i, err.Field)
			return nil, err
		}
		out[i] = e
	}
	return out, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// locateDecodeError re-decodes the body element by element to name the
// event that failed (the standard decoder does not report array indexes).
func locateDecodeError(raw []byte, err error) error {
	var outer struct {
		Events []json.RawMessage `json:"events"`
	}
	if oerr := strictUnmarshal(raw, &outer); oerr != nil {
		return fieldError("", oerr)
	}
	for i, el := range outer.Events {
		var we wireEvent
		if eerr := strictUnmarshal(el, &we); eerr != nil {
			return fieldError(fmt.Sprintf("events[%d].", i), eerr)
		}
	}
	return fieldError("", err)
}

func fieldError(prefix string, err error) *httpx.Error {
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = strings.TrimSuffix(prefix, ".")
			if field == "" {
				field = "body"
			}
		} else {
			field = prefix + field
		}
		return httpx.BadRequest(field, "want %s, got JSON %s", te.Type, te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return httpx.BadRequest(prefix+name, "unknown field")
	default:
		return httpx.BadRequest("body", "invalid JSON: %v", err)
	}
}

// validateEvent checks one event; the returned error's Field is relative
// to the event.
func validateEvent(we *wireEvent, now time.Time, retention time.Duration) (store.Event, *httpx.Error) {
	if we.Time == "" {
		return store.Event{}, httpx.BadRequest("time", "required (RFC 3339)")
	}
	t, err := time.Parse(time.RFC3339Nano, we.Time)
	if err != nil {
		return store.Event{}, httpx.BadRequest("time", "want an RFC 3339 time, got %q", we.Time)
	}
	if t.After(now.Add(maxFutureSkew)) {
		return store.Event{}, httpx.BadRequest("time", "%s is more than %v in the future", we.Time, maxFutureSkew)
	}
	if t.Before(now.Add(-retention)) {
		return store.Event{}, httpx.BadRequest("time", "%s is older than the retention of %v", we.Time, retention)
	}
	if err := checkText("route", we.Route, true, 128); err != nil {
		return store.Event{}, err
	}
	if err := checkMethod(we.Method); err != nil {
		return store.Event{}, err
	}
	if err := checkText("path", we.Path, true, 2048); err != nil {
		return store.Event{}, err
	}
	if !strings.HasPrefix(we.Path, "/") {
		return store.Event{}, httpx.BadRequest("path", "must start with /")
	}
	if we.Status == nil {
		return store.Event{}, httpx.BadRequest("status", "required")
	}
	if *we.Status < 100 || *we.Status > 599 {
		return store.Event{}, httpx.BadRequest("status", "want an HTTP status 100..599, got %d", *we.Status)
	}
	if we.LatencyMS == nil {
		return store.Event{}, httpx.BadRequest("latency_ms", "required")
	}
	if l := *we.LatencyMS; l < 0 || math.IsNaN(l) || math.IsInf(l, 0) {
		return store.Event{}, httpx.BadRequest("latency_ms", "want a non-negative number of milliseconds, got %v", l)
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"subject", we.Subject, 256}, {"pet_id", we.PetID, 128}, {"upstream", we.Upstream, 128}} {
		if err := checkText(f.name, f.v, false, f.max); err != nil {
			return store.Event{}, err
		}
	}
	if we.TraceID != "" && !isTraceID(we.TraceID) {
		return store.Event{}, httpx.BadRequest("trace_id", "want 32 lowercase hex digits (W3C trace id)")
	}
	return store.Event{
		Time: t.UTC(), Route: we.Route, Method: we.Method, Path: we.Path, Status: *we.Status,
		LatencyMS: *we.LatencyMS, Subject: we.Subject, PetID: we.PetID, TraceID: we.TraceID, Upstream: we.Upstream,
	}, nil
}

func checkText(field, v string, required bool, max int) *httpx.Error {
	if v == "" {
		if required {
			return httpx.BadRequest(field, "required")
		}
		return nil
	}
	if len(v) > max {
		return httpx.BadRequest(field, "longer than %d bytes", max)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return httpx.BadRequest(field, "holds a control character")
		}
	}
	return nil
}

func checkMethod(m string) *httpx.Error {
	if m == "" {
		return httpx.BadRequest("method", "required")
	}
	if len(m) > 16 {
		return httpx.BadRequest("method", "longer than 16 bytes")
	}
	for i := 0; i < len(m); i++ {
		if m[i] < 'A' || m[i] > 'Z' {
			return httpx.BadRequest("method", "want an upper-case HTTP method such as GET, got %q", m)
		}
	}
	return nil
}

func isTraceID(s string) bool {
	if len(s) != 32 {
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

// Queue is the bounded in-memory buffer between POST /events and the
// writer. It is safe for concurrent use; TryPush never blocks.
type Queue struct {
	mu       sync.Mutex
	buf      []store.Event
	inFlight int // taken by the writer, not yet written
	max      int
	batch    int
	wake     chan struct{}
}

// NewQueue returns a queue holding at most max events (pending plus being
// written). The writer is woken early once batch events are pending.
func NewQueue(max, batch int) *Queue {
	return &Queue{max: max, batch: batch, wake: make(chan struct{}, 1)}
}

// TryPush enqueues all of evs, or none of them when they do not fit, and
// reports which. It never blocks.
func (q *Queue) TryPush(evs []store.Event) bool {
	q.mu.Lock()
	if len(q.buf)+q.inFlight+len(evs) > q.max {
		q.mu.Unlock()
		return false
	}
	q.buf = append(q.buf, evs...)
	full := len(q.buf) >= q.batch
	q.mu.Unlock()
	if full {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// Len is the number of events pending or being written.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buf) + q.inFlight
}

// take removes and returns every pending event; done must be called with
// their number once they are written (or given up).
func (q *Queue) take() []store.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs := q.buf
	q.buf = nil
	q.inFlight += len(evs)
	return evs
}

func (q *Queue) done(n int) {
	q.mu.Lock()
	q.inFlight -= n
	q.mu.Unlock()
}

// Writer drains a Queue into the store in batches.
type Writer struct {
	q        *Queue
	st       *store.Store
	interval time.Duration
	batch    int
	m        *metrics
	logger   *slog.Logger
}

// writeTimeout bounds one batch write.
const writeTimeout = 30 * time.Second

// Run flushes the queue every interval, or earlier once a batch is
// pending, until ctx is done; then it flushes what is left and returns.
// Cancelling ctx never interrupts a write in progress: writes run on a
// context without its cancellation, each bounded by writeTimeout.
func (w *Writer) Run(ctx context.Context) {
	wctx := context.WithoutCancel(ctx)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.flush(wctx)
			return
		case <-t.C:
		case <-w.q.wake:
		}
		w.flush(wctx)
	}
}

// flush writes every pending event in chunks of w.batch.
func (w *Writer) flush(ctx context.Context) {
	evs := w.q.take()
	for len(evs) > 0 {
		n := min(len(evs), w.batch)
		w.write(ctx, evs[:n])
		w.q.done(n)
		evs = evs[n:]
	}
}

func (w *Writer) write(ctx context.Context, evs []store.Event) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			w.m.dropped.WithLabelValues(dropStoreError).Add(float64(len(evs)))
			w.logger.ErrorContext(ctx, "panic writing events", "panic", fmt.Sprint(v), "events", len(evs))
		}
	}()
	err := w.st.Write(ctx, evs)
	w.m.batchDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		w.m.dropped.WithLabelValues(dropStoreError).Add(float64(len(evs)))
		w.logger.ErrorContext(ctx, "writing events failed; batch dropped", "events", len(evs), "err", err)
		return
	}
	w.m.ingested.Add(float64(len(evs)))
}
