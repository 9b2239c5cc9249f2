package xds_test

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// simProxy is a minimal ADS client: it subscribes like a proxy (LDS and
// CDS wildcard, then RDS and EDS by the names those reference), ACKs every
// response at once and records when each type's version changed. It keeps
// no decoded configuration, so that the heap measured is mostly the
// control plane's.
type simProxy struct {
	mu       sync.Mutex
	versions map[string]string
	changed  map[string]time.Time // type → when the version last changed
}

func (p *simProxy) run(ctx context.Context, conn *grpc.ClientConn, node *core.Node, ready chan<- struct{}) error {
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	send := func(t, version, nonce string, names []string) error {
		return st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names})
	}
	if err := send(resource.ClusterType, "", "", nil); err != nil {
		return err
	}
	if err := send(resource.ListenerType, "", "", nil); err != nil {
		return err
	}
	names := map[string][]string{}
	once := false
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		t := resp.GetTypeUrl()
		snap := &client.Snapshot{Clusters: map[string]*clusterv3.Cluster{}, Listeners: map[string]*listenerv3.Listener{}}
		switch t {
		case resource.ClusterType:
			for _, a := range resp.GetResources() {
				c := &clusterv3.Cluster{}
				if err := a.UnmarshalTo(c); err != nil {
					return err
				}
				snap.Clusters[c.GetName()] = c
			}
		case resource.ListenerType:
			for _, a := range resp.GetResources() {
				l := &listenerv3.Listener{}
				if err := a.UnmarshalTo(l); err != nil {
					return err
				}
				snap.Listeners[l.GetName()] = l
			}
		}
		now := time.Now()
		p.mu.Lock()
		if p.versions[t] != resp.GetVersionInfo() {
			p.versions[t] = resp.GetVersionInfo()
			p.changed[t] = now
		}
		complete := len(p.versions) == 4
		p.mu.Unlock()
		if err := send(t, resp.GetVersionInfo(), resp.GetNonce(), names[t]); err != nil {
			return err
		}
		var sub string
		var want []string
		switch t {
		case resource.ClusterType:
			sub, want = resource.EndpointType, client.EndpointNames(snap)
		case resource.ListenerType:
			sub, want = resource.RouteType, client.RouteNames(snap)
		}
		if sub != "" && fmt.Sprint(want) != fmt.Sprint(names[sub]) {
			names[sub] = want
			p.mu.Lock()
			v := p.versions[sub]
			p.mu.Unlock()
			if err := send(sub, v, "", want); err != nil {
				return err
			}
		}
		if complete && !once {
			once = true
			close(ready)
		}
	}
}

func (p *simProxy) changedSince(t string, since time.Time) (time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.changed[t]
	if !ok || at.Before(since) {
		return 0, false
	}
	return at.Sub(since), true
}

func benchNode(i int) *core.Node {
	if i%10 == 0 {
		return &core.Node{Id: resource.EdgeNodeID(fmt.Sprintf("edge-%d", i)), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()}
	}
	svc := []string{"pets", "stats", "sync"}[i%3]
	return &core.Node{Id: resource.SidecarNodeID(svc, fmt.Sprintf("%s-%d", svc, i)), Metadata: resource.NodeMeta{
		Service: svc, Version: "v1", InboundPort: 15001, OutboundPort: 15002, AppPort: 9001,
	}.Struct()}
}

// BenchmarkConvergence connects N simulated proxies over loopback gRPC
// and measures, per change, the time from the change (store Put,
// registry Register) to every proxy's receipt and ACK of the new version:
// p50 and p99 over all proxies and changes. It also reports the heap
// growth per connected proxy (control plane plus the minimal clients,
// so an upper bound for the control plane). The debounce is the default
// (100ms quiet period), which is part of the convergence time.
//
//	go test ./controlplane/xds -run '^$' -bench Convergence -benchtime 5x
func BenchmarkConvergence(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) { benchConvergence(b, n) })
	}
}

func benchConvergence(b *testing.B, n int) {
	h := newHarness(b, xds.Options{QuietPeriod: xds.DefaultQuietPeriod, MaxDelay: xds.DefaultMaxDelay})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Real proxies each have their own connection; the simulated ones
	// share one per 10 streams, which keeps HTTP/2 framing realistic
	// without loading the measurement with a thousand client transports.
	conns := make([]*grpc.ClientConn, (n+9)/10)
	for i := range conns {
		c, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		conns[i] = c
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	proxies := make([]*simProxy, n)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range proxies {
		p := &simProxy{versions: map[string]string{}, changed: map[string]time.Time{}}
		proxies[i] = p
		ready := make(chan struct{})
		node := benchNode(i)
		conn := conns[i%len(conns)]
		wg.Go(func() { _ = p.run(ctx, conn, node, ready) })
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			b.Fatalf("proxy %d not configured", i)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perProxy := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n) / 1024

	wait := func(t string, since time.Time) []time.Duration {
		out := make([]time.Duration, 0, n)
		deadline := time.Now().Add(30 * time.Second)
		for _, p := range proxies {
			for {
				d, ok := p.changedSince(t, since)
				if ok {
					out = append(out, d)
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("a proxy did not converge on %s", t)
				}
				time.Sleep(time.Millisecond) // polling the simulated proxies' clocks
			}
		}
		return out
	}
	var routeLat, epLat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cur, err := h.store.Current(ctx)
		if err != nil {
			b.Fatal(err)
		}
		t := cur.Table.Clone()
		t.Route("pets").Timeout = routes.Dur(time.Duration(i+1) * time.Second)
		start := time.Now()
		if _, err := h.store.Put(ctx, cur.Number, t, "bench", "timeout"); err != nil {
			b.Fatal(err)
		}
		routeLat = append(routeLat, wait(resource.RouteType, start)...)

		start = time.Now()
		if err := h.reg.Register(ctx, registry.Registration{Service: "pets", ID: fmt.Sprintf("pets-%d", i), Address: "127.0.0.1", Port: 20000 + i, Version: "v1", TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
		epLat = append(epLat, wait(resource.EndpointType, start)...)
	}
	b.StopTimer()
	pct := func(d []time.Duration, q float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(routeLat, 0.5), "route-p50-ms")
	b.ReportMetric(pct(routeLat, 0.99), "route-p99-ms")
	b.ReportMetric(pct(epLat, 0.5), "endpoint-p50-ms")
	b.ReportMetric(pct(epLat, 0.99), "endpoint-p99-ms")
	b.ReportMetric(perProxy, "heap-KB/proxy")
}
