package xds_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

type proxy struct {
	c      *client.Client
	mu     sync.Mutex
	reject func(*client.Snapshot) error
}

func (p *proxy) setReject(f func(*client.Snapshot) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reject = f
}

// startProxy runs an ADS client for node until the test ends.
func startProxy(t testing.TB, addr string, n *core.Node) *proxy {
	t.Helper()
	p := &proxy{}
	p.c = xdstest.StartClient(t, client.Config{
		Server: addr, Node: n,
		Apply: func(_ context.Context, s *client.Snapshot) error {
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.reject != nil {
				return p.reject(s)
			}
			return nil
		},
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		BackoffMin:  20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return p
}

func sidecarNode(svc, inst string) *core.Node {
	return &core.Node{Id: resource.SidecarNodeID(svc, inst), Metadata: resource.NodeMeta{
		Service: svc, Version: "v1", InboundPort: 15001, OutboundPort: 15002, AppPort: 9001,
	}.Struct()}
}

func versions(st xds.ProxyStatus) map[string]string {
	m := map[string]string{}
	for _, ts := range st.Types {
		m[ts.Type] = ts.Latest
	}
	return m
}

func TestServerPushesAndTracksStatus(t *testing.T) {
	h := xdstest.Start(t, xdstest.Options{})
	ctx := tu.Context(t)
	edge := startProxy(t, h.Addr(), xdstest.EdgeNode("e1"))
	pets := startProxy(t, h.Addr(), sidecarNode("pets", "pets-1"))
	e0 := xdstest.Synced(t, h.Server, edge.c, "edge~e1")
	p0 := xdstest.Synced(t, h.Server, pets.c, "sidecar~pets~pets-1")

	// Before any change, every type's convergence histogram is exposed
	// at 0: rate() over it can then see the first change (a series born
	// at its first observation hides it).
	mfs, err := h.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	zero := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "petmesh_xds_convergence_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetHistogram().GetSampleCount() == 0 {
				zero[m.GetLabel()[0].GetValue()] = true
			}
		}
	}
	for _, typ := range xds.Types {
		if !zero[xds.ShortType(typ)] {
			t.Errorf("no petmesh_xds_convergence_seconds{type=%q} series at 0 before any change (have %v)", xds.ShortType(typ), zero)
		}
	}
	if e0.Kind != "edge" || p0.Kind != "sidecar" || p0.Service != "pets" || e0.ConnectedSince == nil {
		t.Fatalf("status: %+v %+v", e0, p0)
	}
	if got := sample(t, h.Metrics, "petmesh_controlplane_connected_proxies", "sidecar"); got != 1 {
		t.Fatalf("connected sidecars = %v", got)
	}

	t.Run("endpoint change resends only EDS", func(t *testing.T) {
		if err := h.Registry.Register(ctx, registry.Registration{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 15001, Version: "v1", TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		var e1 xds.ProxyStatus
		tu.Eventually(t, 5*time.Second, func() error {
			e1 = xdstest.Synced(t, h.Server, edge.c, "edge~e1")
			if versions(e1)["endpoint"] == versions(e0)["endpoint"] {
				return errors.New("endpoint version unchanged")
			}
			return nil
		})
		for _, typ := range []string{"listener", "route", "cluster"} {
			if versions(e1)[typ] != versions(e0)[typ] {
				t.Errorf("%s version changed on an endpoint change: %s → %s", typ, versions(e0)[typ], versions(e1)[typ])
			}
		}
		cla := edge.c.Current().Endpoints["pets"]
		if n := len(cla.GetEndpoints()); n != 1 || len(cla.GetEndpoints()[0].GetLbEndpoints()) != 1 {
			t.Fatalf("pets endpoints: %v", cla)
		}
		e0 = e1
	})

	t.Run("route change is acked and measured", func(t *testing.T) {
		cur, err := h.Store.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tb, err := cur.Table.SetWeights("pets", map[string]int{"v1": 90, "v2": 10})
		if err != nil {
			t.Fatal(err)
		}
		v, err := h.Store.Put(ctx, cur.Number, tb, "alice", "canary")
		if err != nil {
			t.Fatal(err)
		}
		tu.Eventually(t, 5*time.Second, func() error {
			st := xdstest.Synced(t, h.Server, edge.c, "edge~e1")
			if st.RouteVersion != v.Number {
				return fmt.Errorf("route version %d, want %d", st.RouteVersion, v.Number)
			}
			if _, ok := edge.c.Current().Clusters["pets~v2"]; !ok {
				return errors.New("no pets~v2 cluster")
			}
			return nil
		})
		if n := sample(t, h.Metrics, "petmesh_xds_convergence_seconds", "route"); n < 1 {
			t.Fatalf("convergence samples for routes = %v", n)
		}
	})

	t.Run("NACK is visible with its message", func(t *testing.T) {
		pets.setReject(func(s *client.Snapshot) error {
			if _, ok := s.Clusters["stats"]; ok {
				return errors.New("cluster stats: lb_policy MAGLEV is not supported")
			}
			return nil
		})
		cur, err := h.Store.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tb := cur.Table.Clone()
		tb.Services["stats"] = routes.Service{LB: "least_request"}
		if _, err := h.Store.Put(ctx, cur.Number, tb, "alice", "lb"); err != nil {
			t.Fatal(err)
		}
		var nacked string
		tu.Eventually(t, 5*time.Second, func() error {
			st, _ := h.Server.Proxy("sidecar~pets~pets-1")
			for _, ts := range st.Types {
				if ts.LastNack != nil && strings.Contains(ts.LastNack.Message, "MAGLEV") {
					if st.Synced {
						return errors.New("synced despite NACK")
					}
					nacked = ts.Type
					return nil
				}
			}
			return fmt.Errorf("no NACK yet: %+v", st.Types)
		})
		if n := sample(t, h.Metrics, "petmesh_xds_nacks_total", nacked); n != 1 {
			t.Fatalf("nacks{type=%s} = %v, want 1 (a NACKed version is not resent)", nacked, n)
		}
	})
}

func TestUntranslatableNodeKeepsPreviousConfig(t *testing.T) {
	h := xdstest.Start(t, xdstest.Options{})
	bad := startProxy(t, h.Addr(), &core.Node{Id: "sidecar~pets~p9"}) // no app port
	tu.Eventually(t, 5*time.Second, func() error {
		st, ok := h.Server.Proxy("sidecar~pets~p9")
		if !ok || !strings.Contains(st.Error, "app_port") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if len(bad.c.Versions()) != 0 {
		t.Fatalf("an untranslatable node got config: %v", bad.c.Versions())
	}
	if n := sample(t, h.Metrics, "petmesh_controlplane_snapshot_errors_total", "translate"); n < 1 {
		t.Fatalf("snapshot errors = %v", n)
	}
}

func TestDisconnectedNodeIsForgotten(t *testing.T) {
	h := xdstest.Start(t, xdstest.Options{Server: xds.Options{NodeGrace: 200 * time.Millisecond}})
	ctx, cancel := context.WithCancel(context.Background())
	c, err := client.New(client.Config{
		Server: h.Addr(), Node: xdstest.EdgeNode("gone"), Apply: func(context.Context, *client.Snapshot) error { return nil },
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	tu.Eventually(t, 5*time.Second, func() error {
		if st, ok := h.Server.Proxy("edge~gone"); !ok || !st.Synced {
			return errors.New("not synced")
		}
		return nil
	})
	cancel()
	<-done
	tu.Eventually(t, 5*time.Second, func() error {
		if st, ok := h.Server.Proxy("edge~gone"); ok {
			return fmt.Errorf("still known: connected=%v", st.Connected)
		}
		return nil
	})
}

// sample returns the value of the series of name with a label valued
// label: a gauge's or counter's value, a histogram's sample count.
func sample(t testing.TB, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() != label {
					continue
				}
				switch {
				case m.Gauge != nil:
					return m.GetGauge().GetValue()
				case m.Counter != nil:
					return m.GetCounter().GetValue()
				case m.Histogram != nil:
					return float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return 0
}
