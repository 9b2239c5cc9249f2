package statsink

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petmesh/petmesh/internal/identity"
	"github.com/petmesh/petmesh/internal/testutil"
)

type collector struct {
	mu      sync.Mutex
	batches [][]Event
	headers []http.Header
	status  int
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Events []Event `json:"events"`
	}
	if r.Method != http.MethodPost || r.URL.Path != "/events" || json.NewDecoder(r.Body).Decode(&body) != nil {
		http.Error(w, "bad", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.batches = append(c.batches, body.Events)
	c.headers = append(c.headers, r.Header.Clone())
	st := c.status
	c.mu.Unlock()
	if st == 0 {
		st = http.StatusAccepted
	}
	w.WriteHeader(st)
}

func (c *collector) events() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, b := range c.batches {
		n += len(b)
	}
	return n
}

func run(t *testing.T, s *Sink) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	return func() { cancel(); <-done }
}

func ev(i int) Event {
	return Event{Time: time.Now().UTC(), Route: "pets", Method: "GET", Path: fmt.Sprintf("/pets/%d", i), Status: 200, LatencyMS: 1.5}
}

func TestDeliversBatchesWithCredentials(t *testing.T) {
	c := &collector{}
	srv := httptest.NewServer(c)
	defer srv.Close()
	id := identity.Identity{Subject: "edge", Roles: []string{"edge", "viewer"}}
	s, err := New(Config{URL: srv.URL, BatchSize: 10, FlushInterval: 20 * time.Millisecond,
		Token: func() (string, error) { return "tok", nil }, Identity: &id, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	defer stop()
	for i := range 25 {
		if !s.Send(ev(i)) {
			t.Fatal("queue full")
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := c.events(); n != 25 {
			return fmt.Errorf("%d events delivered", n)
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range c.batches {
		if len(b) > 10 {
			t.Fatalf("batch %d has %d events, over the batch size", i, len(b))
		}
		h := c.headers[i]
		if h.Get("Authorization") != "Bearer tok" || h.Get(identity.HeaderSubject) != "edge" || h.Get(identity.HeaderRoles) != "edge,viewer" {
			t.Fatalf("headers %v", h)
		}
	}
	if sent, dropped, _ := s.Counters(); sent != 25 || dropped != 0 {
		t.Fatalf("sent %v dropped %v", sent, dropped)
	}
}

// TestWakesOncePerBatch checks that Send does not wake Run for every
// event: only the one that fills a batch does, and the ticker sends a
// lone event within the flush interval.
func TestWakesOncePerBatch(t *testing.T) {
	c := &collector{}
	srv := httptest.NewServer(c)
	defer srv.Close()
	s, err := New(Config{URL: srv.URL, BatchSize: 4, FlushInterval: time.Hour, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		s.Send(ev(i))
		if woken, want := len(s.q.Ready()) == 1, i >= 4; woken != want {
			t.Fatalf("after %d events (batch size 4) Run is woken: %v, want %v", i, woken, want)
		}
	}
	// Woken, Run sends all six at once (a batch of 4 and one of 2),
	// long before its hour-long flush interval.
	stop := run(t, s)
	defer stop()
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := c.events(); n != 6 {
			return fmt.Errorf("%d events delivered, want 6", n)
		}
		return nil
	})

	s2, err := New(Config{URL: srv.URL, FlushInterval: 20 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	stop2 := run(t, s2)
	defer stop2()
	s2.Send(ev(7))
	if len(s2.q.Ready()) != 0 {
		t.Fatal("one event woke Run")
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := c.events(); n != 7 {
			return fmt.Errorf("%d events delivered, want 7 (the lone one by the ticker)", n)
		}
		return nil
	})
}

func TestQueueFullNeverBlocks(t *testing.T) {
	s, err := New(Config{URL: "http://127.0.0.1:1", QueueSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			s.Send(ev(i))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Send blocked")
	}
	if _, dropped, _ := s.Counters(); dropped != 97 {
		t.Fatalf("dropped %v, want 97", dropped)
	}
}

func TestFailuresCounted(t *testing.T) {
	tests := []struct {
		desc   string
		status int
	}{
		{desc: "rejected batch (400)", status: http.StatusBadRequest},
		{desc: "stats overloaded (503, retried once)", status: http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c := &collector{status: tc.status}
			srv := httptest.NewServer(c)
			defer srv.Close()
			s, err := New(Config{URL: srv.URL, FlushInterval: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			stop := run(t, s)
			defer stop()
			s.Send(ev(1))
			s.Send(ev(2))
			testutil.Eventually(t, 5*time.Second, func() error {
				if _, dropped, be := s.Counters(); dropped != 2 || be != 1 {
					return fmt.Errorf("dropped %v batch errors %v", dropped, be)
				}
				return nil
			})
		})
	}
}

func TestFlushOnShutdown(t *testing.T) {
	c := &collector{}
	srv := httptest.NewServer(c)
	defer srv.Close()
	s, err := New(Config{URL: srv.URL, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, s)
	for i := range 7 {
		s.Send(ev(i))
	}
	stop()
	if n := c.events(); n != 7 {
		t.Fatalf("%d events delivered at shutdown, want 7", n)
	}
}

func TestSanitize(t *testing.T) {
	long := strings.Repeat("é", 2000)
	tests := []struct {
		desc string
		in   Event
		chk  func(e Event) bool
	}{
		{desc: "unmatched route", in: Event{Route: ""}, chk: func(e Event) bool { return e.Route == UnmatchedRoute }},
		{desc: "method upper-cased", in: Event{Method: "get"}, chk: func(e Event) bool { return e.Method == "GET" }},
		{desc: "long method cut", in: Event{Method: strings.Repeat("X", 40)}, chk: func(e Event) bool { return len(e.Method) == 16 }},
		{desc: "path without slash", in: Event{Path: "*"}, chk: func(e Event) bool { return e.Path == "/*" }},
		{desc: "long path cut at rune", in: Event{Path: "/" + long}, chk: func(e Event) bool {
			return len(e.Path) <= 2048 && json.Valid([]byte(`"`+e.Path+`"`)) && !strings.ContainsRune(e.Path, '\uFFFD')
		}},
		{desc: "status 0", in: Event{Status: 0}, chk: func(e Event) bool { return e.Status == 500 }},
		{desc: "status 499 kept", in: Event{Status: 499}, chk: func(e Event) bool { return e.Status == 499 }},
		{desc: "bad trace id dropped", in: Event{TraceID: "XYZ"}, chk: func(e Event) bool { return e.TraceID == "" }},
		{desc: "good trace id kept", in: Event{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736"}, chk: func(e Event) bool { return e.TraceID != "" }},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			e := tc.in
			Sanitize(&e)
			if !tc.chk(e) {
				t.Fatalf("%+v", e)
			}
		})
	}
}

func BenchmarkSend(b *testing.B) {
	s, err := New(Config{URL: "http://127.0.0.1:1", QueueSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	e := ev(1)
	b.ReportAllocs()
	for b.Loop() {
		if !s.Send(e) {
			s.q.Give(s.q.Take())
		}
	}
}
