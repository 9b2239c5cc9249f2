// Package client is petmesh's ADS client: one state-of-the-world gRPC stream
// to the control plane over which it subscribes to listeners and clusters
// (wildcard) and to the route configurations and load assignments that
// those reference (by name). Each response is decoded and handed, merged
// with the current state of every other type, to a validation callback
// (the data plane's build step). The client ACKs what the callback accepts
// and NACKs the rest with the callback's error in error_detail; a NACKed
// response leaves the previous state in force. When the stream breaks the
// client reconnects with exponential backoff and jitter while the data
// plane keeps serving the last good configuration.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs the client subscribes to, in the order it subscribes.
var typeURLs = []string{
	resourcev3.ListenerType,
	resourcev3.ClusterType,
	resourcev3.RouteType,
	resourcev3.EndpointType,
}

// Snapshot is one complete state of the world, by resource name. A Snapshot
// passed to a callback or returned by the client is never modified
// afterwards; callers must not modify it either. It has the same shape as
// dataplane.Resources so that one converts to the other.
type Snapshot struct {
	Listeners map[string]*listener.Listener
	Routes    map[string]*route.RouteConfiguration
	Clusters  map[string]*cluster.Cluster
	Endpoints map[string]*endpoint.ClusterLoadAssignment
}

func (s *Snapshot) clone() *Snapshot {
	return &Snapshot{
		Listeners: maps.Clone(s.Listeners),
		Routes:    maps.Clone(s.Routes),
		Clusters:  maps.Clone(s.Clusters),
		Endpoints: maps.Clone(s.Endpoints),
	}
}

func emptySnapshot() *Snapshot {
	return &Snapshot{
		Listeners: map[string]*listener.Listener{},
		Routes:    map[string]*route.RouteConfiguration{},
		Clusters:  map[string]*cluster.Cluster{},
		Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
	}
}

// ApplyFunc validates and applies a candidate snapshot. It returns nil when
// the snapshot was applied, or an error (naming the resource and field)
// when it was rejected, in which case the previous state must stay in
// force. It is called from the client's Run goroutine only, never
// concurrently.
type ApplyFunc func(ctx context.Context, s *Snapshot) error

// Config configures a Client.
type Config struct {
	// Server is the control plane's gRPC address (host:port). Empty means
	// no control plane: only the bootstrap is applied.
	Server string
	// Node identifies this proxy (id "edge~<instance>" or
	// "sidecar~<service>~<instance>", metadata with service, version, ports).
	Node *core.Node
	// Apply is the validation and apply step; required.
	Apply ApplyFunc
	// Bootstrap holds static resources applied before the first
	// connection and merged under every dynamic state (a dynamic resource
	// with the same name wins). Optional; see LoadBootstrap.
	Bootstrap *Snapshot
	// TokenFile holds the bearer token sent on every stream
	// ("authorization: Bearer <token>"); read again when it changes, so
	// the next reconnect uses a rotated token. Empty sends none.
	TokenFile string
	// CAFile (PEM) verifies the control plane's TLS certificate; setting
	// it turns TLS on. TLS turns it on with the system roots.
	CAFile string
	TLS    bool
	// ServerName overrides the name checked in the server's certificate
	// (default: the host of Server).
	ServerName string
	// Delta selects incremental ADS (DeltaAggregatedResources): only the
	// changed resources and the names of the removed ones are sent, which
	// at thousands of endpoints is what keeps an endpoint change cheap.
	// False uses the state of the world.
	Delta bool
	// DialOptions are extra gRPC dial options (tests use a bufconn dialer).
	DialOptions []grpc.DialOption
	// BackoffMin and BackoffMax bound the reconnect delay (defaults 250ms
	// and 30s); each delay is drawn uniformly from [d/2, d) with d doubling.
	BackoffMin, BackoffMax time.Duration
	// Logger receives connection and NACK events; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives the petmesh_xds_* metrics; none when nil.
	Registerer prometheus.Registerer
}

// Client is an ADS client. Run drives it; the accessors are safe for
// concurrent use.
type Client struct {
	cfg      Config
	security []grpc.DialOption // transport credentials and token
	log      *slog.Logger
	metrics  *metrics

	mu       sync.Mutex
	dynamic  *Snapshot // last accepted dynamic state
	versions map[string]string
	lastNack map[string]string
	connErr  error // why the last stream ended (nil while connected)
	// resVersions holds, per type, the version of every accepted
	// resource (delta only): the initial_resource_versions of a
	// reconnect.
	resVersions map[string]map[string]string
}

// New validates cfg and returns a client; call Run to start it.
func New(cfg Config) (*Client, error) {
	if cfg.Apply == nil {
		return nil, errors.New("xds client: Apply is required")
	}
	if cfg.Server != "" && cfg.Node.GetId() == "" {
		return nil, errors.New("xds client: node id is required")
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 250 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(30*time.Second, cfg.BackoffMin)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sec, err := securityDialOptions(cfg)
	if err != nil {
		return nil, fmt.Errorf("xds client: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg:      cfg,
		security: sec,
		log:      cfg.Logger.With("component", "xds-client"),
		metrics:  m,
		dynamic:  emptySnapshot(),
		versions: map[string]string{},
		lastNack: map[string]string{},
	}, nil
}

// Versions returns the accepted version_info per type URL.
func (c *Client) Versions() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.versions)
}

// LastNack returns the last NACK error per type URL (empty once accepted).
func (c *Client) LastNack() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.lastNack)
}

// StreamError returns why the last ADS stream ended (for example a
// codes.Unauthenticated status for a refused token), or nil while a
// stream is up or before the first one ended.
func (c *Client) StreamError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connErr
}

// Current returns the effective state last applied (bootstrap merged with
// dynamic resources).
func (c *Client) Current() *Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.effective(c.dynamic)
}

func (c *Client) effective(dyn *Snapshot) *Snapshot {
	if c.cfg.Bootstrap == nil {
		return dyn
	}
	out := c.cfg.Bootstrap.clone()
	maps.Copy(out.Listeners, dyn.Listeners)
	maps.Copy(out.Routes, dyn.Routes)
	maps.Copy(out.Clusters, dyn.Clusters)
	maps.Copy(out.Endpoints, dyn.Endpoints)
	return out
}

// Run applies the bootstrap (if any), then connects to the control plane
// and keeps the stream up, reconnecting with backoff, until ctx is done. It
// returns nil when ctx is canceled, or an error when the bootstrap is
// rejected or the server address is unusable.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.Bootstrap != nil {
		if err := c.cfg.Apply(ctx, c.effective(c.dynamic)); err != nil {
			return fmt.Errorf("xds client: bootstrap rejected: %w", err)
		}
	}
	if c.cfg.Server == "" {
		<-ctx.Done()
		return nil
	}
	opts := slices.Concat(c.security,
		[]grpc.DialOption{grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second})},
		c.cfg.DialOptions)
	conn, err := grpc.NewClient(c.cfg.Server, opts...)
	if err != nil {
		return fmt.Errorf("xds client: dial %s: %w", c.cfg.Server, err)
	}
	defer conn.Close()

	delay := c.cfg.BackoffMin
	for {
		var received bool
		var err error
		if c.cfg.Delta {
			received, err = c.deltaStream(ctx, conn)
		} else {
			received, err = c.stream(ctx, conn)
		}
		c.metrics.connected.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		c.connErr = err
		c.mu.Unlock()
		if received {
			delay = c.cfg.BackoffMin
		}
		wait := delay/2 + rand.N(delay/2+1)
		c.log.WarnContext(ctx, "xds stream broken; serving last good config", "err", err, "retry_in", wait.String())
		c.metrics.reconnects.Inc()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(delay*2, c.cfg.BackoffMax)
	}
}

// typeState is the per-type protocol state of one stream.
type typeState struct {
	version    string   // last ACKed version_info
	nonce      string   // last received nonce
	names      []string // subscribed names (nil: wildcard for LDS/CDS)
	subscribed bool
}

// stream runs one ADS stream until it breaks. received reports whether at
// least one response arrived (which resets the backoff).
func (c *Client) stream(ctx context.Context, conn *grpc.ClientConn) (received bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Fail fast (no WaitForReady): a connection that cannot be made (a
	// refused port, a TLS handshake with an unknown CA) ends the attempt
	// with its error, which StreamError shows, and Run retries with
	// backoff.
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	states := map[string]*typeState{}
	c.mu.Lock()
	for _, t := range typeURLs {
		// Resume from the last accepted versions so that an unchanged
		// server does not need to resend everything.
		states[t] = &typeState{version: c.versions[t]}
	}
	c.mu.Unlock()
	send := func(t string, nack *statuspb.Status) error {
		s := states[t]
		req := &discovery.DiscoveryRequest{
			Node:          c.cfg.Node,
			TypeUrl:       t,
			VersionInfo:   s.version,
			ResponseNonce: s.nonce,
			ResourceNames: s.names,
			ErrorDetail:   nack,
		}
		s.subscribed = true
		if err := st.Send(req); err != nil {
			return fmt.Errorf("send %s request: %w", shortType(t), err)
		}
		return nil
	}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if err := send(t, nil); err != nil {
			return false, err
		}
	}
	// Re-subscribe to what the current state references.
	if err := c.resubscribe(states, send); err != nil {
		return false, err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return received, fmt.Errorf("receive: %w", err)
		}
		if !received {
			received = true
			c.streamUp(ctx, "xds stream connected")
		}
		t := resp.GetTypeUrl()
		s, ok := states[t]
		if !ok {
			c.log.WarnContext(ctx, "xds response for an unrequested type ignored", "type_url", t)
			continue
		}
		s.nonce = resp.GetNonce()
		c.metrics.updates.WithLabelValues(shortType(t)).Inc()
		c.metrics.received.WithLabelValues(shortType(t)).Add(float64(proto.Size(resp)))
		if aerr := c.handle(ctx, t, resp); aerr != nil {
			c.metrics.nacks.WithLabelValues(shortType(t)).Inc()
			c.log.WarnContext(ctx, "xds config rejected (NACK)", "type", shortType(t), "version", resp.GetVersionInfo(), "err", aerr)
			if err := send(t, &statuspb.Status{Code: int32(codes.InvalidArgument), Message: aerr.Error()}); err != nil {
				return received, err
			}
			continue
		}
		s.version = resp.GetVersionInfo()
		c.metrics.acks.WithLabelValues(shortType(t)).Inc()
		c.metrics.setVersion(shortType(t), s.version)
		if err := send(t, nil); err != nil {
			return received, err
		}
		if err := c.resubscribe(states, send); err != nil {
			return received, err
		}
	}
}

// resubscribe sends RDS/EDS requests when the set of names referenced by
// the current listeners and clusters changed.
func (c *Client) resubscribe(states map[string]*typeState, send func(string, *statuspb.Status) error) error {
	cur := c.Current()
	want := map[string][]string{
		resourcev3.RouteType:    RouteNames(cur),
		resourcev3.EndpointType: EndpointNames(cur),
	}
	for _, t := range []string{resourcev3.RouteType, resourcev3.EndpointType} {
		names := want[t]
		s := states[t]
		if len(names) == 0 && !s.subscribed {
			continue // an empty name list would mean "wildcard"
		}
		if s.subscribed && slices.Equal(s.names, names) {
			continue
		}
		if len(names) == 0 {
			continue // keep the old subscription rather than ask for everything
		}
		s.names = names
		if err := send(t, nil); err != nil {
			return err
		}
	}
	return nil
}

// handle decodes resp, merges it into the state and calls Apply.
func (c *Client) handle(ctx context.Context, t string, resp *discovery.DiscoveryResponse) error {
	c.mu.Lock()
	cand := c.dynamic.clone()
	c.mu.Unlock()
	if err := replaceType(cand, t, resp.GetResources()); err != nil {
		c.setNack(t, err)
		return err
	}
	if err := c.cfg.Apply(ctx, c.effective(cand)); err != nil {
		c.setNack(t, err)
		return err
	}
	c.mu.Lock()
	c.dynamic = cand
	c.versions[t] = resp.GetVersionInfo()
	delete(c.lastNack, t)
	c.mu.Unlock()
	return nil
}

func (c *Client) setNack(t string, err error) {
	c.mu.Lock()
	c.lastNack[t] = err.Error()
	c.mu.Unlock()
}

// replaceType decodes resources of type t and replaces that type in s.
func replaceType(s *Snapshot, t string, res []*anypb.Any) error {
	switch t {
	case resourcev3.ListenerType:
		m, err := decodeAll[*listener.Listener](res, t, func(r *listener.Listener) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Listeners = m
	case resourcev3.RouteType:
		m, err := decodeAll[*route.RouteConfiguration](res, t, func(r *route.RouteConfiguration) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Routes = m
	case resourcev3.ClusterType:
		m, err := decodeAll[*cluster.Cluster](res, t, func(r *cluster.Cluster) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Clusters = m
	case resourcev3.EndpointType:
		m, err := decodeAll[*endpoint.ClusterLoadAssignment](res, t, func(r *endpoint.ClusterLoadAssignment) string { return r.GetClusterName() })
		if err != nil {
			return err
		}
		s.Endpoints = m
	default:
		return fmt.Errorf("unsupported type %s", t)
	}
	return nil
}

// decodeAll decodes the resources of a state-of-the-world response of
// type t into a map by name, refusing duplicate names.
func decodeAll[M proto.Message](res []*anypb.Any, t string, name func(M) string) (map[string]M, error) {
	out := make(map[string]M, len(res))
	for i, a := range res {
		m, n, err := decodeResource(a, t, i, name)
		if err != nil {
			return nil, err
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("%s %q: duplicate resource name", shortType(t), n)
		}
		out[n] = m
	}
	return out, nil
}

// decodeResource decodes a, the resource at index i of a response of type
// t, and returns it with its name: a resource of another type, one that
// does not decode to M, or one without a name is an error. Both the
// state-of-the-world and the delta variant check each resource here.
func decodeResource[M proto.Message](a *anypb.Any, t string, i int, name func(M) string) (M, string, error) {
	var zero M
	if a.GetTypeUrl() != t {
		return zero, "", fmt.Errorf("%s resource %d: type %q in a %s response", shortType(t), i, a.GetTypeUrl(), shortType(t))
	}
	msg, err := a.UnmarshalNew()
	if err != nil {
		return zero, "", fmt.Errorf("%s resource %d: decode: %w", shortType(t), i, err)
	}
	m, ok := msg.(M)
	if !ok {
		return zero, "", fmt.Errorf("%s resource %d: unexpected message %T", shortType(t), i, msg)
	}
	n := name(m)
	if n == "" {
		return zero, "", fmt.Errorf("%s resource %d: empty name", shortType(t), i)
	}
	return m, n, nil
}

// RouteNames returns the sorted route configuration names that the
// listeners of s reference through RDS.
func RouteNames(s *Snapshot) []string {
	var names []string
	for _, l := range s.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				tc := f.GetTypedConfig()
				if tc == nil {
					continue
				}
				var m hcm.HttpConnectionManager
				if tc.UnmarshalTo(&m) != nil {
					continue
				}
				if n := m.GetRds().GetRouteConfigName(); n != "" {
					names = append(names, n)
				}
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// EndpointNames returns the sorted load assignment names that the EDS
// clusters of s reference (eds_cluster_config.service_name, else the
// cluster name).
func EndpointNames(s *Snapshot) []string {
	var names []string
	for _, c := range s.Clusters {
		if c.GetType() != cluster.Cluster_EDS {
			continue
		}
		n := c.GetEdsClusterConfig().GetServiceName()
		if n == "" {
			n = c.GetName()
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func shortType(t string) string {
	switch t {
	case resourcev3.ListenerType:
		return "listener"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	}
	return t
}

// streamUp records that a stream received its first response: the
// connection error is cleared, the connected gauge set, and msg logged.
func (c *Client) streamUp(ctx context.Context, msg string) {
	c.mu.Lock()
	c.connErr = nil
	c.mu.Unlock()
	c.metrics.connected.Set(1)
	c.log.InfoContext(ctx, msg, "server", c.cfg.Server)
}
