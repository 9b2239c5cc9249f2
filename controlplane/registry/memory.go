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
	// StateFile, when set, keeps the instances across restarts: NewMemory
	// restores them (each alive for its TTL from the restore, so that a
	// live instance's next heartbeat succeeds and a dead one expires), and
	// Run writes the file after every change (not after heartbeats). See
	// state.go.
	StateFile string
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
	stateFile  string
	save       chan struct{} // a change awaits its state file write (Run)

	mu        sync.Mutex
	instances map[string]*memEntry            // by id
	bySvc     map[string]map[string]*memEntry // by service, then id
	snap      map[string][]Instance           // last published, by service; never modified
	dirty     map[string]bool                 // services changed since the last publish
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
		stateFile: opts.StateFile, save: make(chan struct{}, 1),
		instances: map[string]*memEntry{}, bySvc: map[string]map[string]*memEntry{},
		snap: map[string][]Instance{}, dirty: map[string]bool{},
	}
	if r.stateFile != "" {
		r.mu.Lock()
		if _, err := r.restoreLocked(r.clock.Now()); err != nil {
			// Start empty: the sidecars register again after a 404 on
			// their next heartbeat, as without a state file.
			r.log.Error("registry state: not restored; starting empty", "file", r.stateFile, "error", err)
			r.metrics.stateErrors.Inc()
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.publishLocked()
	r.mu.Unlock()
	if len(r.snap) == 0 {
		r.bc.publish(Snapshot{Services: map[string][]Instance{}})
	}
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
	old, replaced := r.instances[reg.ID]
	if replaced {
		r.removeLocked(old)
	}
	r.addLocked(&memEntry{
		inst: Instance{
			Service: reg.Service, ID: reg.ID, Address: reg.Address, Port: reg.Port,
			Version: reg.Version, Metadata: cloneMeta(reg.Metadata), Health: HealthPassing,
		},
		ttl: ttl, expires: now.Add(ttl),
	})
	r.log.Info("instance registered", "service", reg.Service, "id", reg.ID, "address", reg.Address, "port", reg.Port, "version", reg.Version, "ttl", ttl, "replaced", replaced)
	r.publishLocked()
	return nil
}

// Heartbeat implements Registrar.
func (r *Memory) Heartbeat(_ context.Context, id string) error {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.liveLocked(id, now)
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
	e, ok := r.liveLocked(id, now)
	if !ok {
		return fmt.Errorf("set health of %q: %w", id, ErrNotFound)
	}
	e.expires = now.Add(e.ttl)
	if e.inst.Health == h && e.inst.Output == output {
		return nil
	}
	if e.inst.Health != h {
		r.log.Info("instance health changed", "service", e.inst.Service, "id", id, "from", e.inst.Health, "to", h, "output", output)
	}
	e.inst.Health, e.inst.Output = h, output
	r.dirty[e.inst.Service] = true
	r.publishLocked()
	return nil
}

// Deregister implements Registrar.
func (r *Memory) Deregister(_ context.Context, id string) error {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.liveLocked(id, now)
	if !ok {
		return fmt.Errorf("deregister %q: %w", id, ErrNotFound)
	}
	r.removeLocked(e)
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

// Run removes expired instances every SweepInterval until ctx is done,
// and writes the state file (when configured) after changes, and once
// more before it returns if a change is pending.
func (r *Memory) Run(ctx context.Context) error {
	t := time.NewTicker(r.sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			select {
			case <-r.save:
				r.saveState()
			default:
			}
			return nil
		case <-t.C:
			r.Sweep()
		case <-r.save:
			r.saveState()
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

// liveLocked returns the instance with that id unless its TTL has lapsed,
// in which case it is removed (and watchers told) first.
func (r *Memory) liveLocked(id string, now time.Time) (*memEntry, bool) {
	e, ok := r.instances[id]
	if !ok {
		return nil, false
	}
	if now.Before(e.expires) {
		return e, true
	}
	r.expireEntryLocked(e, now)
	r.publishLocked()
	return nil, false
}

// expireLocked removes expired instances; it reports whether any was.
func (r *Memory) expireLocked(now time.Time) bool {
	changed := false
	for _, e := range r.instances {
		if !now.Before(e.expires) {
			r.expireEntryLocked(e, now)
			changed = true
		}
	}
	return changed
}

func (r *Memory) expireEntryLocked(e *memEntry, now time.Time) {
	r.removeLocked(e)
	r.metrics.expired.Inc()
	r.log.Warn("instance expired", "service", e.inst.Service, "id", e.inst.ID, "ttl", e.ttl, "late_by", now.Sub(e.expires))
}

func (r *Memory) addLocked(e *memEntry) {
	r.instances[e.inst.ID] = e
	m := r.bySvc[e.inst.Service]
	if m == nil {
		m = map[string]*memEntry{}
		r.bySvc[e.inst.Service] = m
	}
	m[e.inst.ID] = e
	r.dirty[e.inst.Service] = true
}

func (r *Memory) removeLocked(e *memEntry) {
	delete(r.instances, e.inst.ID)
	if m := r.bySvc[e.inst.Service]; m != nil {
		delete(m, e.inst.ID)
		if len(m) == 0 {
			delete(r.bySvc, e.inst.Service)
		}
	}
	r.dirty[e.inst.Service] = true
}

// publishLocked publishes the current content, rebuilding only the
// services changed since the last publish (the others' slices are shared:
// snapshots are immutable). Called with r.mu held so that snapshots reach
// watchers in the order of the changes.
func (r *Memory) publishLocked() {
	if len(r.dirty) == 0 {
		return
	}
	next := make(map[string][]Instance, len(r.bySvc))
	for name, l := range r.snap {
		if !r.dirty[name] {
			next[name] = l
		}
	}
	for name := range r.dirty {
		m := r.bySvc[name]
		if len(m) == 0 {
			continue
		}
		l := make([]Instance, 0, len(m))
		for _, e := range m {
			l = append(l, e.inst.clone())
		}
		sortInstances(l)
		next[name] = l
	}
	clear(r.dirty)
	r.snap = next
	r.bc.publish(Snapshot{Services: next})
	if r.stateFile != "" {
		select {
		case r.save <- struct{}{}:
		default: // a write is already pending; it reads the latest state
		}
	}
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
