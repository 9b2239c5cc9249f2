package client_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/xds/xdstest"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// manyServices returns a route table with n services (svc0 … svc<n-1>),
// one prefix route each.
func manyServices(t testing.TB, n int) *routes.Table {
	var sb strings.Builder
	sb.WriteString("routes:\n")
	for i := range n {
		fmt.Fprintf(&sb, "  - name: svc%d\n    match: {prefix: /svc%d/}\n    targets: [{service: svc%d}]\n", i, i, i)
	}
	tb, err := routes.Load([]byte(sb.String()), routes.ValidateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// BenchmarkEndpointChangeBytes measures the bytes an edge's ADS client
// receives per endpoint change (one instance of svc0 registered, then
// deregistered), state of the world against delta, with the real control
// plane over a loopback socket. bytes/change is the protobuf size of the
// responses (petmesh_xds_received_bytes_total), which does not depend on
// the machine's load.
//
//	go test ./internal/xds/client -run '^$' -bench EndpointChangeBytes -benchtime 20x
func BenchmarkEndpointChangeBytes(b *testing.B) {
	for _, layout := range []struct{ services, perService int }{{100, 10}, {10, 100}, {1, 1000}, {100, 100}} {
		for _, delta := range []bool{false, true} {
			name := fmt.Sprintf("endpoints=%d/services=%d/delta=%v", layout.services*layout.perService, layout.services, delta)
			b.Run(name, func(b *testing.B) {
				cp := startRealCP(b)
				cp.putTable(b, func(*routes.Table) *routes.Table { return manyServices(b, layout.services) })
				ctx := context.Background()
				port := 10000
				for s := range layout.services {
					for i := range layout.perService {
						port++
						if err := cp.Registry.Register(ctx, registry.Registration{Service: fmt.Sprintf("svc%d", s), ID: fmt.Sprintf("svc%d-%d", s, i),
							Address: "127.0.0.1", Port: port, Version: "v1", TTL: time.Hour}); err != nil {
							b.Fatal(err)
						}
					}
				}
				p := startProxy(b, client.Config{Server: cp.Addr(), Node: xdstest.EdgeNode("bytes"), Delta: delta})
				cluster := resource.Cluster("svc0", "")
				want := layout.perService
				wait := func() {
					tu.Eventually(b, 30*time.Second, func() error {
						if got := len(endpointsOf(p, cluster)); got != want {
							return fmt.Errorf("svc0 has %d endpoints, want %d", got, want)
						}
						if n := len(p.c.Current().Clusters); n < layout.services {
							return fmt.Errorf("%d clusters, want %d", n, layout.services)
						}
						return nil
					})
					xdstest.Synced(b, cp.Server, p.c, "edge~bytes")
				}
				wait()
				total := func() float64 { return metric(b, p.prom, "petmesh_xds_received_bytes_total", nil) }
				eds := func() float64 {
					return metric(b, p.prom, "petmesh_xds_received_bytes_total", map[string]string{"type": "endpoint"})
				}
				initial := total()
				b.ResetTimer()
				t0, e0 := total(), eds()
				for i := range b.N {
					id := fmt.Sprintf("extra-%d", i)
					if err := cp.Registry.Register(ctx, registry.Registration{Service: "svc0", ID: id, Address: "127.0.0.2", Port: 20000 + i, Version: "v1", TTL: time.Hour}); err != nil {
						b.Fatal(err)
					}
					want = layout.perService + 1
					wait()
					if err := cp.Registry.Deregister(ctx, id); err != nil {
						b.Fatal(err)
					}
					want = layout.perService
					wait()
				}
				b.StopTimer()
				changes := float64(2 * b.N)
				b.ReportMetric((total()-t0)/changes, "bytes/change")
				b.ReportMetric((eds()-e0)/changes, "eds-bytes/change")
				b.ReportMetric(initial, "initial-bytes")
			})
		}
	}
}
