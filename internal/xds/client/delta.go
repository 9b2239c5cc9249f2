package client

import (
	"context"
	"fmt"
	"maps"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// Incremental (delta) ADS: the client subscribes to listeners and
// clusters with "*" and to the route configurations and load assignments
// they reference by name; the server sends only the resources that changed
// and the names of the removed ones. Each response is merged into a copy
// of the state and applied whole (Apply sees the same complete snapshots
// as with the state of the world); accepted → ACK (the response's nonce),
// rejected → NACK (nonce and error_detail) and the state stays as it was.
// On reconnect every type is subscribed again with
// initial_resource_versions (the versions of the resources the client
// holds), so the server sends only what changed while it was away and
// the removals.

// deltaTypeState is the per-type protocol state of one delta stream.
type deltaTypeState struct {
	names      []string // subscribed names (["*"] for LDS/CDS)
	subscribed bool
}

// deltaStream runs one delta ADS stream until it breaks. received
// reports whether at least one response arrived.
func (c *Client) deltaStream(ctx context.Context, conn *grpc.ClientConn) (received bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(sctx)
	if err != nil {
		return false, fmt.Errorf("open delta stream: %w", err)
	}
	states := map[string]*deltaTypeState{}
	for _, t := range typeURLs {
		states[t] = &deltaTypeState{}
	}
	nodeSent := false
	send := func(req *discovery.DeltaDiscoveryRequest) error {
		if !nodeSent {
			req.Node = c.cfg.Node
			nodeSent = true
		}
		if err := st.Send(req); err != nil {
			return fmt.Errorf("send %s delta request: %w", shortType(req.GetTypeUrl()), err)
		}
		return nil
	}
	// subscribe sends the first request of type t on this stream, or the
	// changes of its subscription.
	subscribe := func(t string, names []string) error {
		s := states[t]
		if !s.subscribed {
			s.names, s.subscribed = names, true
			c.mu.Lock()
			initial := maps.Clone(c.resVersions[t])
			c.mu.Unlock()
			return send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: names, InitialResourceVersions: initial})
		}
		var add, drop []string
		for _, n := range names {
			if !slices.Contains(s.names, n) {
				add = append(add, n)
			}
		}
		for _, n := range s.names {
			if !slices.Contains(names, n) {
				drop = append(drop, n)
			}
		}
		s.names = names
		if len(add) == 0 && len(drop) == 0 {
			return nil
		}
		// No nonce: a subscription change, not an answer to a response.
		return send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop})
	}
	resubscribe := func() error {
		cur := c.Current()
		for t, names := range map[string][]string{resourcev3.RouteType: RouteNames(cur), resourcev3.EndpointType: EndpointNames(cur)} {
			if len(names) == 0 && !states[t].subscribed {
				continue // a first request without names would mean "wildcard"
			}
			if err := subscribe(t, names); err != nil {
				return err
			}
		}
		return nil
	}
	for _, t := range []string{resourcev3.ListenerType, resourcev3.ClusterType} {
		if err := subscribe(t, []string{"*"}); err != nil {
			return false, err
		}
	}
	if err := resubscribe(); err != nil {
		return false, err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return received, fmt.Errorf("receive: %w", err)
		}
		if !received {
			received = true
			c.streamUp(ctx, "xds delta stream connected")
		}
		t := resp.GetTypeUrl()
		if _, ok := states[t]; !ok {
			c.log.WarnContext(ctx, "xds response for an unrequested type ignored", "type_url", t)
			continue
		}
		c.metrics.updates.WithLabelValues(shortType(t)).Inc()
		c.metrics.received.WithLabelValues(shortType(t)).Add(float64(proto.Size(resp)))
		if aerr := c.handleDelta(ctx, t, resp, states); aerr != nil {
			c.metrics.nacks.WithLabelValues(shortType(t)).Inc()
			c.log.WarnContext(ctx, "xds config rejected (NACK)", "type", shortType(t), "version", resp.GetSystemVersionInfo(), "err", aerr)
			if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
				ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: aerr.Error()}}); err != nil {
				return received, err
			}
			continue
		}
		c.metrics.acks.WithLabelValues(shortType(t)).Inc()
		c.metrics.setVersion(shortType(t), resp.GetSystemVersionInfo())
		if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}); err != nil {
			return received, err
		}
		if err := resubscribe(); err != nil {
			return received, err
		}
	}
}

// handleDelta merges resp into a copy of the state, drops the route
// configurations and load assignments no longer referenced (as a state of
// the world response would), and calls Apply.
func (c *Client) handleDelta(ctx context.Context, t string, resp *discovery.DeltaDiscoveryResponse, states map[string]*deltaTypeState) error {
	c.mu.Lock()
	cand := c.dynamic.clone()
	vers := map[string]map[string]string{}
	for _, ty := range typeURLs {
		vers[ty] = maps.Clone(c.resVersions[ty])
		if vers[ty] == nil {
			vers[ty] = map[string]string{}
		}
	}
	c.mu.Unlock()
	if err := mergeType(cand, t, resp.GetResources(), resp.GetRemovedResources(), vers[t]); err != nil {
		c.setNack(t, err)
		return err
	}
	// What the candidate no longer references is dropped.
	eff := c.effective(cand)
	keepOnly(cand.Routes, vers[resourcev3.RouteType], RouteNames(eff))
	keepOnly(cand.Endpoints, vers[resourcev3.EndpointType], EndpointNames(eff))
	if err := c.cfg.Apply(ctx, c.effective(cand)); err != nil {
		c.setNack(t, err)
		return err
	}
	c.mu.Lock()
	c.dynamic = cand
	c.resVersions = vers
	c.versions[t] = resp.GetSystemVersionInfo()
	delete(c.lastNack, t)
	c.mu.Unlock()
	return nil
}

// keepOnly deletes from m and vers every name not in names.
func keepOnly[M any](m map[string]M, vers map[string]string, names []string) {
	for n := range m {
		if _, found := slices.BinarySearch(names, n); !found {
			delete(m, n)
			delete(vers, n)
		}
	}
}

// mergeType decodes the changed resources of type t into s (replacing the
// type's map by a modified copy) and deletes the removed ones; vers (the
// type's resource versions) is updated likewise.
func mergeType(s *Snapshot, t string, res []*discovery.Resource, removed []string, vers map[string]string) error {
	switch t {
	case resourcev3.ListenerType:
		m, err := mergeAll(s.Listeners, res, removed, vers, t, func(r *listener.Listener) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Listeners = m
	case resourcev3.RouteType:
		m, err := mergeAll(s.Routes, res, removed, vers, t, func(r *route.RouteConfiguration) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Routes = m
	case resourcev3.ClusterType:
		m, err := mergeAll(s.Clusters, res, removed, vers, t, func(r *cluster.Cluster) string { return r.GetName() })
		if err != nil {
			return err
		}
		s.Clusters = m
	case resourcev3.EndpointType:
		m, err := mergeAll(s.Endpoints, res, removed, vers, t, func(r *endpoint.ClusterLoadAssignment) string { return r.GetClusterName() })
		if err != nil {
			return err
		}
		s.Endpoints = m
	default:
		return fmt.Errorf("unsupported type %s", t)
	}
	return nil
}

func mergeAll[M proto.Message](cur map[string]M, res []*discovery.Resource, removed []string, vers map[string]string, t string, name func(M) string) (map[string]M, error) {
	out := maps.Clone(cur)
	if out == nil {
		out = map[string]M{}
	}
	seen := make(map[string]struct{}, len(res))
	for i, r := range res {
		a := r.GetResource()
		if a == nil {
			return nil, fmt.Errorf("%s resource %d (%q): no resource (a delta response names removals in removed_resources)", shortType(t), i, r.GetName())
		}
		m, n, err := decodeResource(a, t, i, name)
		if err != nil {
			return nil, err
		}
		if r.GetName() != "" && r.GetName() != n {
			return nil, fmt.Errorf("%s %q: the delta resource is named %q", shortType(t), n, r.GetName())
		}
		if _, dup := seen[n]; dup {
			return nil, fmt.Errorf("%s %q: duplicate resource name", shortType(t), n)
		}
		seen[n] = struct{}{}
		out[n] = m
		vers[n] = r.GetVersion()
	}
	for _, n := range removed {
		if _, dup := seen[n]; dup {
			return nil, fmt.Errorf("%s %q: both changed and removed", shortType(t), n)
		}
		delete(out, n)
		delete(vers, n)
	}
	return out, nil
}
