package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFixedRate(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("X-Bench") != "1" {
			http.Error(w, "missing header", http.StatusBadRequest)
			return
		}
		_, _ = w.Write([]byte(BackendBody))
	}))
	defer srv.Close()

	res, err := FixedRate(context.Background(), FixedRateConfig{
		URL: srv.URL, Header: http.Header{"X-Bench": {"1"}}, Rate: 200, Lead: 100 * time.Millisecond, Duration: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 200 measured + 20 lead-in requests, every one answered.
	if res.Sent != 200 || res.OK != 200 || res.Errors != 0 {
		t.Fatalf("sent %d ok %d errors %d (%s), want 200/200/0", res.Sent, res.OK, res.Errors, res.First)
	}
	if hits.Load() != 220 {
		t.Fatalf("server saw %d requests, want 220", hits.Load())
	}
	l := res.Latency
	if !(l.P50 > 0 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Fatalf("percentiles not ordered: %+v", l)
	}
	if res.Service.P50 <= 0 || res.Service.Max > l.Max+0.01 {
		t.Fatalf("service time %+v vs latency %+v", res.Service, l)
	}
}

// The load uses at most Conns connections, however slow the target.
func TestFixedRateConnections(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		peers[r.RemoteAddr] = true
		mu.Unlock()
		time.Sleep(20 * time.Millisecond) // a slow target: 4 connections carry 200/s only by queueing
		_, _ = w.Write([]byte("{}"))
	}))
	defer srv.Close()
	res, err := FixedRate(context.Background(), FixedRateConfig{URL: srv.URL, Rate: 400, Duration: 500 * time.Millisecond, Conns: 4})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if res.Sent != 200 || res.OK != 200 || len(peers) > 4 {
		t.Fatalf("sent %d ok %d over %d connections, want 200/200 over ≤ 4", res.Sent, res.OK, len(peers))
	}
	// 4 connections × 50/s < 400/s: the backlog shows in the latency
	// (the last requests wait ~0.5s), not in the service time.
	if res.Latency.Max < 200 || res.Service.P50 > res.Latency.P99 {
		t.Fatalf("latency %+v service %+v", res.Latency, res.Service)
	}
}

// A stall of the target must show in the latency of every request that
// was due while it lasted (measured from the intended send time), even
// though each of them was served quickly once the stall ended.
func TestFixedRateCountsStalls(t *testing.T) {
	const stall = 300 * time.Millisecond
	var once sync.Once
	gate := make(chan struct{})
	var first atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The 10th request closes the gate for 300ms: requests arriving
		// meanwhile wait for it, like behind a process pause.
		if first.Add(1) == 10 {
			once.Do(func() { time.AfterFunc(stall, func() { close(gate) }) })
		}
		if first.Load() >= 10 {
			<-gate
		}
		_, _ = w.Write([]byte("{}"))
	}))
	defer srv.Close()
	res, err := FixedRate(context.Background(), FixedRateConfig{URL: srv.URL, Rate: 200, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 {
		t.Fatalf("%d errors: %s", res.Errors, res.First)
	}
	// About 60 of the 200 requests were due during the stall; the worst
	// waited for nearly all of it.
	if res.Latency.Max < float64(stall/time.Millisecond)*0.9 || res.Latency.P90 < 50 {
		t.Fatalf("the stall is hidden: %+v", res.Latency)
	}
}

func TestFixedRateErrors(t *testing.T) {
	t.Run("status", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no", http.StatusServiceUnavailable)
		}))
		defer srv.Close()
		res, err := FixedRate(context.Background(), FixedRateConfig{URL: srv.URL, Rate: 100, Duration: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 50 || res.Errors != 50 || res.OK != 0 || !strings.Contains(res.First, "503") {
			t.Fatalf("sent %d errors %d ok %d first %q", res.Sent, res.Errors, res.OK, res.First)
		}
	})
	t.Run("timeouts", func(t *testing.T) {
		// The server holds every request until the test ends: each of the
		// 10 times out after 300ms, two connections waiting in turn.
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer srv.Close()
		defer close(release)
		res, err := FixedRate(context.Background(), FixedRateConfig{URL: srv.URL, Rate: 20, Duration: 500 * time.Millisecond, Conns: 2, Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 10 || res.OK != 0 || res.Errors != 10 || !strings.Contains(res.First, "Timeout") {
			t.Fatalf("sent %d ok %d errors %d first %q", res.Sent, res.OK, res.Errors, res.First)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		if _, err := FixedRate(context.Background(), FixedRateConfig{URL: "http://127.0.0.1:1", Rate: 0, Duration: time.Second}); err == nil {
			t.Fatal("rate 0 accepted")
		}
	})
}
