package xds_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// The tests below drive the ADS protocol by hand (raw gRPC streams) to
// pin what the stream server answers, in which order, and when it stays
// silent.

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// sotwClient is a hand-driven state-of-the-world ADS stream.
type sotwClient struct {
	t      *testing.T
	st     grpc.BidiStreamingClient[discovery.DiscoveryRequest, discovery.DiscoveryResponse]
	node   *core.Node
	resps  chan *discovery.DiscoveryResponse
	errc   chan error
	cancel context.CancelFunc
}

func newSotw(t *testing.T, addr string, node *core.Node) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotwClient{t: t, st: st, node: node, resps: make(chan *discovery.DiscoveryResponse, 64), errc: make(chan error, 1), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := st.Recv()
			if err != nil {
				c.errc <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *sotwClient) send(typeURL, version, nonce string, errMsg string, names ...string) {
	c.t.Helper()
	req := &discovery.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
	if errMsg != "" {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: errMsg}
	}
	c.node = nil // only the first request carries the node
	if err := c.st.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// next waits for the next response.
func (c *sotwClient) next() *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no response")
	}
	return nil
}

// quiet fails if a response arrives within d (the server must stay
// silent).
func (c *sotwClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected %s response %s: %v", xds.ShortType(r.GetTypeUrl()), r.GetVersionInfo(), names(r.GetResources()))
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
	}
}

func names(as []*anypb.Any) []string {
	var out []string
	for _, a := range as {
		out = append(out, resourceName(a))
	}
	return out
}

func resourceName(a *anypb.Any) string {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "?" + err.Error()
	}
	switch x := m.(type) {
	case *clusterv3.Cluster:
		return x.GetName()
	case *listenerv3.Listener:
		return x.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return x.GetClusterName()
	case interface{ GetName() string }:
		return x.GetName()
	}
	return "?"
}

// referenced returns the RDS names of listeners or the EDS names of
// clusters in r.
func referenced(t *testing.T, r *discovery.DiscoveryResponse) []string {
	t.Helper()
	s := &client.Snapshot{Listeners: map[string]*listenerv3.Listener{}, Clusters: map[string]*clusterv3.Cluster{}}
	for _, a := range r.GetResources() {
		switch r.GetTypeUrl() {
		case resource.ClusterType:
			c := &clusterv3.Cluster{}
			if err := a.UnmarshalTo(c); err != nil {
				t.Fatal(err)
			}
			s.Clusters[c.GetName()] = c
		case resource.ListenerType:
			l := &listenerv3.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				t.Fatal(err)
			}
			s.Listeners[l.GetName()] = l
		}
	}
	if r.GetTypeUrl() == resource.ClusterType {
		return client.EndpointNames(s)
	}
	return client.RouteNames(s)
}

// syncSotw subscribes like Envoy (CDS and LDS wildcard, then EDS and RDS
// by the names they reference), ACKs everything and returns the last
// response of each type once the proxy's status is synced.
func syncSotw(t *testing.T, h *xdstest.ControlPlane, c *sotwClient, id string) map[string]*discovery.DiscoveryResponse {
	t.Helper()
	c.send(resource.ClusterType, "", "", "")
	c.send(resource.ListenerType, "", "", "")
	last := map[string]*discovery.DiscoveryResponse{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case r := <-c.resps:
			last[r.GetTypeUrl()] = r
			c.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), "", subscribedNames(t, last, r.GetTypeUrl())...)
			switch r.GetTypeUrl() {
			case resource.ClusterType:
				c.send(resource.EndpointType, version(last, resource.EndpointType), nonce(last, resource.EndpointType), "", referenced(t, r)...)
			case resource.ListenerType:
				c.send(resource.RouteType, version(last, resource.RouteType), nonce(last, resource.RouteType), "", referenced(t, r)...)
			}
			continue
		case err := <-c.errc:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(20 * time.Millisecond): // then poll the status
		}
		if st, ok := h.Server.Proxy(id); ok && st.Synced && len(st.Types) == 4 && len(last) == 4 {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("not synced; last responses %v", last)
		}
	}
}

// subscribedNames are the names a proxy subscribes to for t (EDS: the
// clusters' names, RDS: the listeners'), from the last responses.
func subscribedNames(t *testing.T, last map[string]*discovery.DiscoveryResponse, typ string) []string {
	t.Helper()
	switch typ {
	case resource.EndpointType:
		if r := last[resource.ClusterType]; r != nil {
			return referenced(t, r)
		}
	case resource.RouteType:
		if r := last[resource.ListenerType]; r != nil {
			return referenced(t, r)
		}
	}
	return nil
}

func version(last map[string]*discovery.DiscoveryResponse, t string) string {
	return last[t].GetVersionInfo()
}

func nonce(last map[string]*discovery.DiscoveryResponse, t string) string {
	return last[t].GetNonce()
}

func TestADSStateOfTheWorld(t *testing.T) {
	h := xdstest.Start(t, xdstest.Options{})
	ctx := tu.Context(t)
	node := xdstest.EdgeNode("raw")

	t.Run("wildcard and named requests are answered at once, unknown names skipped", func(t *testing.T) {
		c := newSotw(t, h.Addr(), node)
		c.send(resource.ClusterType, "", "", "")
		cds := c.next()
		if cds.GetTypeUrl() != resource.ClusterType || len(cds.GetResources()) < 3 || cds.GetNonce() == "" {
			t.Fatalf("CDS response %v", names(cds.GetResources()))
		}
		c.send(resource.EndpointType, "", "", "", "stats", "no-such-cluster", "pets")
		eds := c.next()
		if got := names(eds.GetResources()); !slices.Equal(got, []string{"pets", "stats"}) {
			t.Fatalf("EDS by name: %v, want [pets stats]", got)
		}
		// The ACK of the current version: silence.
		c.send(resource.EndpointType, eds.GetVersionInfo(), eds.GetNonce(), "", "stats", "no-such-cluster", "pets")
		c.send(resource.ClusterType, cds.GetVersionInfo(), cds.GetNonce(), "")
		c.quiet(300 * time.Millisecond)
		// A new name at the same version: answered with the new set.
		c.send(resource.EndpointType, eds.GetVersionInfo(), eds.GetNonce(), "", "stats", "pets", "sync")
		eds2 := c.next()
		if got := names(eds2.GetResources()); eds2.GetVersionInfo() != eds.GetVersionInfo() || !slices.Equal(got, []string{"pets", "stats", "sync"}) {
			t.Fatalf("EDS after a new name: %s %v", eds2.GetVersionInfo(), got)
		}
		// A stale nonce is ignored, even with new names.
		c.send(resource.EndpointType, eds.GetVersionInfo(), eds.GetNonce(), "", "pets")
		c.quiet(300 * time.Millisecond)
		// An unknown type is never answered (the stream stays up).
		c.send("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "", "", "")
		c.quiet(200 * time.Millisecond)
	})

	t.Run("a change is sent in ADS order; a type with a newer version than in flight holds back the later ones", func(t *testing.T) {
		c := newSotw(t, h.Addr(), node)
		last := syncSotw(t, h, c, node.GetId())
		put := func(change func(tb *routes.Table) *routes.Table) {
			t.Helper()
			cur, err := h.Store.Current(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.Store.Put(ctx, cur.Number, change(cur.Table), "alice", "test"); err != nil {
				t.Fatal(err)
			}
		}
		// A canary: new clusters (pets~v1, pets~v2), their endpoints,
		// new routes: sent in that order.
		put(func(tb *routes.Table) *routes.Table {
			out, err := tb.SetWeights("pets", map[string]int{"v1": 90, "v2": 10})
			if err != nil {
				t.Fatal(err)
			}
			return out
		})
		var got []string
		resps := map[string]*discovery.DiscoveryResponse{}
		for len(got) < 3 {
			r := c.next()
			got = append(got, xds.ShortType(r.GetTypeUrl()))
			resps[r.GetTypeUrl()] = r
		}
		if !slices.Equal(got, []string{"cluster", "endpoint", "route"}) {
			t.Fatalf("responses after a canary: %v, want [cluster endpoint route]", got)
		}
		if !slices.Contains(names(resps[resource.ClusterType].GetResources()), "pets~v2") {
			t.Fatalf("clusters: %v", names(resps[resource.ClusterType].GetResources()))
		}
		// ACK endpoints and routes, not clusters. A change of clusters
		// and routes now: the clusters must wait for the ACK of their
		// previous version, and the routes wait for the clusters.
		r := resps[resource.RouteType]
		c.send(resource.RouteType, r.GetVersionInfo(), r.GetNonce(), "", referenced(t, last[resource.ListenerType])...)
		r = resps[resource.EndpointType]
		c.send(resource.EndpointType, r.GetVersionInfo(), r.GetNonce(), "", referenced(t, last[resource.ClusterType])...)
		put(func(tb *routes.Table) *routes.Table {
			out := tb.Clone()
			out.Route("stats").Timeout = routes.Dur(7 * time.Second)
			svc := out.Services["stats"]
			svc.ConnectTimeout = routes.Dur(3 * time.Second)
			out.Services["stats"] = svc
			return out
		})
		tu.Eventually(t, 5*time.Second, func() error {
			st, _ := h.Server.Proxy(node.GetId())
			for _, ts := range st.Types {
				if ts.Type == "route" && ts.Latest != r.GetVersionInfo() && ts.Latest != resps[resource.RouteType].GetVersionInfo() && ts.Sent != ts.Latest {
					return nil
				}
			}
			return fmt.Errorf("new routes not published yet: %+v", st.Types)
		})
		c.quiet(300 * time.Millisecond)
		cds := resps[resource.ClusterType]
		c.send(resource.ClusterType, cds.GetVersionInfo(), cds.GetNonce(), "")
		got = nil
		for len(got) < 2 {
			r := c.next()
			got = append(got, xds.ShortType(r.GetTypeUrl()))
			c.send(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), "", subscribedNames(t, map[string]*discovery.DiscoveryResponse{resource.ClusterType: cds, resource.ListenerType: last[resource.ListenerType]}, r.GetTypeUrl())...)
		}
		if !slices.Equal(got, []string{"cluster", "route"}) {
			t.Fatalf("after the clusters' ACK: %v, want [cluster route]", got)
		}
	})

	t.Run("a NACKed version is not resent; the next one is", func(t *testing.T) {
		c := newSotw(t, h.Addr(), node)
		last := syncSotw(t, h, c, node.GetId())
		eds := last[resource.EndpointType]
		if err := h.Registry.Register(ctx, registry.Registration{Service: "stats", ID: "stats-9", Address: "127.0.0.1", Port: 9009, TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		r := c.next()
		if r.GetTypeUrl() != resource.EndpointType || r.GetVersionInfo() == eds.GetVersionInfo() {
			t.Fatalf("after an endpoint change: %s %s", xds.ShortType(r.GetTypeUrl()), r.GetVersionInfo())
		}
		c.send(resource.EndpointType, eds.GetVersionInfo(), r.GetNonce(), "stats-9 is not welcome", referenced(t, last[resource.ClusterType])...)
		tu.Eventually(t, 5*time.Second, func() error {
			st, _ := h.Server.Proxy(node.GetId())
			for _, ts := range st.Types {
				if ts.Type == "endpoint" && ts.LastNack != nil && ts.LastNack.Version == r.GetVersionInfo() && strings.Contains(ts.LastNack.Message, "not welcome") && !st.Synced {
					return nil
				}
			}
			return fmt.Errorf("NACK not recorded: %+v", st.Types)
		})
		c.quiet(300 * time.Millisecond)
		if err := h.Registry.Deregister(ctx, "stats-9"); err != nil {
			t.Fatal(err)
		}
		r2 := c.next()
		if r2.GetTypeUrl() != resource.EndpointType || r2.GetVersionInfo() != eds.GetVersionInfo() {
			t.Fatalf("after the next change: %s %s, want endpoint %s", xds.ShortType(r2.GetTypeUrl()), r2.GetVersionInfo(), eds.GetVersionInfo())
		}
	})

	t.Run("a reconnecting proxy at the current version is sent it again", func(t *testing.T) {
		c := newSotw(t, h.Addr(), node)
		last := syncSotw(t, h, c, node.GetId())
		c.cancel()
		c2 := newSotw(t, h.Addr(), node)
		c2.send(resource.ClusterType, version(last, resource.ClusterType), "", "")
		if r := c2.next(); r.GetVersionInfo() != version(last, resource.ClusterType) || len(r.GetResources()) == 0 {
			t.Fatalf("resync: %s %d resources", r.GetVersionInfo(), len(r.GetResources()))
		}
	})

	t.Run("bad first requests end the stream", func(t *testing.T) {
		c := newSotw(t, h.Addr(), &core.Node{})
		c.send(resource.ClusterType, "", "", "")
		if err := <-c.errc; status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "node.id") {
			t.Fatalf("without a node id: %v", err)
		}
		c = newSotw(t, h.Addr(), xdstest.EdgeNode("typeless"))
		c.send("", "", "", "")
		if err := <-c.errc; status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "type_url") {
			t.Fatalf("without a type: %v", err)
		}
	})
}

// deltaClient is a hand-driven incremental ADS stream.
type deltaClient struct {
	t     *testing.T
	st    grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
	node  *core.Node
	resps chan *discovery.DeltaDiscoveryResponse
	errc  chan error
}

func newDelta(t *testing.T, addr string, node *core.Node) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, addr)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, st: st, node: node, resps: make(chan *discovery.DeltaDiscoveryResponse, 64), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := st.Recv()
			if err != nil {
				c.errc <- err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *deltaClient) send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	req.Node, c.node = c.node, nil
	if err := c.st.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

func (c *deltaClient) ack(r *discovery.DeltaDiscoveryResponse) {
	c.t.Helper()
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
}

func (c *deltaClient) next() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r := <-c.resps:
		return r
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no response")
	}
	return nil
}

func (c *deltaClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected %s response: %v removed %v", xds.ShortType(r.GetTypeUrl()), deltaNames(r), r.GetRemovedResources())
	case err := <-c.errc:
		c.t.Fatalf("stream ended: %v", err)
	case <-time.After(d):
	}
}

func deltaNames(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		if res.GetName() != resourceName(res.GetResource()) || res.GetVersion() == "" {
			return []string{"bad resource " + res.GetName()}
		}
		out = append(out, res.GetName())
	}
	return out
}

// TestADSDelta: incremental ADS sends only what changed for the stream,
// removals by name, nothing for a NACKed version, and nothing to a
// reconnecting proxy that already holds every resource.
func TestADSDelta(t *testing.T) {
	h := xdstest.Start(t, xdstest.Options{})
	ctx := tu.Context(t)
	node := sidecarNode("pets", "delta-1")
	id := node.GetId()
	c := newDelta(t, h.Addr(), node)

	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType})
	cds := c.next()
	if cds.GetTypeUrl() != resource.ClusterType || len(cds.GetResources()) == 0 || cds.GetSystemVersionInfo() == "" {
		t.Fatalf("CDS: %v", deltaNames(cds))
	}
	c.ack(cds)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType})
	lds := c.next()
	c.ack(lds)
	var edsNames []string
	for _, res := range cds.GetResources() {
		cl := &clusterv3.Cluster{}
		if err := res.GetResource().UnmarshalTo(cl); err != nil {
			t.Fatal(err)
		}
		if cl.GetType() == clusterv3.Cluster_EDS {
			edsNames = append(edsNames, cl.GetName())
		}
	}
	slices.Sort(edsNames)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: edsNames})
	eds := c.next()
	if got := deltaNames(eds); !slices.Equal(got, edsNames) {
		t.Fatalf("EDS: %v, want %v", got, edsNames)
	}
	c.ack(eds)
	routeNames := referenced(t, &discovery.DiscoveryResponse{TypeUrl: resource.ListenerType, Resources: anys(lds.GetResources())})
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType, ResourceNamesSubscribe: routeNames})
	c.ack(c.next())
	tu.Eventually(t, 5*time.Second, func() error {
		if st, _ := h.Server.Proxy(id); !st.Synced || len(st.Types) != 4 {
			return fmt.Errorf("not synced: %+v", st.Types)
		}
		return nil
	})
	versions := func() map[string]string {
		st, _ := h.Server.Proxy(id)
		return vmap(st)
	}
	before := versions()

	// One endpoint change: one load assignment, nothing else.
	if err := h.Registry.Register(ctx, registry.Registration{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 9301, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r := c.next()
	if r.GetTypeUrl() != resource.EndpointType || !slices.Equal(deltaNames(r), []string{"stats"}) || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("after an endpoint change: %s %v removed %v", xds.ShortType(r.GetTypeUrl()), deltaNames(r), r.GetRemovedResources())
	}
	c.ack(r)
	c.quiet(300 * time.Millisecond)
	tu.Eventually(t, 5*time.Second, func() error {
		st, _ := h.Server.Proxy(id)
		if !st.Synced || vmap(st)["endpoint"] == before["endpoint"] {
			return fmt.Errorf("endpoint ACK not recorded: %+v", st.Types)
		}
		for _, ty := range []string{"cluster", "listener", "route"} {
			if vmap(st)[ty] != before[ty] {
				return fmt.Errorf("%s changed", ty)
			}
		}
		return nil
	})

	// A NACK: the version is not resent; the next change is.
	if err := h.Registry.Register(ctx, registry.Registration{Service: "stats", ID: "stats-2", Address: "127.0.0.1", Port: 9302, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r = c.next()
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: r.GetNonce(), ErrorDetail: &rpcstatus.Status{Code: 3, Message: "no thanks"}})
	c.quiet(300 * time.Millisecond)
	tu.Eventually(t, 5*time.Second, func() error {
		st, _ := h.Server.Proxy(id)
		for _, ts := range st.Types {
			if ts.Type == "endpoint" && ts.LastNack != nil && ts.LastNack.Message == "no thanks" && ts.LastNack.Version == r.GetSystemVersionInfo() && !st.Synced {
				return nil
			}
		}
		return fmt.Errorf("NACK not recorded: %+v", st.Types)
	})
	if err := h.Registry.Deregister(ctx, "stats-2"); err != nil {
		t.Fatal(err)
	}
	// stats-2 never reached the client: the assignment it holds (stats-1
	// only) is the current one again, so the version is confirmed with
	// nothing to send.
	c.quiet(300 * time.Millisecond)
	tu.Eventually(t, 5*time.Second, func() error {
		if st, _ := h.Server.Proxy(id); !st.Synced {
			return fmt.Errorf("not synced after the change undoing the NACKed one: %+v", st.Types)
		}
		return nil
	})

	// A service removed from the table: its cluster and assignment are
	// removed by name.
	cur, err := h.Store.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tb := cur.Table.Clone()
	for i := range tb.Routes {
		if tb.Routes[i].Name == "sync" {
			tb.Routes = slices.Delete(tb.Routes, i, i+1)
			break
		}
	}
	delete(tb.Services, "sync")
	if _, err := h.Store.Put(ctx, cur.Number, tb, "alice", "no sync"); err != nil {
		t.Fatal(err)
	}
	r = c.next()
	if r.GetTypeUrl() != resource.ClusterType || !slices.Contains(r.GetRemovedResources(), "sync") {
		t.Fatalf("after removing sync: %s %v removed %v", xds.ShortType(r.GetTypeUrl()), deltaNames(r), r.GetRemovedResources())
	}
	c.ack(r)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesUnsubscribe: []string{"sync"}})
	for {
		r := c.next()
		c.ack(r)
		if r.GetTypeUrl() == resource.RouteType {
			break
		}
		if r.GetTypeUrl() == resource.EndpointType && slices.Contains(deltaNames(r), "sync") {
			t.Fatal("an unsubscribed assignment was sent")
		}
	}
	tu.Eventually(t, 5*time.Second, func() error {
		if st, _ := h.Server.Proxy(id); !st.Synced {
			return fmt.Errorf("not synced: %+v", st.Types)
		}
		return nil
	})

	// A reconnect with every resource it holds: nothing to send, synced.
	held := map[string]map[string]string{}
	c2 := newDelta(t, h.Addr(), node)
	for _, typ := range []string{resource.ClusterType, resource.ListenerType} {
		c2.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ})
		r := c2.next()
		c2.ack(r)
		held[typ] = map[string]string{}
		for _, res := range r.GetResources() {
			held[typ][res.GetName()] = res.GetVersion()
		}
	}
	c3 := newDelta(t, h.Addr(), sidecarNode("pets", "delta-1"))
	c3.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, InitialResourceVersions: held[resource.ClusterType]})
	c3.quiet(300 * time.Millisecond)
	held[resource.ClusterType]["pets"] = "stale"
	c4 := newDelta(t, h.Addr(), sidecarNode("pets", "delta-1"))
	c4.send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, InitialResourceVersions: held[resource.ClusterType]})
	if r := c4.next(); !slices.Equal(deltaNames(r), []string{"pets"}) {
		t.Fatalf("reconnect with one stale cluster: %v", deltaNames(r))
	}
}

func anys(rs []*discovery.Resource) []*anypb.Any {
	var out []*anypb.Any
	for _, r := range rs {
		out = append(out, r.GetResource())
	}
	return out
}

func vmap(st xds.ProxyStatus) map[string]string {
	m := map[string]string{}
	for _, ts := range st.Types {
		m[ts.Type] = ts.Acked
	}
	return m
}
