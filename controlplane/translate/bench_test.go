package translate

import (
	"fmt"
	"testing"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// BenchmarkTranslate measures one node's translation of the default table
// (what the xDS server pays per node class and change), with the four
// test instances and at scale with 1,000 and 10,000 instances spread over
// pets, stats and sync (the control-plane scale figures in BENCHMARKS.md;
// the edge's load assignments carry every one of them).
func BenchmarkTranslate(b *testing.B) {
	tab := routes.Default()
	for _, n := range []int{0, 1000, 10000} {
		instances := testInstances
		if n > 0 {
			instances = scaleInstances(n)
		}
		for _, tc := range []struct {
			desc string
			node Node
		}{
			{desc: "edge", node: edgeNode()},
			{desc: "sidecar", node: sidecarNode("pets")},
			{desc: "proxyless", node: grpcNode()},
		} {
			name := tc.desc
			if n > 0 {
				name = fmt.Sprintf("%s/instances=%d", tc.desc, n)
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Translate(tab, instances, tc.node, testOpts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// scaleInstances is n healthy instances over pets, stats and sync on
// loopback addresses (never dialled).
func scaleInstances(n int) []Instance {
	svcs := []string{"pets", "stats", "sync"}
	out := make([]Instance, n)
	for i := range out {
		svc := svcs[i%len(svcs)]
		out[i] = Instance{
			Service: svc, ID: fmt.Sprintf("%s-%d", svc, i), Address: fmt.Sprintf("127.%d.%d.%d", 1+i>>16&255, i>>8&255, i&255),
			Port: 9001, Version: []string{"v1", "v2"}[i%2], Health: HealthPassing,
		}
	}
	return out
}
