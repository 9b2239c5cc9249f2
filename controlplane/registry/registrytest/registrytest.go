// Package registrytest is the conformance suite every registry backend
// passes: Run(t, factory) exercises registration, heartbeats, health,
// deregistration, TTL expiry and watches against real backends.
package registrytest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/internal/testutil"
)

// Subject is one backend under test.
type Subject struct {
	// Registry is the backend; the suite runs its Run loop for the
	// length of the test and reads it with Snapshot and Watch.
	Registry registry.Registry
	// Registrar, when set, is used for writes instead of Registry (e.g.
	// the HTTP client in front of the built-in registry's API).
	Registrar registry.Registrar
	// ExpiryRemoves says what a lapsed TTL does: true removes the
	// instance (built-in); false turns it critical (Consul).
	ExpiryRemoves bool
	// Bound is how long a change may take to reach Snapshot and Watch;
	// default 5s.
	Bound time.Duration
}

// Factory returns a fresh backend for one subtest. Backends may share
// state between calls (e.g. one Consul agent): the suite gives every
// subtest its own service names.
type Factory func(t *testing.T) Subject

var seq atomic.Int64

// svc returns a service name unique to this process.
func svc(base string) string { return fmt.Sprintf("%s-%d", base, seq.Add(1)) }

type env struct {
	t     *testing.T
	s     Subject
	reg   registry.Registrar
	bound time.Duration
}

func setup(t *testing.T, f Factory) *env {
	t.Helper()
	s := f(t)
	if s.Bound == 0 {
		s.Bound = 5 * time.Second
	}
	reg := s.Registrar
	if reg == nil {
		reg = s.Registry
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Registry.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return &env{t: t, s: s, reg: reg, bound: s.Bound}
}

func (e *env) register(r registry.Registration) {
	e.t.Helper()
	if err := e.reg.Register(e.t.Context(), r); err != nil {
		e.t.Fatalf("register %s: %v", r.ID, err)
	}
}

// eventually polls Snapshot until check passes.
func (e *env) eventually(what string, check func(registry.Snapshot) error) {
	e.t.Helper()
	testutil.Eventually(e.t, e.bound, func() error {
		s, err := e.s.Registry.Snapshot(e.t.Context())
		if err != nil {
			return err
		}
		if err := check(s); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// watchUntil reads ch until a snapshot passes check, within the bound.
func (e *env) watchUntil(ch <-chan registry.Snapshot, what string, check func(registry.Snapshot) error) registry.Snapshot {
	e.t.Helper()
	timer := time.NewTimer(e.bound)
	defer timer.Stop()
	last := errors.New("no snapshot received")
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				e.t.Fatalf("watch %s: channel closed", what)
			}
			if last = check(s); last == nil {
				return s
			}
		case <-timer.C:
			e.t.Fatalf("watch %s: not delivered within %v: %v", what, e.bound, last)
		}
	}
}

func (e *env) watch() <-chan registry.Snapshot {
	e.t.Helper()
	ch, err := e.s.Registry.Watch(e.t.Context())
	if err != nil {
		e.t.Fatalf("watch: %v", err)
	}
	return ch
}

func has(service, id string, want func(registry.Instance) error) func(registry.Snapshot) error {
	return func(s registry.Snapshot) error {
		for _, in := range s.Instances(service) {
			if in.ID == id {
				if want == nil {
					return nil
				}
				return want(in)
			}
		}
		return fmt.Errorf("%s/%s absent (have %v)", service, id, s.Instances(service))
	}
}

func absent(service, id string) func(registry.Snapshot) error {
	return func(s registry.Snapshot) error {
		for _, in := range s.Instances(service) {
			if in.ID == id {
				return fmt.Errorf("%s/%s still present (%s)", service, id, in.Health)
			}
		}
		return nil
	}
}

func health(h registry.Health) func(registry.Instance) error {
	return func(in registry.Instance) error {
		if in.Health != h {
			return fmt.Errorf("%s health %s, want %s (output %q)", in.ID, in.Health, h, in.Output)
		}
		return nil
	}
}

// Run runs the conformance suite against backends made by f.
func Run(t *testing.T, f Factory) {
	t.Run("register appears with version metadata and passing health", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		ch := e.watch()
		e.register(registry.Registration{Service: name, ID: name + "-1", Address: "127.0.0.1", Port: 9001, Version: "v2", Metadata: map[string]string{"zone": "a", "weight": "10"}, TTL: 30 * time.Second})
		want := func(in registry.Instance) error {
			switch {
			case in.Service != name || in.Address != "127.0.0.1" || in.Port != 9001 || in.Version != "v2":
				return fmt.Errorf("instance %+v", in)
			case in.Metadata["zone"] != "a" || in.Metadata["weight"] != "10" || len(in.Metadata) != 2:
				return fmt.Errorf("metadata %v", in.Metadata)
			case in.Health != registry.HealthPassing:
				return fmt.Errorf("health %s", in.Health)
			case in.Endpoint() != "127.0.0.1:9001":
				return fmt.Errorf("endpoint %s", in.Endpoint())
			}
			return nil
		}
		e.eventually("snapshot", has(name, name+"-1", want))
		e.watchUntil(ch, "register", has(name, name+"-1", want))
	})

	t.Run("register again with the same id replaces", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		e.register(registry.Registration{Service: name, ID: name + "-1", Address: "127.0.0.1", Port: 9001, Version: "v1", TTL: 30 * time.Second})
		e.eventually("first", has(name, name+"-1", nil))
		e.register(registry.Registration{Service: name, ID: name + "-1", Address: "127.0.0.2", Port: 9002, Version: "v2", TTL: 30 * time.Second})
		e.eventually("replaced", func(s registry.Snapshot) error {
			l := s.Instances(name)
			if len(l) != 1 || l[0].Address != "127.0.0.2" || l[0].Port != 9002 || l[0].Version != "v2" {
				return fmt.Errorf("instances %+v", l)
			}
			return nil
		})
	})

	t.Run("invalid registration is a validation error naming the field", func(t *testing.T) {
		e := setup(t, f)
		for _, tc := range []struct {
			desc  string
			reg   registry.Registration
			field string
		}{
			{desc: "no service", reg: registry.Registration{ID: "x", Address: "127.0.0.1", Port: 1}, field: "service"},
			{desc: "no id", reg: registry.Registration{Service: "s", Address: "127.0.0.1", Port: 1}, field: "id"},
			{desc: "bad port", reg: registry.Registration{Service: "s", ID: "x", Address: "127.0.0.1", Port: 70000}, field: "port"},
			{desc: "bad version", reg: registry.Registration{Service: "s", ID: "x", Address: "127.0.0.1", Port: 1, Version: "v~2"}, field: "version"},
			{desc: "bad metadata key", reg: registry.Registration{Service: "s", ID: "x", Address: "127.0.0.1", Port: 1, Metadata: map[string]string{"a b": "c"}}, field: "metadata.a b"},
			{desc: "ttl too short", reg: registry.Registration{Service: "s", ID: "x", Address: "127.0.0.1", Port: 1, TTL: time.Millisecond}, field: "ttl"},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				err := e.reg.Register(t.Context(), tc.reg)
				var ve *registry.ValidationError
				if !errors.As(err, &ve) || ve.Field != tc.field {
					t.Fatalf("err = %v, want a validation error on %q", err, tc.field)
				}
			})
		}
	})

	t.Run("heartbeat keeps the instance alive past its ttl", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		id := name + "-1"
		ttl := time.Second
		e.register(registry.Registration{Service: name, ID: id, Address: "127.0.0.1", Port: 9001, TTL: ttl})
		e.eventually("registered", has(name, id, health(registry.HealthPassing)))
		deadline := time.Now().Add(3 * ttl)
		for time.Now().Before(deadline) {
			if err := e.reg.Heartbeat(t.Context(), id); err != nil {
				t.Fatalf("heartbeat: %v", err)
			}
			s, err := e.s.Registry.Snapshot(t.Context())
			if err != nil {
				t.Fatalf("snapshot: %v", err)
			}
			if err := has(name, id, health(registry.HealthPassing))(s); err != nil {
				t.Fatalf("while heartbeating: %v", err)
			}
			time.Sleep(ttl / 5) // heartbeat period, not a readiness wait
		}
	})

	t.Run("critical health is visible and recovers", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		id := name + "-1"
		ch := e.watch()
		e.register(registry.Registration{Service: name, ID: id, Address: "127.0.0.1", Port: 9001, TTL: 30 * time.Second})
		e.watchUntil(ch, "registered", has(name, id, health(registry.HealthPassing)))
		if err := e.reg.SetHealth(t.Context(), id, registry.HealthCritical, "app /healthz: 503"); err != nil {
			t.Fatalf("set critical: %v", err)
		}
		e.watchUntil(ch, "critical", has(name, id, func(in registry.Instance) error {
			if err := health(registry.HealthCritical)(in); err != nil {
				return err
			}
			if in.Output != "app /healthz: 503" {
				return fmt.Errorf("output %q", in.Output)
			}
			return nil
		}))
		// A plain heartbeat keeps the current health.
		if err := e.reg.Heartbeat(t.Context(), id); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		e.eventually("still critical after heartbeat", has(name, id, health(registry.HealthCritical)))
		if err := e.reg.SetHealth(t.Context(), id, registry.HealthPassing, "ok"); err != nil {
			t.Fatalf("set passing: %v", err)
		}
		e.watchUntil(ch, "passing again", has(name, id, health(registry.HealthPassing)))
	})

	t.Run("deregister removes and notifies watchers", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		ch := e.watch()
		for _, id := range []string{name + "-1", name + "-2"} {
			e.register(registry.Registration{Service: name, ID: id, Address: "127.0.0.1", Port: 9001, TTL: 30 * time.Second})
		}
		e.watchUntil(ch, "both registered", func(s registry.Snapshot) error {
			if n := len(s.Instances(name)); n != 2 {
				return fmt.Errorf("%d instances", n)
			}
			return nil
		})
		if err := e.reg.Deregister(t.Context(), name+"-1"); err != nil {
			t.Fatalf("deregister: %v", err)
		}
		e.watchUntil(ch, "deregistered", func(s registry.Snapshot) error {
			if err := absent(name, name+"-1")(s); err != nil {
				return err
			}
			return has(name, name+"-2", nil)(s)
		})
		e.eventually("snapshot", absent(name, name+"-1"))
	})

	t.Run("unknown ids are not found", func(t *testing.T) {
		e := setup(t, f)
		id := svc("nobody")
		for _, tc := range []struct {
			desc string
			call func() error
		}{
			{desc: "heartbeat", call: func() error { return e.reg.Heartbeat(t.Context(), id) }},
			{desc: "set health", call: func() error {
				return e.reg.SetHealth(t.Context(), id, registry.HealthCritical, "")
			}},
			{desc: "deregister", call: func() error { return e.reg.Deregister(t.Context(), id) }},
		} {
			t.Run(tc.desc, func(t *testing.T) {
				if err := tc.call(); !errors.Is(err, registry.ErrNotFound) {
					t.Fatalf("err = %v, want ErrNotFound", err)
				}
			})
		}
	})

	t.Run("ttl expiry without heartbeats", func(t *testing.T) {
		e := setup(t, f)
		name := svc("pets")
		ch := e.watch()
		e.register(registry.Registration{Service: name, ID: name + "-short", Address: "127.0.0.1", Port: 9001, TTL: time.Second})
		e.register(registry.Registration{Service: name, ID: name + "-long", Address: "127.0.0.1", Port: 9002, TTL: time.Minute})
		e.watchUntil(ch, "registered", has(name, name+"-short", health(registry.HealthPassing)))
		check := has(name, name+"-short", health(registry.HealthCritical))
		if e.s.ExpiryRemoves {
			check = absent(name, name+"-short")
		}
		e.watchUntil(ch, "expired", func(s registry.Snapshot) error {
			if err := check(s); err != nil {
				return err
			}
			return has(name, name+"-long", health(registry.HealthPassing))(s)
		})
		e.eventually("snapshot after expiry", check)
	})

	t.Run("two services are kept apart", func(t *testing.T) {
		e := setup(t, f)
		pets, stats := svc("pets"), svc("stats")
		e.register(registry.Registration{Service: pets, ID: pets + "-1", Address: "127.0.0.1", Port: 9001, Version: "v1", TTL: 30 * time.Second})
		e.register(registry.Registration{Service: pets, ID: pets + "-2", Address: "127.0.0.1", Port: 9002, Version: "v2", TTL: 30 * time.Second})
		e.register(registry.Registration{Service: stats, ID: stats + "-1", Address: "127.0.0.1", Port: 9003, TTL: 30 * time.Second})
		e.eventually("both services", func(s registry.Snapshot) error {
			p, st := s.Instances(pets), s.Instances(stats)
			if len(p) != 2 || len(st) != 1 {
				return fmt.Errorf("pets %v, stats %v", p, st)
			}
			if p[0].ID != pets+"-1" || p[1].ID != pets+"-2" || p[0].Version != "v1" || p[1].Version != "v2" {
				return fmt.Errorf("pets not sorted by id or wrong versions: %+v", p)
			}
			if st[0].Port != 9003 {
				return fmt.Errorf("stats %+v", st)
			}
			return nil
		})
	})

	t.Run("a slow watcher gets the latest state", func(t *testing.T) {
		e := setup(t, f)
		name := svc("burst")
		ch := e.watch()
		const n = 15
		for i := range n {
			e.register(registry.Registration{Service: name, ID: fmt.Sprintf("%s-%02d", name, i), Address: "127.0.0.1", Port: 9000 + i, TTL: 30 * time.Second})
		}
		got := 0
		e.watchUntil(ch, "burst", func(s registry.Snapshot) error {
			got++
			if l := len(s.Instances(name)); l != n {
				return fmt.Errorf("%d of %d instances", l, n)
			}
			return nil
		})
		t.Logf("%d snapshots received for %d registrations", got, n)
	})

	t.Run("watch channel closes when its context ends", func(t *testing.T) {
		e := setup(t, f)
		ctx, cancel := context.WithCancel(t.Context())
		ch, err := e.s.Registry.Watch(ctx)
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		cancel()
		timer := time.NewTimer(e.bound)
		defer timer.Stop()
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-timer.C:
				t.Fatalf("channel not closed within %v", e.bound)
			}
		}
	})
}
