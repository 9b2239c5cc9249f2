// Package xds is petmesh's xDS control-plane server: Envoy v3 resources
// (go-control-plane's protos) over ADS, state of the world and delta (see
// ads.go), one snapshot per node built by the translator from the current
// route table version, the registry and the node's metadata.
//
// Changes (a new route table version, a registry snapshot) are debounced:
// an isolated change is rebuilt at once (QuietPeriod 0); while changes
// arrive closer together than BusyQuietPeriod a rebuild waits until none
// has arrived for BusyQuietPeriod, and at most MaxDelay after the first
// pending change. Every type carries its own version (a hash of its
// content), so a node is sent only the types whose content changed for
// it: an endpoint change resends EDS, never listeners, routes or clusters,
// and a node that does not use the changed cluster is sent nothing (a
// delta stream is sent only the changed resources). Snapshots are checked with
// translate.Consistent before they are published; an inconsistent or
// untranslatable one is logged, counted and never published (the node
// keeps its previous configuration).
//
// The server tracks every node's stream (see Status): what was sent, what
// was ACKed, the last NACK, and the convergence time from a change's
// acceptance to the node's ACK of the version carrying it.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
)

// ErrInconsistent wraps translate.Consistent failures: such a snapshot is
// never published.
var ErrInconsistent = errors.New("inconsistent snapshot")

// Defaults of Options.
const (
	DefaultQuietPeriod     = time.Duration(0) // an isolated change is rebuilt at once
	DefaultBusyQuietPeriod = 100 * time.Millisecond
	DefaultMaxDelay        = time.Second
	DefaultNodeGrace       = 2 * time.Minute
	DefaultStaleAfter      = 60 * time.Second
)

// TableSource is what the server reads route tables from; store.Store
// implements it.
type TableSource interface {
	Watch(ctx context.Context) (<-chan store.Version, error)
	Get(ctx context.Context, n int64) (store.Entry, error)
}

var _ TableSource = store.Store(nil)

// Options configure New.
type Options struct {
	// Tables supplies route table versions. Required.
	Tables TableSource
	// Registry supplies the instances. Required.
	Registry registry.Watcher
	// Translate holds the JWT providers and the edge-local address.
	Translate translate.Options
	// QuietPeriod, BusyQuietPeriod and MaxDelay debounce changes: a
	// rebuild runs once no change has arrived for QuietPeriod (default 0:
	// an isolated change is rebuilt at once), or for BusyQuietPeriod
	// (default 100ms, at least QuietPeriod) when the pending changes
	// arrived closer together than that, and at the latest MaxDelay
	// (default 1s) after the first pending change.
	QuietPeriod, BusyQuietPeriod, MaxDelay time.Duration
	// NodeGrace is how long a node's snapshot is kept after its last
	// stream closed, so that a reconnecting proxy resyncs at once
	// (default 2m).
	NodeGrace time.Duration
	// StaleAfter: a connected node that has not ACKed its latest version
	// this long is reported stale (default 60s).
	StaleAfter time.Duration
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger; default discards.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// inputs are everything a snapshot is built from besides the node.
type inputs struct {
	table        *routes.Table
	tableVersion int64
	instances    []translate.Instance
	opts         translate.Options
}

// Server is the xDS server. Its methods are safe for concurrent use.
type Server struct {
	opts    Options
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics

	nextStream       atomic.Int64
	streamGoroutines sync.WaitGroup // the streams' receiving goroutines

	mu      sync.Mutex
	in      *inputs           // nil until the first table and registry state
	classes map[string]*built // node class → resources for in
	nodes   map[string]*node  // by node id
}

// New validates opts and returns a server; call Run (the change loop) and
// Serve (the gRPC listener).
func New(opts Options) (*Server, error) {
	if opts.Tables == nil {
		return nil, errors.New("xds: Tables is required")
	}
	if opts.Registry == nil {
		return nil, errors.New("xds: Registry is required")
	}
	if opts.QuietPeriod < 0 {
		return nil, fmt.Errorf("xds: QuietPeriod %v is negative", opts.QuietPeriod)
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.MaxDelay < opts.QuietPeriod {
		return nil, fmt.Errorf("xds: MaxDelay %v is shorter than QuietPeriod %v", opts.MaxDelay, opts.QuietPeriod)
	}
	if opts.BusyQuietPeriod <= 0 {
		opts.BusyQuietPeriod = DefaultBusyQuietPeriod
	}
	opts.BusyQuietPeriod = min(max(opts.BusyQuietPeriod, opts.QuietPeriod), opts.MaxDelay)
	if opts.NodeGrace <= 0 {
		opts.NodeGrace = DefaultNodeGrace
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = DefaultStaleAfter
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		now:     opts.Now,
		classes: map[string]*built{},
		nodes:   map[string]*node{},
	}
	m, err := newMetrics(opts.Registerer, s)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

// Ready reports whether the server has built its first state (a route
// table and the registry's content).
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.in != nil
}

// RouteVersion returns the route table version of the current state, and
// false before the first one.
func (s *Server) RouteVersion() (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.in == nil {
		return 0, false
	}
	return s.in.tableVersion, true
}

// Instances returns the registry instances of the current state.
func (s *Server) Instances() []translate.Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.in == nil {
		return nil
	}
	return s.in.instances
}

// TranslateOptions returns the translation options (for dry runs).
func (s *Server) TranslateOptions() translate.Options { return s.opts.Translate }

// Resources returns the resources last published to a node, or false.
func (s *Server) Resources(nodeID string) (*translate.Resources, bool) {
	s.mu.Lock()
	n, ok := s.nodes[nodeID]
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.published == nil {
		return nil, false
	}
	return n.published.resources, true
}

// GRPCServerOptions are the gRPC server parameters of the xDS listener:
// keepalive pings every 30s (10s to answer) so that dead proxies are
// noticed, a keepalive enforcement policy that tolerates clients pinging
// every 10s or more even without streams, and no limit on concurrent
// streams below 1<<20.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    30 * time.Second,
			Timeout: 10 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.MaxConcurrentStreams(1 << 20),
		grpc.MaxRecvMsgSize(4 << 20),
		// Static flow-control windows: no BDP estimation. With dynamic
		// windows, gRPC answers nearly every ACK (a small request after a
		// quiet period) with a window update and a BDP ping that the
		// proxy must answer: two more frames, a write and a read each way
		// per proxy and change. ADS requests are small; 1 MiB is plenty.
		grpc.StaticStreamWindowSize(1 << 20),
		grpc.StaticConnWindowSize(1 << 20),
	}
}

// Serve serves ADS (state of the world and delta; see ads.go) on ln until
// ctx is done, then stops gracefully (open streams end at once; the gRPC
// server is stopped hard after 5s). It returns nil after a clean stop.
func (s *Server) Serve(ctx context.Context, ln net.Listener, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(append(GRPCServerOptions(), opts...)...)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, &adsService{s: s, ctx: ctx})
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("xds: serve: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		gs.Stop()
		<-done
	}
	<-errc
	s.streamGoroutines.Wait()
	return nil
}

// Run follows the route table and the registry until ctx is done,
// rebuilding and publishing snapshots after debouncing, and forgets nodes
// disconnected for longer than NodeGrace. It returns nil when ctx ends.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tables, err := s.opts.Tables.Watch(ctx)
	if err != nil {
		return fmt.Errorf("xds: watch route tables: %w", err)
	}
	regs, err := s.opts.Registry.Watch(ctx)
	if err != nil {
		return fmt.Errorf("xds: watch registry: %w", err)
	}
	var (
		table     *store.Entry       // newest table read
		wantTable int64              // newest version announced (retried until read)
		reg       *registry.Snapshot // newest registry state
		dirty     bool               // something changed since the last rebuild
		changeAt  time.Time          // acceptance time of the oldest pending change
		deb       = debouncer{quiet: s.opts.QuietPeriod, busyQuiet: s.opts.BusyQuietPeriod, maxDelay: s.opts.MaxDelay}
	)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	sweepEvery := min(s.opts.NodeGrace/4, 5*time.Second)
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()

	// The first state is built at once; later ones are debounced.
	mark := func(at time.Time) {
		now := s.now()
		if !dirty {
			dirty, changeAt = true, at
		} else if at.Before(changeAt) {
			changeAt = at
		}
		deadline := deb.event(now)
		if !s.Ready() {
			timer.Reset(0)
			return
		}
		timer.Reset(max(deadline.Sub(now), 0))
	}
	loadTable := func() {
		if table != nil && table.Number >= wantTable {
			return
		}
		e, err := s.loadTable(ctx, wantTable)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("xds: read route table", "version", wantTable, "error", err)
				s.metrics.storeErrors.Inc()
			}
			return
		}
		table = &e
		mark(acceptedAt(e.Time, s.now()))
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case v, ok := <-tables:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("xds: route table watch ended")
			}
			if v.Number > wantTable || table == nil {
				wantTable = v.Number
				loadTable()
			}
		case snap, ok := <-regs:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("xds: registry watch ended")
			}
			reg = &snap
			mark(s.now())
		case <-timer.C:
			if !dirty || table == nil || reg == nil {
				continue
			}
			dirty = false
			deb.rebuilt()
			s.rebuild(table, *reg, changeAt)
		case <-sweep.C:
			loadTable() // retries a failed read
			s.forgetDisconnected()
		}
	}
}

// acceptedAt is when a stored version was accepted, for convergence: its
// timestamp, unless the writer's clock is off or the version is old (the
// current version at start-up), in which case now.
func acceptedAt(stamp, now time.Time) time.Time {
	if stamp.IsZero() || stamp.After(now) || now.Sub(stamp) > time.Minute {
		return now
	}
	return stamp
}

func (s *Server) loadTable(ctx context.Context, n int64) (store.Entry, error) {
	if n == 0 {
		return store.Entry{Table: &routes.Table{}}, nil
	}
	e, err := s.opts.Tables.Get(ctx, n)
	if err != nil {
		return store.Entry{}, err
	}
	if e.Table == nil {
		e.Table = &routes.Table{}
	}
	return e, nil
}

// Instances converts a registry snapshot into translator instances.
func Instances(snap registry.Snapshot) []translate.Instance {
	all := snap.All()
	out := make([]translate.Instance, 0, len(all))
	for _, i := range all {
		out = append(out, translate.Instance{
			Service: i.Service, ID: i.ID, Address: i.Address, Port: i.Port,
			Version: i.Version, Health: translate.Health(i.Health),
		})
	}
	return out
}

// rebuild installs new inputs and publishes every node's snapshot.
func (s *Server) rebuild(e *store.Entry, reg registry.Snapshot, changeAt time.Time) {
	start := s.now()
	in := &inputs{table: e.Table, tableVersion: e.Number, instances: Instances(reg), opts: s.opts.Translate}

	// Translate one node of each class without holding s.mu: streams keep
	// recording sends and ACKs meanwhile.
	s.mu.Lock()
	reps := map[string]*node{}
	tns := map[string]translate.Node{}
	for _, n := range s.nodes {
		reps[n.class], tns[n.class] = n, n.tn
	}
	s.mu.Unlock()
	classes := make(map[string]*built, len(tns))
	for key, tn := range tns {
		classes[key] = build(in, tn)
	}

	s.mu.Lock()
	first := s.in == nil
	s.in, s.classes = in, classes
	for key, b := range classes {
		s.noteBuildLocked(b, reps[key].id)
	}
	nodes := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, n)
	}
	s.mu.Unlock()

	// Publish node by node, releasing s.mu in between, so that the
	// streams of the nodes already published can send (OnStreamResponse)
	// while the others are being published. Only Run calls rebuild and
	// forgetDisconnected, so the nodes stay; a node attached meanwhile
	// is published by attachLocked from the new inputs.
	for _, n := range nodes {
		s.mu.Lock()
		s.publishLocked(n, changeAt)
		s.mu.Unlock()
	}
	s.metrics.rebuilds.Inc()
	s.metrics.rebuildSeconds.Observe(s.now().Sub(start).Seconds())
	s.metrics.routeVersion.Set(float64(e.Number))
	if first {
		s.log.Info("xds: first state built", "route_version", e.Number, "instances", len(in.instances))
	} else {
		s.log.Debug("xds: state rebuilt", "route_version", e.Number, "instances", len(in.instances), "nodes", len(nodes))
	}
}

// noteBuildLocked logs and counts a class that cannot be published
// (naming one of its nodes).
func (s *Server) noteBuildLocked(b *built, nodeID string) {
	if b.err == nil {
		return
	}
	reason := "translate"
	if errors.Is(b.err, ErrInconsistent) {
		reason = "inconsistent"
	}
	s.metrics.snapshotErrors.WithLabelValues(reason).Inc()
	s.log.Error("xds: snapshot not published", "node", nodeID, "route_version", s.in.tableVersion, "reason", reason, "error", b.err)
}

// publishLocked builds (or reuses) the node's class snapshot and hands it
// to the node's streams when any type's version changed. s.mu must be
// held (not n.mu). It never blocks on a stream: handing over is a pointer
// store and a non-blocking wake of the stream's sender.
func (s *Server) publishLocked(n *node, changeAt time.Time) {
	if s.in == nil {
		return
	}
	b, ok := s.classes[n.class]
	if !ok {
		b = build(s.in, n.tn)
		s.classes[n.class] = b
		s.noteBuildLocked(b, n.id)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if b.err != nil {
		n.buildErr = b.err.Error()
		return
	}
	n.buildErr = ""
	if n.published == b {
		return
	}
	initial := n.published == nil
	n.routeVersion = s.in.tableVersion
	if !initial && maps.Equal(n.published.versions, b.versions) {
		n.published = b
		return
	}
	for st := range n.streams {
		st.mu.Lock()
		st.snap = b
		st.mu.Unlock()
		st.signal()
	}
	s.metrics.published.Inc()
	now := s.now()
	for t, v := range b.versions {
		ts := n.typ(t)
		if ts.Latest == v {
			continue
		}
		ts.Latest, ts.LatestAt = v, now
		switch {
		case ts.Acked == v:
			ts.PendingSince = time.Time{} // back to what the node runs
		case !initial && ts.PendingSince.IsZero():
			ts.PendingSince = changeAt
		}
	}
	n.published = b
}

// forgetDisconnected clears the snapshots of nodes without a stream for
// longer than NodeGrace.
func (s *Server) forgetDisconnected() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.nodes {
		n.mu.Lock()
		gone := len(n.streams) == 0 && now.Sub(n.disconnectedAt) > s.opts.NodeGrace
		n.mu.Unlock()
		if gone {
			delete(s.nodes, id)
			s.log.Info("xds: forgot disconnected node", "node", id)
		}
	}
}
