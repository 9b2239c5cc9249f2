package stats

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/services/stats/store"
)

// benchBody is a POST /events body of n events over 5 routes, 3 statuses
// and 20 subjects.
func benchBody(b *testing.B, n int, now time.Time) []byte {
	statuses := []int{200, 200, 200, 404, 503}
	evs := make([]map[string]any, n)
	for i := range evs {
		evs[i] = map[string]any{
			"time": now.Add(-time.Duration(i) * time.Second).Format(time.RFC3339Nano), "route": fmt.Sprintf("route-%d", i%5),
			"method": "GET", "path": fmt.Sprintf("/pets/pet_%d", i%50), "status": statuses[i%len(statuses)],
			"latency_ms": float64(i%300) + 0.25, "subject": fmt.Sprintf("user-%d", i%20),
			"trace_id": "0123456789abcdef0123456789abcdef", "upstream": "pets",
		}
	}
	body, err := json.Marshal(map[string]any{"events": evs})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

func post(b *testing.B, h http.Handler, body []byte) {
	r := httptest.NewRequest("POST", "/events", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("X-Petmesh-Subject", "edge")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusAccepted {
		b.Fatalf("status %d: %s", w.Code, w.Body)
	}
}

// BenchmarkPostEvents measures what the edge waits for: the POST /events
// handler with the full middleware (decode, validate, enqueue) for
// batches of 100 events. The queue is drained without storing, to
// isolate the handler from SQLite.
func BenchmarkPostEvents(b *testing.B) {
	cfg := testConfig(b)
	cfg.QueueSize = 1 << 20
	svc := newService(b, cfg, &clock{t: time.Now()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond):
				svc.Queue.done(len(svc.Queue.take()))
			}
		}
	})
	defer func() { cancel(); wg.Wait() }()
	const perBatch = 100
	body := benchBody(b, perBatch, time.Now())
	h := svc.Handler()
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			post(b, h, body)
		}
	})
	b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkIngestEndToEnd posts batches of 100 events and stops the clock
// only once the writer has stored all of them in SQLite.
func BenchmarkIngestEndToEnd(b *testing.B) {
	const perBatch = 100
	cfg := testConfig(b)
	cfg.QueueSize = max(b.N*perBatch, MaxBatch)
	cfg.FlushInterval = 100 * time.Millisecond
	svc := newService(b, cfg, &clock{t: time.Now()})
	body := benchBody(b, perBatch, time.Now())
	h := svc.Handler()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	wg.Go(func() { svc.RunWriter(ctx) })
	for range b.N {
		post(b, h, body)
	}
	cancel()
	wg.Wait() // the writer flushes everything before returning
	b.StopTimer()
	b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkStoreWrite measures one 1000-event transaction.
func BenchmarkStoreWrite(b *testing.B) {
	svc := newService(b, testConfig(b), nil)
	now := time.Now()
	body := benchBody(b, 1000, now)
	r := httptest.NewRequest("POST", "/events", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	evs, err := decodeEvents(httptest.NewRecorder(), r, now, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := svc.Store.Write(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(evs))/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkRequests7d queries a full week of hourly rows: 168 hours × 5
// routes × 3 statuses × 20 subjects (≈ 50k rows).
func BenchmarkRequests7d(b *testing.B) {
	svc := newService(b, testConfig(b), nil)
	ctx := context.Background()
	now := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	statuses := []int{200, 404, 503}
	for h := range 168 {
		var evs []store.Event
		at := now.Add(-time.Duration(h) * time.Hour)
		for r := range 5 {
			for _, s := range statuses {
				for u := range 20 {
					evs = append(evs, store.Event{Time: at, Route: fmt.Sprintf("route-%d", r), Method: "GET", Path: "/pets",
						Status: s, LatencyMS: float64(u + r), Subject: fmt.Sprintf("user-%d", u)})
				}
			}
		}
		if err := svc.Store.Write(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	w, _ := store.ParseWindow("7d")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rep, err := svc.Store.Requests(ctx, w, store.ByRoute, now)
		if err != nil {
			b.Fatal(err)
		}
		if rep.Overall.Count != 168*300 {
			b.Fatalf("count %d", rep.Overall.Count)
		}
	}
}
