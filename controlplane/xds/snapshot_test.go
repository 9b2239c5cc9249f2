package xds

import (
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// TestClassSharesEncodedResources: two nodes of one class get one build,
// and every stream's response carries the same encoded resources (the
// same Any and Resource values, never copies), wildcard or by name, in
// both ADS variants; versions do not depend on map order inside an Any.
func TestClassSharesEncodedResources(t *testing.T) {
	in := &inputs{table: routes.Default(), instances: []translate.Instance{
		{Service: "pets", ID: "p1", Address: "127.0.0.1", Port: 7001, Version: "v1", Health: translate.Health("passing")},
	}, opts: translate.Options{
		JWTProviders:     []translate.JWTProvider{{Name: "petmesh", Issuer: "i", Audiences: []string{"petmesh"}, JWKSURI: "http://127.0.0.1:1/jwks"}},
		EdgeLocalAddress: "127.0.0.1:8080",
	}}
	node := func(inst string) translate.Node {
		n, err := translate.NodeFromProto(&core.Node{Id: resource.EdgeNodeID(inst), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	a, b := node("a"), node("b")
	if classKey(a) != classKey(b) {
		t.Fatalf("class keys differ: %q %q", classKey(a), classKey(b))
	}
	built := build(in, a)
	if built.err != nil {
		t.Fatal(built.err)
	}

	for _, typ := range []string{resource.ListenerType, resource.ClusterType} {
		et := built.encoded[typ]
		if len(et.anys) == 0 || et.typeURL != typ {
			t.Fatalf("%s: %d resources", ShortType(typ), len(et.anys))
		}
		// Two streams subscribing to everything, one by name.
		s1, s2 := &typeSub{legacy: true}, &typeSub{legacy: true}
		s3 := &typeSub{}
		s3.setNames([]string{et.names[0]})
		r1, _ := s1.sotwResponse(et)
		r2, _ := s2.sotwResponse(et)
		r3, _ := s3.sotwResponse(et)
		if r1 == nil || r2 == nil || r3 == nil || len(r3.anys) != 1 {
			t.Fatalf("%s: responses %v %v %v", ShortType(typ), r1, r2, r3)
		}
		for i := range r1.anys {
			if r1.anys[i] != et.anys[i] || r2.anys[i] != et.anys[i] {
				t.Fatalf("%s: resource %d is not the shared encoding", ShortType(typ), i)
			}
		}
		if r3.anys[0] != et.anys[0] {
			t.Fatalf("%s: a response by name does not share the encoding", ShortType(typ))
		}
		d := &typeSub{legacy: true, have: map[string]string{}}
		rd, _, _ := d.deltaResponse(et)
		if rd == nil || len(rd.resources) != len(et.resources) {
			t.Fatalf("%s: delta response %v", ShortType(typ), rd)
		}
		for i := range rd.resources {
			if rd.resources[i] != et.resources[i] || rd.resources[i].GetResource() != et.anys[i] || rd.resources[i].GetVersion() != et.rversions[i] {
				t.Fatalf("%s: delta resource %d is not the shared encoding", ShortType(typ), i)
			}
		}
	}

	// The edge listener's jwt_authn config has a map (requirement_map)
	// inside an Any: its encoding, and so the version, must not depend on
	// map order.
	for i := range 20 {
		again := build(in, b)
		for _, typ := range Types {
			if again.versions[typ] != built.versions[typ] {
				t.Fatalf("build %d: %s version %s then %s for the same content", i, ShortType(typ), built.versions[typ], again.versions[typ])
			}
			for j, v := range again.encoded[typ].rversions {
				if v != built.encoded[typ].rversions[j] {
					t.Fatalf("build %d: %s resource %s version changed for the same content", i, ShortType(typ), again.encoded[typ].names[j])
				}
			}
		}
	}
}
