package registry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Clock tells the time; tests inject a fake one.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to Clock.
type ClockFunc func() time.Time

// Now implements Clock.
func (f ClockFunc) Now() time.Time { return f() }

// MemoryOptions configure NewMemory.
type MemoryOptions struct {
	// Clock decides when TTLs lapse; default the system clock.
	Clock Clock
	// DefaultTTL applies to registrations without a TTL; default 10s.
	DefaultTTL time.Duration
	// SweepInterval is how often Run removes expired instances (a real
	// ticker, whatever the Clock); default 200ms. Expiry is therefore
	// noticed at most SweepInterval after the TTL lapses. Every call that
	// reads or changes the registry also removes expired instances first.
	SweepInterval time.Duration
	// Registerer receives the registry metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger logs registrations, expiries and removals; default discards.
	Logger *slog.Logger
}

// Memory is the built-in registry: an in-memory map of instances, each
// alive until its TTL lapses without a heartbeat. It is safe for
// concurrent use. Run must run for expiry to be noticed without reads.
type Memory struct {
	clock      Clock
	defaultTTL time.Duration
	sweep      time.Duration
	log        *slog.Logger
	metrics    *metrics
	bc         *broadcaster

	mu        sync.Mutex
	instances map[string]*memEntry
}

type memEntry struct {
	inst    Instance
	ttl     time.Duration
	expires time.Time
}

var _ Registry = (*Memory)(nil)

// NewMemory returns an empty built-in registry.
func NewMemory(opts MemoryOptions) (*Memory, error) {
	if opts.Clock == nil {
		opts.Clock = ClockFunc(time.Now)
	}
	if opts.DefaultTTL == 0 {
		opts.DefaultTTL = DefaultTTL
	}
	if opts.DefaultTTL < MinTTL || opts.DefaultTTL > MaxTTL {
		return nil, fmt.Errorf("registry: default ttl %v: want %v to %v", opts.DefaultTTL, MinTTL, MaxTTL)
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = 200 * time.Millisecond
	}
	if opts.SweepInterval < 0 {
		return nil, fmt.Errorf("registry: sweep interval %v: want > 0", opts.SweepInterval)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(opts.Registerer, "memory")
	if err != nil {
		return nil, err
	}
	r := &Memory{
		clock: opts.Clock, defaultTTL: opts.DefaultTTL, sweep: opts.SweepInterval,
		log: opts.Logger, metrics: m, bc: newBroadcaster(m),
		instances: map[string]*memEntry{},
	}
	r.bc.publish(Snapshot{Services: map[string][]Instance{}})
	return r, nil
}

// Register implements Registrar. HTTPCheck is not supported (the built-in
// registry does not probe instances) and is a *ValidationError.
func (r *Memory) Register(_ context.Context, reg Registration) error {
	if err := reg.Validate(); err != nil {
		return err
	}
	if reg.HTTPCheck != nil {
		return &ValidationError{Field: "check", Message: "http checks need the consul backend; the built-in registry uses ttl heartbeats"}
	}
	ttl := reg.TTL
	if ttl == 0 {
		ttl = r.defaultTTL
	}
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	_, replaced := r.instances[reg.ID]
	r.instances[reg.ID] = &memEntry{
		inst: Instance{
			Service: reg.Service, ID: reg.ID, Address: reg.Address, Port: reg.Port,
			Version: reg.Version, Metadata: cloneMeta(reg.Metadata), Health: HealthPassing,
		},
		ttl: ttl, expires: now.Add(ttl),
	}
	r.log.Info("instance registered", "service", reg.Service, "id", reg.ID, "address", reg.Address, "port", reg.Port, "version", reg.Version, "ttl", ttl, "replaced", replaced)
	r.publishLocked()
	return nil
}

// Heartbeat implements Registrar.
func (r *Memory) Heartbeat(_ context.Context, id string) error {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	e, ok := r.instances[id]
	if !ok {
		return fmt.Errorf("heartbeat %q: %w", id, ErrNotFound)
	}
	e.expires = now.Add(e.ttl)
	return nil
}

// SetHealth implements Registrar.
func (r *Memory) SetHealth(_ context.Context, id string, h Health, output string) error {
	if !h.Valid() {
		return &ValidationError{Field: "status", Message: fmt.Sprintf("%q: want passing, warning or critical", h)}
	}
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	e, ok := r.instances[id]
	if !ok {
		return fmt.Errorf("set health of %q: %w", id, ErrNotFound)
	}
	e.expires = now.Add(e.ttl)
	if e.inst.Health != h {
		r.log.Info("instance health changed", "service", e.inst.Service, "id", id, "from", e.inst.Health, "to", h, "output", output)
	}
	e.inst.Health, e.inst.Output = h, output
	r.publishLocked()
	return nil
}

// Deregister implements Registrar.
func (r *Memory) Deregister(_ context.Context, id string) error {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.expireLocked(now)
	e, ok := r.instances[id]
	if !ok {
		return fmt.Errorf("deregister %q: %w", id, ErrNotFound)
	}
	delete(r.instances, id)
	r.log.Info("instance deregistered", "service", e.inst.Service, "id", id)
	r.publishLocked()
	return nil
}

// Snapshot implements Watcher.
func (r *Memory) Snapshot(_ context.Context) (Snapshot, error) {
	r.Sweep()
	s, _ := r.bc.current()
	return s, nil
}

// Watch implements Watcher.
func (r *Memory) Watch(ctx context.Context) (<-chan Snapshot, error) {
	return r.bc.subscribe(ctx), nil
}

// Run removes expired instances every SweepInterval until ctx is done.
func (r *Memory) Run(ctx context.Context) error {
	t := time.NewTicker(r.sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.Sweep()
		}
	}
}

// Sweep removes instances whose TTL has lapsed by the clock's now and
// notifies watchers. Run calls it; tests with a fake clock call it after
// advancing the clock.
func (r *Memory) Sweep() {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.expireLocked(now) {
		r.publishLocked()
	}
}

// expireLocked removes expired instances; it reports whether any was.
func (r *Memory) expireLocked(now time.Time) bool {
	changed := false
	for id, e := range r.instances {
		if !now.Before(e.expires) {
			delete(r.instances, id)
			r.metrics.expired.Inc()
			r.log.Warn("instance expired", "service", e.inst.Service, "id", id, "ttl", e.ttl, "late_by", now.Sub(e.expires))
			changed = true
		}
	}
	return changed
}

// publishLocked publishes the current content. Called with r.mu held so
// that snapshots reach watchers in the order of the changes.
func (r *Memory) publishLocked() {
	l := make([]Instance, 0, len(r.instances))
	for _, e := range r.instances {
		l = append(l, e.inst)
	}
	r.bc.publish(NewSnapshot(l))
}

func cloneMeta(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
