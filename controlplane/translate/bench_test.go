package translate

import (
	"testing"

	"github.com/petmesh/petmesh/controlplane/routes"
)

// BenchmarkTranslate measures one node's translation of the default table
// (what the xDS server pays per node and change).
func BenchmarkTranslate(b *testing.B) {
	tab := routes.Default()
	for _, tc := range []struct {
		desc string
		node Node
	}{
		{desc: "edge", node: edgeNode()},
		{desc: "sidecar", node: sidecarNode("pets")},
		{desc: "proxyless", node: grpcNode()},
	} {
		b.Run(tc.desc, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Translate(tab, testInstances, tc.node, testOpts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
