package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// register adds a passing instance of service to the registry.
func (cp *realCP) register(t testing.TB, service, id string, port int) {
	t.Helper()
	if err := cp.Registry.Register(context.Background(), registry.Registration{
		Service: service, ID: id, Address: "127.0.0.1", Port: port, Version: "v1", TTL: time.Minute,
	}); err != nil {
		t.Fatal(err)
	}
}

func (cp *realCP) deregister(t testing.TB, id string) {
	t.Helper()
	if err := cp.Registry.Deregister(context.Background(), id); err != nil {
		t.Fatal(err)
	}
}

// appliedSince returns the snapshots applied after the first n.
func (p *proxy) appliedSince(n int) []*client.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*client.Snapshot(nil), p.applied[n:]...)
}

func (p *proxy) setReject(f func(*client.Snapshot) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reject = f
}

// putTable stores change(current table) as a new route table version.
func (cp *realCP) putTable(t testing.TB, change func(*routes.Table) *routes.Table) {
	t.Helper()
	ctx := context.Background()
	cur, err := cp.Store.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Store.Put(ctx, cur.Number, change(cur.Table), "test", "test"); err != nil {
		t.Fatal(err)
	}
}

func canary(t testing.TB) func(*routes.Table) *routes.Table {
	return func(tb *routes.Table) *routes.Table {
		out, err := tb.SetWeights("pets", map[string]int{"v1": 90, "v2": 10})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}

// endpointsOf returns the "address:port" list of cluster's load
// assignment in the client's state.
func endpointsOf(p *proxy, cluster string) []string {
	var out []string
	for _, loc := range p.c.Current().Endpoints[cluster].GetEndpoints() {
		for _, ep := range loc.GetLbEndpoints() {
			sa := ep.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	slicesSortStrings(out)
	return out
}

// TestDeltaAgainstControlPlane: the delta client against the real
// control-plane xDS server over a loopback socket: add, update and remove
// of resources, NACK with error_detail, reconnect with
// initial_resource_versions.
func TestDeltaAgainstControlPlane(t *testing.T) {
	cp := startRealCP(t)
	p := startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("d1"), Delta: true})
	xdstest.Synced(t, cp.Server, p.c, "edge~d1")
	cluster := resource.Cluster("pets", "")
	before := p.c.Current()
	if len(before.Listeners) == 0 || before.Clusters[cluster] == nil || before.Endpoints[cluster] == nil {
		t.Fatalf("first sync: %d listeners, cluster %s %v, endpoints %v", len(before.Listeners), cluster, before.Clusters[cluster] != nil, before.Endpoints[cluster] != nil)
	}

	t.Run("add and update: an endpoint change resends only its load assignment", func(t *testing.T) {
		cp.register(t, "pets", "pets-1", 7001)
		tu.Eventually(t, 5*time.Second, func() error {
			if got := endpointsOf(p, cluster); strings.Join(got, ",") != "127.0.0.1:7001" {
				return fmt.Errorf("pets endpoints %v", got)
			}
			return nil
		})
		mid := p.c.Current()
		cp.register(t, "pets", "pets-2", 7002)
		tu.Eventually(t, 5*time.Second, func() error {
			if got := endpointsOf(p, cluster); strings.Join(got, ",") != "127.0.0.1:7001,127.0.0.1:7002" {
				return fmt.Errorf("pets endpoints %v", got)
			}
			return nil
		})
		after := p.c.Current()
		// Unchanged resources were not resent: the client still holds the
		// very objects it decoded before (a state-of-the-world response
		// would have replaced every one).
		for name, cla := range after.Endpoints {
			if name != cluster && cla != mid.Endpoints[name] {
				t.Errorf("load assignment %q was resent though unchanged", name)
			}
		}
		for name, c := range after.Clusters {
			if c != mid.Clusters[name] {
				t.Errorf("cluster %q was resent by an endpoint change", name)
			}
		}
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
	})

	t.Run("remove: an instance, then the canary's clusters", func(t *testing.T) {
		cp.deregister(t, "pets-2")
		tu.Eventually(t, 5*time.Second, func() error {
			if got := endpointsOf(p, cluster); strings.Join(got, ",") != "127.0.0.1:7001" {
				return fmt.Errorf("pets endpoints %v", got)
			}
			return nil
		})
		cp.putTable(t, canary(t))
		v2 := resource.Cluster("pets", "v2")
		tu.Eventually(t, 5*time.Second, func() error {
			s := p.c.Current()
			if s.Clusters[v2] == nil || s.Endpoints[v2] == nil {
				return fmt.Errorf("canary cluster %s not received yet", v2)
			}
			return nil
		})
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
		cp.putTable(t, func(*routes.Table) *routes.Table { return routes.Default() })
		tu.Eventually(t, 5*time.Second, func() error {
			s := p.c.Current()
			if s.Clusters[v2] != nil || s.Endpoints[v2] != nil {
				return fmt.Errorf("canary cluster %s (or its endpoints) still held after its removal", v2)
			}
			return nil
		})
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
	})

	t.Run("NACK: error_detail reaches the control plane, the state stays", func(t *testing.T) {
		v2 := resource.Cluster("pets", "v2")
		p.setReject(func(s *client.Snapshot) error {
			if s.Clusters[v2] != nil {
				return fmt.Errorf("cluster %q: lb_policy: unsupported value MAGLEV", v2)
			}
			return nil
		})
		defer p.setReject(nil)
		applied := p.applies()
		cp.putTable(t, canary(t))
		var nack *xds.Nack
		tu.Eventually(t, 5*time.Second, func() error {
			st, _ := cp.Server.Proxy("edge~d1")
			for _, ts := range st.Types {
				if ts.Type == "cluster" && ts.LastNack != nil {
					nack = ts.LastNack
					return nil
				}
			}
			return errors.New("no cluster NACK at the control plane yet")
		})
		if !strings.Contains(nack.Message, "unsupported value MAGLEV") {
			t.Fatalf("NACK message %q, want the Apply error", nack.Message)
		}
		if got := p.c.LastNack()[resource.ClusterType]; !strings.Contains(got, "MAGLEV") {
			t.Fatalf("client LastNack %q", got)
		}
		if p.c.Current().Clusters[v2] != nil {
			t.Fatal("a rejected cluster is in the state")
		}
		for i, s := range p.appliedSince(applied) {
			if s.Clusters[v2] != nil {
				t.Fatalf("applied snapshot %d holds the rejected cluster", i)
			}
		}
		// Accepted again: back to the table the client holds (nothing to
		// send: the server finds it in sync), then a cluster change,
		// which is sent and ACKed.
		p.setReject(nil)
		cp.putTable(t, func(*routes.Table) *routes.Table { return routes.Default() })
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
		cp.putTable(t, func(tb *routes.Table) *routes.Table {
			out := tb.Clone()
			svc := out.Services["stats"]
			svc.ConnectTimeout = routes.Dur(3 * time.Second)
			out.Services["stats"] = svc
			return out
		})
		tu.Eventually(t, 5*time.Second, func() error {
			if got := p.c.Current().Clusters[resource.Cluster("stats", "")].GetConnectTimeout().AsDuration(); got != 3*time.Second {
				return fmt.Errorf("stats connect_timeout %v, want 3s", got)
			}
			return nil
		})
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
		if p.c.LastNack()[resource.ClusterType] != "" {
			t.Fatal("LastNack not cleared after an ACK")
		}
	})

	t.Run("reconnect: initial_resource_versions, only the changes resent", func(t *testing.T) {
		listeners := metric(t, p.prom, "petmesh_xds_updates_total", map[string]string{"type": "listener"})
		clusters := metric(t, p.prom, "petmesh_xds_updates_total", map[string]string{"type": "cluster"})
		held := p.c.Current()
		cp.Stop()
		tu.Eventually(t, 5*time.Second, func() error {
			if metric(t, p.prom, "petmesh_xds_connected", nil) != 0 {
				return errors.New("still connected")
			}
			return nil
		})
		// While the control plane is away an instance goes away.
		cp.deregister(t, "pets-1")
		cp.Serve(t, cp.Addr())
		tu.Eventually(t, 10*time.Second, func() error {
			if got := endpointsOf(p, cluster); len(got) != 0 {
				return fmt.Errorf("pets endpoints %v after the reconnect, want none", got)
			}
			return nil
		})
		xdstest.Synced(t, cp.Server, p.c, "edge~d1")
		if got := metric(t, p.prom, "petmesh_xds_updates_total", map[string]string{"type": "listener"}); got != listeners {
			t.Errorf("%v listener responses on reconnect, want none (the client named the versions it holds)", got-listeners)
		}
		if got := metric(t, p.prom, "petmesh_xds_updates_total", map[string]string{"type": "cluster"}); got != clusters {
			t.Errorf("%v cluster responses on reconnect, want none", got-clusters)
		}
		now := p.c.Current()
		for name, l := range now.Listeners {
			if l != held.Listeners[name] {
				t.Errorf("listener %q replaced on reconnect", name)
			}
		}
	})
}

// TestDeltaAndSotwAgree: delta and state-of-the-world clients of the same
// node class see the same change and end with the same state.
func TestDeltaAndSotwAgree(t *testing.T) {
	cp := startRealCP(t)
	var ps []*proxy
	for i := range 3 {
		ps = append(ps, startProxy(t, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode(fmt.Sprintf("m%d", i)), Delta: i%2 == 0}))
	}
	cp.register(t, "stats", "stats-1", 7101)
	for i, p := range ps {
		tu.Eventually(t, 5*time.Second, func() error {
			if got := endpointsOf(p, resource.Cluster("stats", "")); strings.Join(got, ",") != "127.0.0.1:7101" {
				return fmt.Errorf("client %d (delta %v): stats endpoints %v", i, i%2 == 0, got)
			}
			return nil
		})
		xdstest.Synced(t, cp.Server, p.c, fmt.Sprintf("edge~m%d", i))
	}
	// Both variants hold the same state.
	d, s := ps[0].c.Current(), ps[1].c.Current()
	for _, pair := range [][2]int{{len(d.Listeners), len(s.Listeners)}, {len(d.Routes), len(s.Routes)}, {len(d.Clusters), len(s.Clusters)}, {len(d.Endpoints), len(s.Endpoints)}} {
		if pair[0] != pair[1] {
			t.Fatalf("delta and state-of-the-world clients differ: %d vs %d resources", pair[0], pair[1])
		}
	}
}

func slicesSortStrings(s []string) { slices.Sort(s) }
