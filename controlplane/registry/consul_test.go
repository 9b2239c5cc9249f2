package registry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/registry/registrytest"
	ptestutil "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/testutil/consultest"
)

func newConsul(t *testing.T, agent *consultest.Agent, opts registry.ConsulOptions) *registry.Consul {
	t.Helper()
	opts.Client = agent.Client()
	if opts.MaxBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 50*time.Millisecond, 500*time.Millisecond
	}
	c, err := registry.NewConsul(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runBackend runs r.Run until the test ends and waits for it.
func runBackend(t *testing.T, r registry.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// TestConsulConformance runs the suite against one real Consul agent
// shared by the subtests (each uses its own service names).
func TestConsulConformance(t *testing.T) {
	agent := consultest.Start(t)
	registrytest.Run(t, func(t *testing.T) registrytest.Subject {
		return registrytest.Subject{Registry: newConsul(t, agent, registry.ConsulOptions{}), ExpiryRemoves: false, Bound: 10 * time.Second}
	})
}

// TestConsulBuiltinAPIConformance puts the built-in registry's HTTP API in
// front of the Consul backend: sidecars can use one client for both.
func TestConsulBuiltinAPIConformance(t *testing.T) {
	agent := consultest.Start(t)
	registrytest.Run(t, func(t *testing.T) registrytest.Subject {
		c := newConsul(t, agent, registry.ConsulOptions{})
		h, err := registry.NewHandler(c, registry.HandlerOptions{Token: testToken})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		hc, err := registry.NewHTTPClient(srv.URL, testToken)
		if err != nil {
			t.Fatal(err)
		}
		return registrytest.Subject{Registry: c, Registrar: hc, ExpiryRemoves: false, Bound: 10 * time.Second}
	})
}

func TestConsulRegistrationShape(t *testing.T) {
	agent := consultest.Start(t)
	c := newConsul(t, agent, registry.ConsulOptions{DeregisterCriticalAfter: time.Minute})
	ctx := t.Context()
	err := c.Register(ctx, registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 9001, Version: "v2",
		Metadata: map[string]string{"zone": "a"}, TTL: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	svc, _, err := agent.Client().Agent().Service("pets-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Service != "pets" || fmt.Sprint(svc.Tags) != "[version=v2]" || svc.Meta["zone"] != "a" || svc.Port != 9001 {
		t.Fatalf("agent service %+v", svc)
	}
	checks, err := agent.Client().Agent().ChecksWithFilter(`ServiceID == "pets-1"`)
	if err != nil {
		t.Fatal(err)
	}
	ch, ok := checks[registry.TTLCheckID("pets-1")]
	if !ok || ch.Status != api.HealthPassing || ch.Type != "ttl" {
		t.Fatalf("checks %+v", checks)
	}
}

// TestConsulHTTPCheck: the agent probes a real HTTP server; when it starts
// failing the instance turns critical in watches; TTL updates are refused.
func TestConsulHTTPCheck(t *testing.T) {
	agent := consultest.Start(t)
	c := newConsul(t, agent, registry.ConsulOptions{})
	runBackend(t, c)
	var healthy atomic.Bool
	healthy.Store(true)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "db down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	t.Cleanup(app.Close)
	ctx := t.Context()
	err := c.Register(ctx, registry.Registration{Service: "probed", ID: "probed-1", Address: "127.0.0.1", Port: 1,
		HTTPCheck: &registry.HTTPCheck{URL: app.URL + "/healthz", Interval: time.Second, Timeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitHealth := func(want registry.Health) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case s := <-ch:
				if in, ok := s.Instance("probed-1"); ok && in.Health == want {
					return
				}
			case <-deadline:
				t.Fatalf("probed-1 not %s within 15s", want)
			}
		}
	}
	waitHealth(registry.HealthPassing)
	healthy.Store(false)
	waitHealth(registry.HealthCritical)
	healthy.Store(true)
	waitHealth(registry.HealthPassing)
	if err := c.Heartbeat(ctx, "probed-1"); !errors.Is(err, registry.ErrNoTTL) {
		t.Fatalf("heartbeat on an http check: %v, want ErrNoTTL", err)
	}
}

// TestConsulAgentRestart: the watch survives the agent going away (errors
// counted, backoff) and follows the new agent's state (the index goes
// backwards after a dev-mode restart and is reset).
func TestConsulAgentRestart(t *testing.T) {
	agent := consultest.Start(t)
	reg := prometheus.NewPedanticRegistry()
	var logs syncBuffer
	c := newConsul(t, agent, registry.ConsulOptions{Registerer: reg, WaitTime: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	t.Cleanup(func() { t.Logf("registry log:\n%s", logs.String()) })
	runBackend(t, c)
	ctx := t.Context()
	ch, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Register(ctx, registry.Registration{Service: "pets", ID: fmt.Sprintf("pets-%d", i), Address: "127.0.0.1", Port: 9000 + i}); err != nil {
			t.Fatal(err)
		}
	}
	var last registry.Snapshot
	waitFor := func(what string, ok func(registry.Snapshot) bool) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case s := <-ch:
				if ok(s) {
					return
				}
				last = s
			case <-deadline:
				t.Fatalf("%s: not seen within 20s; last snapshot %+v", what, last)
			}
		}
	}
	waitFor("three pets", func(s registry.Snapshot) bool { return len(s.Instances("pets")) == 3 })

	agent.Stop()
	ptestutil.Eventually(t, 10*time.Second, func() error {
		n, err := testutil.GatherAndCount(reg, "petmesh_registry_watch_errors_total")
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("no error series")
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "petmesh_registry_watch_errors_total" {
				for _, m := range mf.GetMetric() {
					if m.GetCounter().GetValue() > 0 {
						return nil
					}
				}
			}
		}
		return errors.New("watch errors not counted yet")
	})

	// Dev mode: a new raft log (the index goes backwards) and an empty
	// catalog, into which the agent restores the services it had
	// registered (they are kept in its data dir) with critical checks.
	agent.Restart()
	if err := c.Register(ctx, registry.Registration{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 9100}); err != nil {
		t.Fatal(err)
	}
	waitFor("new agent's state", func(s registry.Snapshot) bool {
		in, ok := s.Instance("stats-1")
		return ok && in.Health == registry.HealthPassing && len(s.Instances("pets")) == 3
	})
	if err := c.SetHealth(ctx, "pets-1", registry.HealthPassing, "back"); err != nil {
		t.Fatal(err)
	}
	waitFor("restored instance passing again", func(s registry.Snapshot) bool {
		in, ok := s.Instance("pets-1")
		return ok && in.Health == registry.HealthPassing
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConsulRunOnce(t *testing.T) {
	agent := consultest.Start(t)
	c := newConsul(t, agent, registry.ConsulOptions{})
	ch, err := c.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	runBackend(t, c)
	select {
	case <-ch: // the first snapshot: Run is running
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot from Run within 10s")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Run(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second Run: %v, want already running", err)
	}
}

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct {
		desc      string
		prev, got uint64
		want      uint64
	}{
		{desc: "first query", prev: 0, got: 42, want: 42},
		{desc: "unchanged", prev: 42, got: 42, want: 42},
		{desc: "advanced", prev: 42, got: 50, want: 50},
		{desc: "went backwards resets", prev: 50, got: 7, want: 0},
		{desc: "zero from server is raised to one", prev: 0, got: 0, want: 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if got := registry.NextIndex(tc.prev, tc.got); got != tc.want {
				t.Fatalf("NextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
			}
		})
	}
}

func TestNewConsulValidates(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		desc string
		opts registry.ConsulOptions
	}{
		{desc: "no client", opts: registry.ConsulOptions{}},
		{desc: "deregister below consul minimum", opts: registry.ConsulOptions{Client: client, DeregisterCriticalAfter: 10 * time.Second}},
		{desc: "backoff max below min", opts: registry.ConsulOptions{Client: client, MinBackoff: time.Second, MaxBackoff: time.Millisecond}},
		{desc: "default ttl too short", opts: registry.ConsulOptions{Client: client, DefaultTTL: time.Millisecond}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			if _, err := registry.NewConsul(tc.opts); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

// TestConsulSnapshotWithoutRun: a registrar-only user (a sidecar, petctl)
// can read the catalog without running the watch loops.
func TestConsulSnapshotWithoutRun(t *testing.T) {
	agent := consultest.Start(t)
	c := newConsul(t, agent, registry.ConsulOptions{})
	ctx := t.Context()
	if err := c.Register(ctx, registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 9001, Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	ptestutil.Eventually(t, 5*time.Second, func() error {
		s, err := c.Snapshot(ctx)
		if err != nil {
			return err
		}
		in, ok := s.Instance("pets-1")
		if !ok || in.Version != "v1" || in.Health != registry.HealthPassing {
			return fmt.Errorf("snapshot %+v", s)
		}
		if _, ok := s.Services["consul"]; ok {
			return errors.New("the consul service itself is listed")
		}
		return nil
	})
}
