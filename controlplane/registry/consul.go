package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// VersionTagPrefix prefixes the version tag of a Consul service instance:
// version v2 is the tag "version=v2".
const VersionTagPrefix = "version="

// ConsulOptions configure NewConsul.
type ConsulOptions struct {
	// Client talks to the local Consul agent. Required.
	Client *api.Client
	// DefaultTTL applies to registrations without a TTL; default 10s.
	DefaultTTL time.Duration
	// DeregisterCriticalAfter, when set, asks Consul to remove an instance
	// whose check has been critical this long (Consul's minimum is 1m and
	// its reaper runs every 30s). Zero keeps critical instances.
	DeregisterCriticalAfter time.Duration
	// WaitTime bounds each blocking query; default 5m.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// query (exponential with jitter); defaults 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// IncludeService selects the services to watch; default every
	// service except "consul".
	IncludeService func(name string) bool
	// Registerer receives the registry metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger; default discards.
	Logger *slog.Logger
}

// Consul is the registry backed by a Consul agent: registrations go to the
// agent API with a TTL (or HTTP) check; Run watches the catalog's service
// list and each service's health with blocking queries. It is safe for
// concurrent use.
type Consul struct {
	client     *api.Client
	defaultTTL time.Duration
	deregAfter time.Duration
	wait       time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	include    func(string) bool
	log        *slog.Logger
	metrics    *metrics
	bc         *broadcaster

	// runMu serialises Run calls.
	runMu sync.Mutex

	mu       sync.Mutex
	running  bool
	ready    bool                  // the catalog and every service's health were read once
	services map[string][]Instance // by service, from health watches
	pending  map[string]bool       // services whose first health read is outstanding
	local    map[string]ttlState   // checks this process registered, by instance id
}

type ttlState struct {
	http   bool // HTTP check: the agent runs it, no TTL to update
	status Health
	output string
}

var _ Registry = (*Consul)(nil)

// NewConsul returns a Consul-backed registry.
func NewConsul(opts ConsulOptions) (*Consul, error) {
	if opts.Client == nil {
		return nil, errors.New("registry: consul client is required")
	}
	if opts.DefaultTTL == 0 {
		opts.DefaultTTL = DefaultTTL
	}
	if opts.DefaultTTL < MinTTL || opts.DefaultTTL > MaxTTL {
		return nil, fmt.Errorf("registry: default ttl %v: want %v to %v", opts.DefaultTTL, MinTTL, MaxTTL)
	}
	if opts.DeregisterCriticalAfter != 0 && opts.DeregisterCriticalAfter < time.Minute {
		return nil, fmt.Errorf("registry: deregister critical after %v: consul's minimum is 1m", opts.DeregisterCriticalAfter)
	}
	if opts.WaitTime == 0 {
		opts.WaitTime = 5 * time.Minute
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	if opts.MinBackoff < 0 || opts.MaxBackoff < opts.MinBackoff {
		return nil, fmt.Errorf("registry: backoff %v..%v: want 0 < min <= max", opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.IncludeService == nil {
		opts.IncludeService = func(name string) bool { return name != "consul" }
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(opts.Registerer, "consul")
	if err != nil {
		return nil, err
	}
	return &Consul{
		client: opts.Client, defaultTTL: opts.DefaultTTL, deregAfter: opts.DeregisterCriticalAfter,
		wait: opts.WaitTime, minBackoff: opts.MinBackoff, maxBackoff: opts.MaxBackoff,
		include: opts.IncludeService, log: opts.Logger, metrics: m, bc: newBroadcaster(m),
		services: map[string][]Instance{}, pending: map[string]bool{}, local: map[string]ttlState{},
	}, nil
}

// TTLCheckID is the id of the TTL check registered for an instance.
func TTLCheckID(id string) string { return "petmesh-ttl:" + id }

// HTTPCheckID is the id of the HTTP check registered for an instance.
func HTTPCheckID(id string) string { return "petmesh-http:" + id }

// Register implements Registrar: an agent service registration with the
// version tag, the metadata as service meta, and one check (TTL, or HTTP
// when r.HTTPCheck is set) that starts passing. Existing checks of the
// same id are replaced.
func (c *Consul) Register(ctx context.Context, r Registration) error {
	if err := r.Validate(); err != nil {
		return err
	}
	check := &api.AgentServiceCheck{Status: api.HealthPassing}
	st := ttlState{status: HealthPassing}
	if r.HTTPCheck != nil {
		check.CheckID = HTTPCheckID(r.ID)
		check.Name = "petmesh http check"
		check.HTTP = r.HTTPCheck.URL
		check.Interval = r.HTTPCheck.Interval.String()
		if r.HTTPCheck.Timeout > 0 {
			check.Timeout = r.HTTPCheck.Timeout.String()
		}
		st.http = true
	} else {
		ttl := r.TTL
		if ttl == 0 {
			ttl = c.defaultTTL
		}
		check.CheckID = TTLCheckID(r.ID)
		check.Name = "petmesh heartbeat"
		check.TTL = ttl.String()
		check.Notes = "renewed by the instance's sidecar"
	}
	if c.deregAfter > 0 {
		check.DeregisterCriticalServiceAfter = c.deregAfter.String()
	}
	var tags []string
	if r.Version != "" {
		tags = []string{VersionTagPrefix + r.Version}
	}
	reg := &api.AgentServiceRegistration{
		ID: r.ID, Name: r.Service, Address: r.Address, Port: r.Port,
		Tags: tags, Meta: r.Metadata, Checks: api.AgentServiceChecks{check},
	}
	if err := c.client.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		return fmt.Errorf("consul register %q: %w", r.ID, err)
	}
	c.mu.Lock()
	c.local[r.ID] = st
	c.mu.Unlock()
	return nil
}

// Heartbeat implements Registrar: an agent TTL update with the health
// last set by this process (passing if it registered the instance in an
// earlier life).
func (c *Consul) Heartbeat(ctx context.Context, id string) error {
	c.mu.Lock()
	st, ok := c.local[id]
	c.mu.Unlock()
	if !ok {
		st = ttlState{status: HealthPassing}
	}
	return c.updateTTL(ctx, id, st)
}

// SetHealth implements Registrar.
func (c *Consul) SetHealth(ctx context.Context, id string, h Health, output string) error {
	if !h.Valid() {
		return &ValidationError{Field: "status", Message: fmt.Sprintf("%q: want passing, warning or critical", h)}
	}
	c.mu.Lock()
	st := c.local[id]
	c.mu.Unlock()
	st.status, st.output = h, output
	return c.updateTTL(ctx, id, st)
}

func (c *Consul) updateTTL(ctx context.Context, id string, st ttlState) error {
	if st.http {
		return fmt.Errorf("consul update %q: %w", id, ErrNoTTL)
	}
	err := c.client.Agent().UpdateTTLOpts(TTLCheckID(id), st.output, string(st.status), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		if isNotFound(err) {
			c.mu.Lock()
			delete(c.local, id)
			c.mu.Unlock()
			return fmt.Errorf("consul update %q: %w", id, ErrNotFound)
		}
		return fmt.Errorf("consul update %q: %w", id, err)
	}
	c.mu.Lock()
	c.local[id] = st
	c.mu.Unlock()
	return nil
}

// Deregister implements Registrar.
func (c *Consul) Deregister(ctx context.Context, id string) error {
	err := c.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	c.mu.Lock()
	delete(c.local, id)
	c.mu.Unlock()
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("consul deregister %q: %w", id, ErrNotFound)
		}
		return fmt.Errorf("consul deregister %q: %w", id, err)
	}
	return nil
}

// isNotFound recognises the agent's answer for an unknown service or check.
func isNotFound(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return true
	}
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "unknown service") || strings.Contains(s, "unknown check") || strings.Contains(s, "does not have associated ttl")
}

// Snapshot implements Watcher. While Run runs and has read everything
// once, it returns the watched state; otherwise it reads the catalog
// directly with consistent queries.
func (c *Consul) Snapshot(ctx context.Context) (Snapshot, error) {
	c.mu.Lock()
	cached := c.running && c.ready
	c.mu.Unlock()
	if cached {
		if s, ok := c.bc.current(); ok {
			return s, nil
		}
	}
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	names, _, err := c.client.Catalog().Services(q)
	if err != nil {
		return Snapshot{}, fmt.Errorf("consul catalog services: %w", err)
	}
	var all []Instance
	for name := range names {
		if !c.include(name) {
			continue
		}
		entries, _, err := c.client.Health().Service(name, "", false, q)
		if err != nil {
			return Snapshot{}, fmt.Errorf("consul health %q: %w", name, err)
		}
		all = append(all, convertEntries(name, entries)...)
	}
	return NewSnapshot(all), nil
}

// Watch implements Watcher. Changes arrive while Run runs.
func (c *Consul) Watch(ctx context.Context) (<-chan Snapshot, error) {
	return c.bc.subscribe(ctx), nil
}

// Run watches the catalog until ctx is done: one blocking query on the
// service list and one per service on its health. Failed queries are
// retried with backoff and counted; the last known state is kept
// meanwhile. Run returns nil when ctx ends; it may run once at a time.
func (c *Consul) Run(ctx context.Context) error {
	if !c.runMu.TryLock() {
		return errors.New("registry: consul Run already running")
	}
	defer c.runMu.Unlock()
	c.mu.Lock()
	c.running, c.ready = true, false
	c.services, c.pending = map[string][]Instance{}, map[string]bool{}
	c.mu.Unlock()

	var wg sync.WaitGroup
	cancels := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range cancels {
			cancel()
		}
		wg.Wait()
		c.mu.Lock()
		c.running, c.ready = false, false
		c.mu.Unlock()
	}()

	var index uint64
	bo := c.newBackoff()
	for {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: c.wait}).WithContext(ctx)
		names, meta, err := c.client.Catalog().Services(q)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.metrics.errors.WithLabelValues("catalog").Inc()
			d := bo.next()
			c.log.WarnContext(ctx, "consul catalog watch failed", "error", err, "retry_in", d)
			if !sleepCtx(ctx, d) {
				return nil
			}
			continue
		}
		bo.reset()
		if !c.pace(ctx, index, meta.LastIndex, start) {
			return nil
		}
		index = NextIndex(index, meta.LastIndex)

		want := map[string]bool{}
		for name := range names {
			if c.include(name) {
				want[name] = true
			}
		}
		c.mu.Lock()
		for name := range want {
			if _, ok := cancels[name]; ok {
				continue
			}
			wctx, cancel := context.WithCancel(ctx)
			cancels[name] = cancel
			c.pending[name] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.watchService(wctx, name)
			}()
		}
		for name, cancel := range cancels {
			if want[name] {
				continue
			}
			cancel()
			delete(cancels, name)
			delete(c.services, name)
			delete(c.pending, name)
		}
		if len(c.pending) == 0 {
			c.ready = true
		}
		if c.ready {
			c.publishLocked()
		}
		c.mu.Unlock()
	}
}

// watchService keeps c.services[name] current with blocking queries.
func (c *Consul) watchService(ctx context.Context, name string) {
	var index uint64
	bo := c.newBackoff()
	for {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: c.wait}).WithContext(ctx)
		entries, meta, err := c.client.Health().Service(name, "", false, q)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.metrics.errors.WithLabelValues("health").Inc()
			d := bo.next()
			c.log.WarnContext(ctx, "consul health watch failed", "service", name, "error", err, "retry_in", d)
			if !sleepCtx(ctx, d) {
				return
			}
			continue
		}
		bo.reset()
		if !c.pace(ctx, index, meta.LastIndex, start) {
			return
		}
		next := NextIndex(index, meta.LastIndex)
		if next == 0 {
			c.log.InfoContext(ctx, "consul index went backwards; resetting", "service", name, "was", index, "now", meta.LastIndex)
		}
		index = next
		instances := convertEntries(name, entries)
		c.mu.Lock()
		if ctx.Err() == nil { // not removed from the catalog meanwhile
			c.services[name] = instances
			delete(c.pending, name)
			if !c.ready && len(c.pending) == 0 {
				c.ready = true
			}
			if c.ready {
				c.publishLocked()
			}
		}
		c.mu.Unlock()
	}
}

// pace guards against a busy loop: a blocking query that came back at once
// with the index it waited on (which Consul may do, e.g. while it has no
// leader) is followed by a MinBackoff pause. It reports false when ctx
// ended meanwhile.
func (c *Consul) pace(ctx context.Context, waited, got uint64, start time.Time) bool {
	if waited > 1 && got == waited && time.Since(start) < c.minBackoff {
		return sleepCtx(ctx, c.minBackoff)
	}
	return true
}

// NextIndex returns the WaitIndex for the next blocking query after one
// that returned got, following Consul's rules: an index that goes
// backwards (a snapshot restore, a new leader with a lower index) resets
// to 0, which makes the next query non-blocking and re-reads everything;
// an index below 1 is raised to 1 so the next query blocks.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got < 1:
		return 1
	default:
		return got
	}
}

func (c *Consul) publishLocked() {
	var all []Instance
	for _, l := range c.services {
		all = append(all, l...)
	}
	c.bc.publish(NewSnapshot(all))
}

// convertEntries maps Consul's health entries to instances. Health is the
// aggregate of the node's and the service's checks (maintenance counts as
// critical); Output is the output of the worst service check.
func convertEntries(name string, entries []*api.ServiceEntry) []Instance {
	out := make([]Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		in := Instance{
			Service: name, ID: e.Service.ID, Address: e.Service.Address, Port: e.Service.Port,
			Metadata: cloneMeta(e.Service.Meta),
		}
		if e.Node != nil {
			in.Node = e.Node.Node
			if in.Address == "" {
				in.Address = e.Node.Address
			}
		}
		for _, tag := range e.Service.Tags {
			if v, ok := strings.CutPrefix(tag, VersionTagPrefix); ok {
				in.Version = v
				break
			}
		}
		if in.Version == "" {
			in.Version = e.Service.Meta["version"]
		}
		switch e.Checks.AggregatedStatus() {
		case api.HealthPassing:
			in.Health = HealthPassing
		case api.HealthWarning:
			in.Health = HealthWarning
		default:
			in.Health = HealthCritical
		}
		rank := map[string]int{api.HealthPassing: 1, api.HealthWarning: 2, api.HealthCritical: 3, api.HealthMaint: 4}
		best := 0
		for _, ch := range e.Checks {
			if ch.ServiceID == "" && in.Health == HealthPassing {
				continue // node checks' output only matters when they fail
			}
			if r := rank[ch.Status]; r > best {
				best, in.Output = r, ch.Output
			}
		}
		out = append(out, in)
	}
	return out
}

type backoff struct {
	min, max, cur time.Duration
}

func (c *Consul) newBackoff() *backoff { return &backoff{min: c.minBackoff, max: c.maxBackoff} }

// next returns the next delay: doubling from min up to max, with up to
// 50% jitter so many watchers do not retry in step.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
