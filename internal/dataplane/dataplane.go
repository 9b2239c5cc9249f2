// Package dataplane turns Envoy v3 resources (Listener, RouteConfiguration,
// Cluster, ClusterLoadAssignment) into an immutable HTTP handler graph and
// swaps it atomically: a request loads the current graph once and finishes
// on it, even if a newer graph is swapped in meanwhile; the hot path takes
// no lock. A new configuration is built completely (every set field is
// checked against the table of honoured fields in README.md) before it
// replaces the old one, so a rejected configuration is never half-applied.
//
// The edge and every sidecar share this package: the edge plugs in the JWT
// verifier through Options.Auth, and both pass an access-log hook.
package dataplane

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/internal/httpx"
)

// Resources is one complete configuration by resource name. It has the
// same shape as client.Snapshot of internal/xds/client, so
// dataplane.Resources(*snap) converts one into the other. The data plane
// never modifies the messages.
type Resources struct {
	Listeners map[string]*listener.Listener
	Routes    map[string]*route.RouteConfiguration
	Clusters  map[string]*cluster.Cluster
	Endpoints map[string]*endpoint.ClusterLoadAssignment
}

// Options configures a DataPlane. Only Registerer is required in practice;
// every other field has a working default.
type Options struct {
	// Logger receives configuration events and upstream errors.
	Logger *slog.Logger
	// Registerer receives the petmesh_dataplane_* metrics; none when nil.
	Registerer prometheus.Registerer
	// Auth builds the authenticator for a listener's jwt_authn filter; a
	// configuration with jwt_authn is rejected when it is nil.
	Auth AuthFactory
	// AccessLog is called once per request after the response is written;
	// nil disables it. It must not block.
	AccessLog AccessLogFunc
	// TracerProvider and Propagator enable a server span per request at the
	// listener and a client span per upstream attempt (W3C trace context
	// by default). Without them, or with the OTel no-op provider, no span
	// work is done at all and the incoming traceparent is forwarded
	// unchanged. Pass a provider only when spans are exported: an SDK
	// provider without an exporter still builds every span to drop it.
	TracerProvider trace.TracerProvider
	Propagator     propagation.TextMapPropagator
	// WarmingTimeout bounds how long a configuration whose references are
	// not all resolved yet (a route naming a cluster not received, an EDS
	// cluster without its load assignment) is held back while the previous
	// graph keeps serving; after it the incomplete graph is swapped in
	// anyway. Default 5s.
	WarmingTimeout time.Duration
	// MaxRetryBody is the largest request body buffered for retries
	// (default 64 KiB); larger bodies are sent once.
	MaxRetryBody int64
	// Now and Rand are injected by tests; Rand must be safe for concurrent
	// use and return a value in [0, n).
	Now  func() time.Time
	Rand func(n uint64) uint64
	// HealthCheckClient is the client for active health checks; a client
	// with its own transport when nil.
	HealthCheckClient *http.Client
	// LocalClusters serves clusters in process: a route (or weighted
	// target) naming a cluster in this map calls its handler instead of
	// proxying to the cluster's endpoints, which are ignored. The edge maps
	// resource.ClusterEdgeLocal ("edge_local": the route table's target
	// service "edge", e.g. /auth/ and /.well-known/) to its token and JWKS
	// handlers, so those routes do not loop back through its own public
	// listener. The route's filters (jwt_authn, rbac, local_ratelimit,
	// fault), timeout (as the request context's deadline), prefix and host
	// rewrites and the cluster's max_requests apply; retries, outlier
	// detection and health checks do not. The handler sees the client's
	// RemoteAddr and the verified identity headers; it must honour the
	// request context.
	LocalClusters map[string]http.Handler
}

// DataPlane holds the active handler graph. It is safe for concurrent use;
// Apply calls are serialized.
type DataPlane struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	tracing *tracing // nil: no spans

	cur atomic.Pointer[graph]

	mu      sync.Mutex // serializes Apply, guards the fields below
	pending *graph     // a built but incomplete graph waiting for references
	timer   *time.Timer
	closed  bool
}

// New returns a data plane with an empty configuration: every listener
// answers 503 until the first Apply.
func New(opts Options) (*DataPlane, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.WarmingTimeout <= 0 {
		opts.WarmingTimeout = 5 * time.Second
	}
	if opts.MaxRetryBody <= 0 {
		opts.MaxRetryBody = 64 << 10
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Uint64N
	}
	if opts.HealthCheckClient == nil {
		opts.HealthCheckClient = &http.Client{
			Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, DisableCompression: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &DataPlane{opts: opts, log: opts.Logger.With("component", "dataplane"), metrics: m,
		tracing: newTracing(opts.TracerProvider, opts.Propagator)}, nil
}

// Validate builds res without applying it and returns the first error.
func (d *DataPlane) Validate(res *Resources) error {
	g, err := d.build(res, nil)
	if err != nil {
		return err
	}
	g.release()
	return nil
}

// Apply builds a graph from res and swaps it in, or returns an error
// (naming the resource and field) and leaves the active graph untouched.
// A graph whose references are not all resolved is held back for up to
// Options.WarmingTimeout while the active graph keeps serving (Apply still
// returns nil: the resources themselves are valid).
func (d *DataPlane) Apply(ctx context.Context, res *Resources) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("dataplane: closed")
	}
	g, err := d.build(res, d.cur.Load())
	if err != nil {
		d.metrics.configRejected.Inc()
		return err
	}
	if d.pending != nil {
		d.pending.release(g, d.cur.Load())
		d.pending = nil
	}
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if len(g.missing) > 0 && d.cur.Load() != nil {
		d.log.InfoContext(ctx, "configuration warming: waiting for referenced resources", "missing", g.missing)
		d.pending = g
		d.timer = time.AfterFunc(d.opts.WarmingTimeout, d.warmingExpired)
		return nil
	}
	d.swap(g)
	return nil
}

func (d *DataPlane) warmingExpired() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending == nil || d.closed {
		return
	}
	d.log.Warn("configuration still incomplete after the warming timeout; applying it", "missing", d.pending.missing)
	g := d.pending
	d.pending, d.timer = nil, nil
	d.swap(g)
}

// swap makes g active and releases what the old graph held that g does not
// reuse. Callers hold d.mu.
func (d *DataPlane) swap(g *graph) {
	g.start()
	old := d.cur.Swap(g)
	if old != nil {
		old.release(g)
	}
	d.metrics.configApplied.Inc()
	d.metrics.configTime.SetToCurrentTime()
}

// Close stops health checks and timers. Handlers keep answering with the
// last graph; Apply fails afterwards.
func (d *DataPlane) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.pending != nil {
		d.pending.release(d.cur.Load())
		d.pending = nil
	}
	if g := d.cur.Load(); g != nil {
		g.release()
	}
}

// Handler returns the stable handler of the named listener. It serves
// whatever graph is active when each request arrives: 503 while the
// listener is not configured.
func (d *DataPlane) Handler(listenerName string) http.Handler {
	return &listenerEntry{d: d, name: listenerName}
}

type listenerEntry struct {
	d    *DataPlane
	name string
}

func (e *listenerEntry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g := e.d.cur.Load()
	if g != nil {
		if l := g.listeners[e.name]; l != nil {
			l.ServeHTTP(w, r)
			return
		}
	}
	httpx.WriteError(w, httpx.Unavailable("listener %s is not configured yet", e.name))
}

// Listeners returns the names of the active listeners, sorted.
func (d *DataPlane) Listeners() []string {
	g := d.cur.Load()
	if g == nil {
		return nil
	}
	out := make([]string, 0, len(g.listeners))
	for n := range g.listeners {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Ready reports whether a configuration has been applied.
func (d *DataPlane) Ready() bool { return d.cur.Load() != nil }
