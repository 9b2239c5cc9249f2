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
	t.Run("in-flight bound", func(t *testing.T) {
		// The server holds every request until the test ends: the first 5
		// time out, the 45 beyond the bound are refused without being sent.
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer srv.Close()
		defer close(release)
		res, err := FixedRate(context.Background(), FixedRateConfig{URL: srv.URL, Rate: 100, Duration: 500 * time.Millisecond, MaxInFlight: 5, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 50 || res.OK != 0 || res.Errors != 50 || !strings.Contains(res.First, "in flight") {
			t.Fatalf("sent %d ok %d errors %d first %q", res.Sent, res.OK, res.Errors, res.First)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		if _, err := FixedRate(context.Background(), FixedRateConfig{URL: "http://127.0.0.1:1", Rate: 0, Duration: time.Second}); err == nil {
			t.Fatal("rate 0 accepted")
		}
	})
}
