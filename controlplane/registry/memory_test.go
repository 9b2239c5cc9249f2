package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/registry/registrytest"
)

const testToken = "registration-secret"

func newMemory(t *testing.T, opts registry.MemoryOptions) *registry.Memory {
	t.Helper()
	if opts.SweepInterval == 0 {
		opts.SweepInterval = 50 * time.Millisecond
	}
	m, err := registry.NewMemory(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMemoryConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Subject {
		return registrytest.Subject{Registry: newMemory(t, registry.MemoryOptions{}), ExpiryRemoves: true}
	})
}

// TestMemoryOverHTTPConformance runs the suite with every write going
// through HTTPClient → Handler → Memory over a real socket.
func TestMemoryOverHTTPConformance(t *testing.T) {
	registrytest.Run(t, func(t *testing.T) registrytest.Subject {
		m := newMemory(t, registry.MemoryOptions{})
		h, err := registry.NewHandler(m, registry.HandlerOptions{Token: testToken})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		c, err := registry.NewHTTPClient(srv.URL, testToken)
		if err != nil {
			t.Fatal(err)
		}
		return registrytest.Subject{Registry: m, Registrar: c, ExpiryRemoves: true}
	})
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestMemoryTTLWithFakeClock(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	reg := prometheus.NewPedanticRegistry()
	m := newMemory(t, registry.MemoryOptions{Clock: clock, DefaultTTL: 10 * time.Second, SweepInterval: time.Hour, Registerer: reg})
	ctx := t.Context()
	ch, err := m.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := <-ch; len(s.All()) != 0 {
		t.Fatalf("initial snapshot %+v, want empty", s)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m.Register(ctx, registry.Registration{Service: "pets", ID: "p1", Address: "10.0.0.1", Port: 80}))                       // default ttl 10s
	must(m.Register(ctx, registry.Registration{Service: "pets", ID: "p2", Address: "10.0.0.2", Port: 80, TTL: 3 * time.Second})) // short
	if s := <-ch; len(s.Instances("pets")) != 2 {
		t.Fatalf("after register: %+v", s)
	}

	steps := []struct {
		desc    string
		advance time.Duration
		beat    []string
		want    []string
	}{
		{desc: "before any ttl", advance: 2 * time.Second, want: []string{"p1", "p2"}},
		{desc: "heartbeat renews p2", advance: 0, beat: []string{"p2"}, want: []string{"p1", "p2"}},
		{desc: "p2 alive 2.9s after its heartbeat", advance: 2900 * time.Millisecond, want: []string{"p1", "p2"}},
		{desc: "p2 expires exactly at its ttl", advance: 100 * time.Millisecond, want: []string{"p1"}},
		{desc: "p1 expires at 10s", advance: 5 * time.Second, want: nil},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		for _, id := range st.beat {
			must(m.Heartbeat(ctx, id))
		}
		m.Sweep()
		s, err := m.Snapshot(ctx)
		must(err)
		var ids []string
		for _, in := range s.All() {
			ids = append(ids, in.ID)
		}
		if fmt.Sprint(ids) != fmt.Sprint(st.want) {
			t.Fatalf("%s: instances %v, want %v", st.desc, ids, st.want)
		}
	}
	// The watcher was not read during the steps: it holds only the latest.
	select {
	case s := <-ch:
		if len(s.All()) != 0 {
			t.Fatalf("coalesced snapshot %+v, want empty", s)
		}
	default:
		t.Fatal("watcher not notified of expiry")
	}
	if err := m.Heartbeat(ctx, "p1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("heartbeat after expiry: %v, want ErrNotFound", err)
	}
	wantExpired := `
# HELP petmesh_registry_expired_total Instances removed by the built-in registry because their TTL lapsed.
# TYPE petmesh_registry_expired_total counter
petmesh_registry_expired_total{backend="memory"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantExpired), "petmesh_registry_expired_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "petmesh_registry_instances"); err != nil || n != 0 {
		t.Fatalf("instances series = %d (%v), want 0 after expiry", n, err)
	}
}

func TestMemoryMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := newMemory(t, registry.MemoryOptions{Registerer: reg})
	ctx := t.Context()
	for _, r := range []registry.Registration{
		{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 1},
		{Service: "pets", ID: "p2", Address: "127.0.0.1", Port: 2},
		{Service: "stats", ID: "s1", Address: "127.0.0.1", Port: 3},
	} {
		if err := m.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.SetHealth(ctx, "p2", registry.HealthCritical, "down"); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP petmesh_registry_instances Registered instances in the last registry snapshot, by service and health.
# TYPE petmesh_registry_instances gauge
petmesh_registry_instances{backend="memory",health="critical",service="pets"} 1
petmesh_registry_instances{backend="memory",health="passing",service="pets"} 1
petmesh_registry_instances{backend="memory",health="passing",service="stats"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "petmesh_registry_instances"); err != nil {
		t.Fatal(err)
	}
	// A second memory backend on the same registerer is refused.
	if _, err := registry.NewMemory(registry.MemoryOptions{Registerer: reg}); err == nil {
		t.Fatal("second backend on one registerer: want error")
	}
}

func TestMemoryRejectsHTTPCheck(t *testing.T) {
	m := newMemory(t, registry.MemoryOptions{})
	err := m.Register(t.Context(), registry.Registration{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 1,
		HTTPCheck: &registry.HTTPCheck{URL: "http://127.0.0.1:1/healthz", Interval: time.Second}})
	var ve *registry.ValidationError
	if !errors.As(err, &ve) || ve.Field != "check" {
		t.Fatalf("err = %v, want validation error on check", err)
	}
}

// TestWatchNeverBlocksProducer registers many instances while a watcher
// never reads; every Register must return promptly.
func TestWatchNeverBlocksProducer(t *testing.T) {
	m := newMemory(t, registry.MemoryOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	for range 3 {
		if _, err := m.Watch(ctx); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 500 {
			_ = m.Register(ctx, registry.Registration{Service: "pets", ID: fmt.Sprintf("p%d", i), Address: "127.0.0.1", Port: 1000 + i})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("producer blocked by unread watchers")
	}
}

func TestIdenticalSnapshotsDropped(t *testing.T) {
	m := newMemory(t, registry.MemoryOptions{})
	ctx := t.Context()
	ch, err := m.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	<-ch // initial
	r := registry.Registration{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 1, Version: "v1"}
	if err := m.Register(ctx, r); err != nil {
		t.Fatal(err)
	}
	<-ch
	// Same registration again and a no-op health change: nothing new.
	if err := m.Register(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := m.SetHealth(ctx, "p1", registry.HealthPassing, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-ch:
		t.Fatalf("identical snapshot delivered: %+v", s)
	default:
	}
}

func TestSnapshotEqual(t *testing.T) {
	a := registry.NewSnapshot([]registry.Instance{{Service: "pets", ID: "b", Port: 2}, {Service: "pets", ID: "a", Port: 1, Metadata: map[string]string{"k": "v"}}})
	for _, tc := range []struct {
		desc  string
		other registry.Snapshot
		equal bool
	}{
		{desc: "same content other order", other: registry.NewSnapshot([]registry.Instance{{Service: "pets", ID: "a", Port: 1, Metadata: map[string]string{"k": "v"}}, {Service: "pets", ID: "b", Port: 2}}), equal: true},
		{desc: "empty service ignored", other: registry.Snapshot{Services: map[string][]registry.Instance{"pets": a.Services["pets"], "gone": nil}}, equal: true},
		{desc: "metadata differs", other: registry.NewSnapshot([]registry.Instance{{Service: "pets", ID: "a", Port: 1, Metadata: map[string]string{"k": "w"}}, {Service: "pets", ID: "b", Port: 2}}), equal: false},
		{desc: "health differs", other: registry.NewSnapshot([]registry.Instance{{Service: "pets", ID: "a", Port: 1, Metadata: map[string]string{"k": "v"}}, {Service: "pets", ID: "b", Port: 2, Health: registry.HealthCritical}}), equal: false},
		{desc: "missing instance", other: registry.NewSnapshot([]registry.Instance{{Service: "pets", ID: "a", Port: 1, Metadata: map[string]string{"k": "v"}}}), equal: false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := a.Equal(tc.other); got != tc.equal {
				t.Fatalf("Equal = %v, want %v", got, tc.equal)
			}
			if got := tc.other.Equal(a); got != tc.equal {
				t.Fatalf("reverse Equal = %v, want %v", got, tc.equal)
			}
		})
	}
}
