package xds

import (
	"fmt"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// BenchmarkBuild measures one node class's rebuild (translate, check,
// encode and hash) at 100 and 10,000 instances: the part of a change that
// runs before anything is sent, once per class.
//
//	go test ./controlplane/xds -run '^$' -bench Build -benchmem
func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			var insts []translate.Instance
			for i := range n {
				svc := []string{"pets", "stats", "sync"}[i%3]
				insts = append(insts, translate.Instance{Service: svc, ID: fmt.Sprintf("%s-%d", svc, i),
					Address: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Port: 9000, Version: "v1", Health: translate.Health("passing")})
			}
			in := &inputs{table: routes.Default(), instances: insts, opts: translate.Options{
				JWTProviders:     []translate.JWTProvider{{Name: "petmesh", Issuer: "i", Audiences: []string{"petmesh"}, JWKSURI: "http://127.0.0.1:1/jwks"}},
				EdgeLocalAddress: "127.0.0.1:8080",
			}}
			node, err := translate.NodeFromProto(&core.Node{Id: resource.EdgeNodeID("e"), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if bt := build(in, node); bt.err != nil {
					b.Fatal(bt.err)
				}
			}
		})
	}
}
