// Package registry is petmesh's service registry: which instances of which
// services exist, where they listen, which version tag they run and whether
// they are healthy.
//
// Two backends implement the same interfaces and pass the same conformance
// suite (package registrytest):
//
//   - Memory, the built-in registry: instances register over the control
//     plane's HTTP API (Handler) with a TTL and keep themselves alive with
//     heartbeats; an instance whose TTL lapses is removed.
//   - Consul: instances register with the local Consul agent with a TTL
//     check (or an HTTP check); the health catalog is watched with blocking
//     queries. An instance whose TTL lapses turns critical (and is removed by
//     Consul after DeregisterCriticalAfter when that is set).
//
// Sidecars use a Registrar (HTTPClient for the built-in registry, Consul for
// Consul); the control plane uses a Watcher to build endpoints.
package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Health is an instance's health status.
type Health string

// Health values. Consul's "warning" is kept as is; its "maintenance" is
// reported as critical.
const (
	HealthPassing  Health = "passing"
	HealthWarning  Health = "warning"
	HealthCritical Health = "critical"
)

// Valid reports whether h is one of the known values.
func (h Health) Valid() bool {
	return h == HealthPassing || h == HealthWarning || h == HealthCritical
}

// ParseHealth parses "passing", "warning" or "critical".
func ParseHealth(s string) (Health, error) {
	h := Health(s)
	if !h.Valid() {
		return "", fmt.Errorf("health %q: want passing, warning or critical", s)
	}
	return h, nil
}

// Errors returned by backends; test with errors.Is.
var (
	// ErrNotFound: no instance with that id is registered (never was,
	// deregistered, or expired). A sidecar whose heartbeat gets it should
	// register again.
	ErrNotFound = errors.New("registry: instance not found")
	// ErrUnauthenticated: the registration token was missing or wrong.
	ErrUnauthenticated = errors.New("registry: invalid registration token")
	// ErrNoTTL: the instance has no TTL check to update (it was registered
	// with an HTTP check, which the backend runs by itself).
	ErrNoTTL = errors.New("registry: instance has no ttl check")
)

// ValidationError names the registration field that is wrong.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

// Registration is what an instance registers.
type Registration struct {
	Service  string
	ID       string
	Address  string
	Port     int
	Version  string
	Metadata map[string]string
	// TTL is how long the instance stays alive (built-in) or passing
	// (Consul) without a heartbeat. Zero means the backend's default
	// (DefaultTTL). Ignored when HTTPCheck is set.
	TTL time.Duration
	// HTTPCheck asks the backend to probe the instance instead of waiting
	// for heartbeats. Only the Consul backend supports it.
	HTTPCheck *HTTPCheck
}

// HTTPCheck is an active HTTP health check run by the registry backend.
type HTTPCheck struct {
	URL      string
	Interval time.Duration
	Timeout  time.Duration
}

// Limits on registrations.
const (
	DefaultTTL     = 10 * time.Second
	MinTTL         = 100 * time.Millisecond
	MaxTTL         = time.Hour
	MaxMetadata    = 64
	MaxMetaKeyLen  = 128
	MaxMetaValLen  = 512
	maxNameLen     = 63
	maxIDLen       = 128
	maxAddrLen     = 253
	maxCheckPeriod = time.Hour
)

var (
	serviceRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	idRe      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	versionRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	metaKeyRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	hostRe    = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)
)

// Validate checks r and returns a *ValidationError naming the first bad
// field (JSON names: service, id, address, port, version, metadata.<key>,
// ttl, check).
func (r Registration) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
	}
	switch {
	case r.Service == "":
		return bad("service", "required")
	case len(r.Service) > maxNameLen || !serviceRe.MatchString(r.Service):
		return bad("service", "%q: want lowercase letters, digits and '-', at most %d characters", r.Service, maxNameLen)
	case r.ID == "":
		return bad("id", "required")
	case len(r.ID) > maxIDLen || !idRe.MatchString(r.ID):
		return bad("id", "%q: want letters, digits, '.', '_' and '-', at most %d characters", r.ID, maxIDLen)
	case r.Address == "":
		return bad("address", "required")
	case len(r.Address) > maxAddrLen || (net.ParseIP(r.Address) == nil && !hostRe.MatchString(r.Address)):
		return bad("address", "%q: want an IP address or a host name", r.Address)
	case r.Port < 1 || r.Port > 65535:
		return bad("port", "%d: want 1-65535", r.Port)
	case r.Version != "" && (len(r.Version) > maxNameLen || !versionRe.MatchString(r.Version)):
		return bad("version", "%q: want letters, digits, '.', '_' and '-', at most %d characters", r.Version, maxNameLen)
	case len(r.Metadata) > MaxMetadata:
		return bad("metadata", "%d keys: at most %d", len(r.Metadata), MaxMetadata)
	case r.TTL < 0 || (r.TTL != 0 && r.TTL < MinTTL) || r.TTL > MaxTTL:
		return bad("ttl", "%v: want %v to %v", r.TTL, MinTTL, MaxTTL)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Metadata)) {
		switch {
		case len(k) > MaxMetaKeyLen || !metaKeyRe.MatchString(k):
			return bad("metadata."+k, "key: want letters, digits, '_' and '-', at most %d characters", MaxMetaKeyLen)
		case strings.HasPrefix(strings.ToLower(k), "consul-"):
			return bad("metadata."+k, "key: the consul- prefix is reserved")
		case len(r.Metadata[k]) > MaxMetaValLen:
			return bad("metadata."+k, "value: at most %d characters", MaxMetaValLen)
		}
	}
	if c := r.HTTPCheck; c != nil {
		switch {
		case !strings.HasPrefix(c.URL, "http://") && !strings.HasPrefix(c.URL, "https://"):
			return bad("check.url", "%q: want an http or https URL", c.URL)
		case c.Interval < time.Second || c.Interval > maxCheckPeriod:
			return bad("check.interval", "%v: want 1s to 1h", c.Interval)
		case c.Timeout < 0 || c.Timeout > c.Interval:
			return bad("check.timeout", "%v: want at most the interval", c.Timeout)
		}
	}
	return nil
}

// Instance is one registered instance as seen by watchers.
type Instance struct {
	Service  string            `json:"service"`
	ID       string            `json:"id"`
	Node     string            `json:"node,omitempty"`
	Address  string            `json:"address"`
	Port     int               `json:"port"`
	Version  string            `json:"version,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Health   Health            `json:"health"`
	// Output is the last health check output (heartbeat output, Consul
	// check output), for operators.
	Output string `json:"output,omitempty"`
}

// Endpoint returns "address:port".
func (i Instance) Endpoint() string {
	return net.JoinHostPort(i.Address, fmt.Sprint(i.Port))
}

func (i Instance) clone() Instance {
	i.Metadata = maps.Clone(i.Metadata)
	return i
}

func (i Instance) equal(o Instance) bool {
	return i.Service == o.Service && i.ID == o.ID && i.Node == o.Node && i.Address == o.Address &&
		i.Port == o.Port && i.Version == o.Version && i.Health == o.Health && i.Output == o.Output &&
		maps.Equal(i.Metadata, o.Metadata)
}

// Snapshot is the registry's content at one moment: every known service's
// instances, sorted by id. A service with no instances may be present with
// an empty list (Consul keeps catalog entries briefly). Snapshots handed out
// by backends are shared between watchers and must not be modified.
type Snapshot struct {
	Services map[string][]Instance `json:"services"`
}

// NewSnapshot builds a snapshot from instances in any order.
func NewSnapshot(instances []Instance) Snapshot {
	s := Snapshot{Services: map[string][]Instance{}}
	for _, in := range instances {
		s.Services[in.Service] = append(s.Services[in.Service], in.clone())
	}
	for _, l := range s.Services {
		sortInstances(l)
	}
	return s
}

func sortInstances(l []Instance) {
	slices.SortFunc(l, func(a, b Instance) int {
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return strings.Compare(a.Node, b.Node)
	})
}

// ServiceNames returns the services in the snapshot, sorted.
func (s Snapshot) ServiceNames() []string {
	return slices.Sorted(maps.Keys(s.Services))
}

// Instances returns the named service's instances (nil when unknown).
func (s Snapshot) Instances(service string) []Instance { return s.Services[service] }

// Instance finds an instance by id across services.
func (s Snapshot) Instance(id string) (Instance, bool) {
	for _, l := range s.Services {
		for _, in := range l {
			if in.ID == id {
				return in, true
			}
		}
	}
	return Instance{}, false
}

// All returns every instance, sorted by service then id.
func (s Snapshot) All() []Instance {
	var out []Instance
	for _, name := range s.ServiceNames() {
		out = append(out, s.Services[name]...)
	}
	return out
}

// Equal reports whether s and o hold the same services and instances.
// Services with no instances count as absent.
func (s Snapshot) Equal(o Snapshot) bool {
	count := func(x Snapshot) int {
		n := 0
		for _, l := range x.Services {
			if len(l) > 0 {
				n++
			}
		}
		return n
	}
	if count(s) != count(o) {
		return false
	}
	for name, l := range s.Services {
		ol := o.Services[name]
		if len(l) > 0 && len(l) == len(ol) && &l[0] == &ol[0] {
			continue // the same immutable slice, shared between snapshots
		}
		if !slices.EqualFunc(l, ol, Instance.equal) {
			return false
		}
	}
	return true
}

// Registrar is the part of the registry an instance (its sidecar) uses.
// Implementations are safe for concurrent use.
type Registrar interface {
	// Register adds or replaces (same id) an instance; it starts passing
	// and stays alive for its TTL. Invalid input is a *ValidationError.
	Register(ctx context.Context, r Registration) error
	// Heartbeat renews the instance's TTL and keeps its current health.
	// ErrNotFound when the id is unknown (e.g. it expired): register again.
	Heartbeat(ctx context.Context, id string) error
	// SetHealth sets the health (and output, for operators) and renews
	// the TTL like a heartbeat.
	SetHealth(ctx context.Context, id string, h Health, output string) error
	// Deregister removes the instance; ErrNotFound when it is unknown.
	Deregister(ctx context.Context, id string) error
}

// Watcher is the part of the registry the control plane reads.
// Implementations are safe for concurrent use.
type Watcher interface {
	// Snapshot returns the current content.
	Snapshot(ctx context.Context) (Snapshot, error)
	// Watch returns a channel that receives the current snapshot at once
	// (when one is known) and then every different one. Delivery never
	// blocks the backend: the channel holds at most one pending snapshot,
	// and a newer one replaces an unread older one (the reader always
	// gets the latest state). Identical consecutive snapshots are not
	// sent. The channel is closed when ctx is done. Snapshots received
	// must not be modified.
	Watch(ctx context.Context) (<-chan Snapshot, error)
}

// Registry is a whole backend.
type Registry interface {
	Registrar
	Watcher
	// Run runs the backend's background work (TTL expiry for the built-in
	// registry, blocking-query watches for Consul) until ctx is done.
	// Watch channels receive changes only while Run runs.
	Run(ctx context.Context) error
}
