package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	tu "github.com/petmesh/petmesh/internal/testutil"
)

const nodeID = "edge~test"

// fakeCP is an in-process go-control-plane ADS server on a real loopback
// listener that records every request it receives.
type fakeCP struct {
	cache cachev3.SnapshotCache
	addr  string

	mu   sync.Mutex
	reqs []*discovery.DiscoveryRequest
	srv  *grpc.Server
	done chan struct{}
}

func newFakeCP(t *testing.T) *fakeCP {
	cp := &fakeCP{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	cp.start(t, "127.0.0.1:0")
	return cp
}

func (cp *fakeCP) start(t *testing.T, addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = lis.Addr().String()
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
		cp.mu.Lock()
		cp.reqs = append(cp.reqs, r)
		cp.mu.Unlock()
		return nil
	}}
	srv := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), cp.cache, cb))
	cp.srv = srv
	cp.done = make(chan struct{})
	go func() { defer close(cp.done); _ = srv.Serve(lis) }()
	t.Cleanup(cp.stop)
}

func (cp *fakeCP) stop() {
	if cp.srv != nil {
		cp.srv.Stop()
		<-cp.done
		cp.srv = nil
	}
}

// findReq returns the first recorded request matching f.
func (cp *fakeCP) findReq(f func(*discovery.DiscoveryRequest) bool) *discovery.DiscoveryRequest {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, r := range cp.reqs {
		if f(r) {
			return r
		}
	}
	return nil
}

func (cp *fakeCP) set(t *testing.T, version string, clusters ...string) {
	t.Helper()
	mgr, err := anypb.New(&hcm.HttpConnectionManager{
		StatPrefix:     "edge",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: "edge-routes", ConfigSource: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	res := map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {&listener.Listener{Name: "edge-http", FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mgr}}}}}}},
		resourcev3.RouteType:    {&route.RouteConfiguration{Name: "edge-routes"}},
	}
	for _, c := range clusters {
		res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], &cluster.Cluster{
			Name: c, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{EdsConfig: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}},
		})
		res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], &endpoint.ClusterLoadAssignment{ClusterName: c})
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
}

// recorder is the Apply callback: it rejects any cluster named "bad".
type recorder struct {
	mu   sync.Mutex
	last *Snapshot
	n    int
}

func (r *recorder) apply(_ context.Context, s *Snapshot) error {
	if _, ok := s.Clusters["bad"]; ok {
		return errors.New(`cluster "bad": lb_policy: unsupported value MAGLEV`)
	}
	r.mu.Lock()
	r.last, r.n = s, r.n+1
	r.mu.Unlock()
	return nil
}

func (r *recorder) clusters() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return ""
	}
	var names []string
	for n := range r.last.Clusters {
		names = append(names, n)
	}
	slicesSort(names)
	return strings.Join(names, ",")
}

func startClient(t *testing.T, cp *fakeCP, rec *recorder, reg prometheus.Registerer) *Client {
	t.Helper()
	c, err := New(Config{
		Server: cp.addr, Node: &core.Node{Id: nodeID}, Apply: rec.apply,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

func acked(cp *fakeCP, typ, version string) func() error {
	return func() error {
		if cp.findReq(func(r *discovery.DiscoveryRequest) bool {
			return r.GetTypeUrl() == typ && r.GetVersionInfo() == version && r.GetErrorDetail() == nil && r.GetResponseNonce() != ""
		}) == nil {
			return fmt.Errorf("no ACK of %s version %s", typ, version)
		}
		return nil
	}
}

func TestClientAckNackReconnect(t *testing.T) {
	cp := newFakeCP(t)
	cp.set(t, "v1", "pets", "stats")
	rec := &recorder{}
	reg := prometheus.NewRegistry()
	c := startClient(t, cp, rec, reg)

	t.Run("ack every type", func(t *testing.T) {
		for _, typ := range typeURLs {
			tu.Eventually(t, 5*time.Second, acked(cp, typ, "v1"))
		}
		tu.Eventually(t, 5*time.Second, func() error {
			if got := rec.clusters(); got != "pets,stats" {
				return fmt.Errorf("clusters %q", got)
			}
			return nil
		})
		eds := cp.findReq(func(r *discovery.DiscoveryRequest) bool { return r.GetTypeUrl() == resourcev3.EndpointType })
		if got := strings.Join(eds.GetResourceNames(), ","); got != "pets,stats" {
			t.Errorf("EDS subscription %q, want pets,stats", got)
		}
		if got := testutil.ToFloat64(c.metrics.connected); got != 1 {
			t.Errorf("connected gauge %v", got)
		}
	})

	t.Run("nack reaches the server and keeps the last good config", func(t *testing.T) {
		cp.set(t, "v2", "pets", "bad")
		tu.Eventually(t, 5*time.Second, func() error {
			r := cp.findReq(func(r *discovery.DiscoveryRequest) bool {
				return r.GetTypeUrl() == resourcev3.ClusterType && r.GetErrorDetail() != nil
			})
			if r == nil {
				return errors.New("no NACK yet")
			}
			if !strings.Contains(r.GetErrorDetail().GetMessage(), `cluster "bad": lb_policy`) {
				return fmt.Errorf("NACK message %q", r.GetErrorDetail().GetMessage())
			}
			if r.GetVersionInfo() != "v1" {
				return fmt.Errorf("NACK carries version %q, want the last accepted v1", r.GetVersionInfo())
			}
			return nil
		})
		if got := rec.clusters(); got != "pets,stats" {
			t.Errorf("after NACK clusters %q, want the last good pets,stats", got)
		}
		if got := testutil.ToFloat64(c.metrics.nacks.WithLabelValues("cluster")); got < 1 {
			t.Errorf("nack counter %v", got)
		}
		if c.LastNack()[resourcev3.ClusterType] == "" {
			t.Error("LastNack empty")
		}
	})

	t.Run("reconnect after server restart", func(t *testing.T) {
		addr := cp.addr
		cp.stop()
		tu.Eventually(t, 5*time.Second, func() error {
			if got := testutil.ToFloat64(c.metrics.connected); got != 0 {
				return fmt.Errorf("connected gauge %v", got)
			}
			return nil
		})
		if got := rec.clusters(); got != "pets,stats" {
			t.Errorf("while away clusters %q, want pets,stats", got)
		}
		cp2 := &fakeCP{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
		cp2.start(t, addr)
		cp2.set(t, "v3", "pets", "sync")
		tu.Eventually(t, 10*time.Second, acked(cp2, resourcev3.ClusterType, "v3"))
		tu.Eventually(t, 5*time.Second, func() error {
			if got := rec.clusters(); got != "pets,sync" {
				return fmt.Errorf("clusters %q", got)
			}
			return nil
		})
		if got := c.Versions()[resourcev3.ClusterType]; got != "v3" {
			t.Errorf("version %q", got)
		}
	})
}

func TestBootstrapWithoutControlPlane(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/bootstrap.yaml"
	const y = `
static_resources:
  listeners:
  - name: edge-http
  clusters:
  - name: pets
    type: STATIC
    load_assignment:
      cluster_name: pets
`
	if err := writeFile(path, y); err != nil {
		t.Fatal(err)
	}
	bs, err := LoadBootstrap(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	c, err := New(Config{Apply: rec.apply, Bootstrap: bs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	tu.Eventually(t, 5*time.Second, func() error {
		if rec.clusters() != "pets" {
			return errors.New("bootstrap not applied")
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	t.Run("unknown field rejected", func(t *testing.T) {
		if err := writeFile(path, "static_resources:\n  listenrs: []\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadBootstrap(path); err == nil || !strings.Contains(err.Error(), "listenrs") {
			t.Fatalf("err %v, want one naming listenrs", err)
		}
	})
}
