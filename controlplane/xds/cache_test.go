package xds

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

func testBuilt(t *testing.T, version string, names map[string][]string) *built {
	t.Helper()
	b := &built{encoded: map[string]*encodedType{}, versions: map[string]string{}}
	for _, typ := range Types {
		et := &encodedType{version: version, index: map[string]int{}, returned: map[string]string{}}
		for i, n := range names[typ] {
			et.names = append(et.names, n)
			et.anys = append(et.anys, &anypb.Any{TypeUrl: typ, Value: []byte(n)})
			et.index[n] = i
			et.returned[n] = version
		}
		b.encoded[typ], b.versions[typ] = et, version
	}
	return b
}

type testStream struct {
	out  chan cache.Response
	subs map[string]*stream.Subscription
}

func newTestStream() *testStream {
	return &testStream{out: make(chan cache.Response, 8), subs: map[string]*stream.Subscription{}}
}

// watch opens a watch like the ordered ADS server does and returns its
// cancel function.
func (s *testStream) watch(t *testing.T, c *sharedCache, node, typ, version string, names ...string) func() {
	t.Helper()
	sub, ok := s.subs[typ]
	if !ok {
		ns := stream.NewSotwSubscription(names, true)
		sub = &ns
		s.subs[typ] = sub
	} else {
		sub.SetResourceSubscription(names)
	}
	cancel, err := c.CreateWatch(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: typ, VersionInfo: version, ResourceNames: names}, sub, s.out)
	if err != nil {
		t.Fatal(err)
	}
	return cancel
}

// next returns the pending responses (type, version, resource names), as
// the server would send them, recording what was returned.
func (s *testStream) next(t *testing.T) []string {
	t.Helper()
	var out []string
	for {
		select {
		case r := <-s.out:
			d, err := r.GetDiscoveryResponse()
			if err != nil {
				t.Fatal(err)
			}
			s.subs[r.GetRequest().GetTypeUrl()].SetReturnedResources(r.GetReturnedResources())
			var names []string
			for _, a := range d.GetResources() {
				names = append(names, string(a.GetValue()))
			}
			out = append(out, ShortType(d.GetTypeUrl())+"@"+d.GetVersionInfo()+":"+strings.Join(names, ","))
		default:
			return out
		}
	}
}

func TestSharedCache(t *testing.T) {
	v1 := testBuilt(t, "v1", map[string][]string{
		resource.ClusterType: {"a", "b"}, resource.EndpointType: {"a", "b"},
		resource.ListenerType: {"l"}, resource.RouteType: {"r1", "r2"},
	})
	v2 := testBuilt(t, "v2", map[string][]string{
		resource.ClusterType: {"a", "b", "c"}, resource.EndpointType: {"a", "b", "c"},
		resource.ListenerType: {"l"}, resource.RouteType: {"r1", "r2"},
	})
	tests := []struct {
		desc string
		run  func(t *testing.T, c *sharedCache, s *testStream) []string
		want []string
	}{
		{
			desc: "wildcard and named requests answered at once from the snapshot",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				c.SetSnapshot("n", v1)
				s.watch(t, c, "n", resource.ClusterType, "")
				s.watch(t, c, "n", resource.EndpointType, "", "b", "zz")
				return s.next(t)
			},
			want: []string{"cluster@v1:a,b", "endpoint@v1:b"},
		},
		{
			desc: "a watch at the current version waits; a new snapshot answers in ADS order",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				c.SetSnapshot("n", v1)
				s.watch(t, c, "n", resource.RouteType, "")
				s.watch(t, c, "n", resource.ListenerType, "")
				s.watch(t, c, "n", resource.EndpointType, "", "a")
				s.watch(t, c, "n", resource.ClusterType, "")
				first := s.next(t)
				// ACKs: watches at v1 wait.
				for _, typ := range []string{resource.RouteType, resource.ListenerType, resource.ClusterType} {
					s.watch(t, c, "n", typ, "v1")
				}
				s.watch(t, c, "n", resource.EndpointType, "v1", "a")
				if got := s.next(t); len(got) != 0 {
					t.Fatalf("answered at the same version: %v", got)
				}
				c.SetSnapshot("n", v2)
				return append(first, s.next(t)...)
			},
			want: []string{
				"route@v1:r1,r2", "listener@v1:l", "endpoint@v1:a", "cluster@v1:a,b",
				"cluster@v2:a,b,c", "endpoint@v2:a", "listener@v2:l", "route@v2:r1,r2",
			},
		},
		{
			desc: "a new name at the same version is answered",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				c.SetSnapshot("n", v1)
				s.watch(t, c, "n", resource.EndpointType, "", "a")
				s.next(t)
				s.watch(t, c, "n", resource.EndpointType, "v1", "a", "b")
				return s.next(t)
			},
			want: []string{"endpoint@v1:a,b"},
		},
		{
			desc: "a watch before the first snapshot is answered by it; a cancelled one is not",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				s.watch(t, c, "n", resource.ClusterType, "")
				cancel := s.watch(t, c, "m", resource.ClusterType, "")
				cancel()
				c.SetSnapshot("m", v1)
				c.SetSnapshot("n", v1)
				return s.next(t)
			},
			want: []string{"cluster@v1:a,b"},
		},
		{
			desc: "a reconnected proxy at the current version is sent it once the snapshot exists",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				s.watch(t, c, "n", resource.ClusterType, "v1")
				s.watch(t, c, "n", resource.EndpointType, "v1", "a")
				c.SetSnapshot("n", v1)
				first := s.next(t)
				s.watch(t, c, "n", resource.ClusterType, "v1")
				s.watch(t, c, "n", resource.EndpointType, "v1", "a")
				c.SetSnapshot("n", v1) // an ACKed stream is not sent the same version again
				return append(first, s.next(t)...)
			},
			want: []string{"cluster@v1:a,b", "endpoint@v1:a"},
		},
		{
			desc: "a cleared node forgets its watches",
			run: func(t *testing.T, c *sharedCache, s *testStream) []string {
				s.watch(t, c, "n", resource.ClusterType, "")
				c.ClearSnapshot("n")
				c.SetSnapshot("n", v1)
				return s.next(t)
			},
			want: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			c := newSharedCache(slog.New(slog.DiscardHandler))
			got := tc.run(t, c, newTestStream())
			if !slices.Equal(got, tc.want) {
				t.Fatalf("responses\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestClassSharesEncodedResources: two nodes of a class get the same
// encoded bytes (one marshal per class, not per stream), and the version
// changes with the content only.
func TestClassSharesEncodedResources(t *testing.T) {
	in := &inputs{table: routes.Default(), opts: translate.Options{
		JWTProviders:     []translate.JWTProvider{{Name: "petmesh", Issuer: "i", Audiences: []string{"petmesh"}, JWKSURI: "http://127.0.0.1:1/jwks"}},
		EdgeLocalAddress: "127.0.0.1:8080",
	}}
	node := func(inst string) (translate.Node, string) {
		id := resource.EdgeNodeID(inst)
		n, err := translate.NodeFromProto(&core.Node{Id: id, Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()})
		if err != nil {
			t.Fatal(err)
		}
		return n, id
	}
	a, ida := node("a")
	b, idb := node("b")
	if classKey(a) != classKey(b) {
		t.Fatalf("class keys differ: %q %q", classKey(a), classKey(b))
	}
	ba := build(in, a)
	if ba.err != nil {
		t.Fatal(ba.err)
	}
	c := newSharedCache(slog.New(slog.DiscardHandler))
	c.SetSnapshot(ida, ba)
	c.SetSnapshot(idb, ba)
	sa, sb := newTestStream(), newTestStream()
	sa.watch(t, c, ida, resource.ListenerType, "")
	sb.watch(t, c, idb, resource.ListenerType, "")
	ra, rb := <-sa.out, <-sb.out
	da, _ := ra.GetDiscoveryResponse()
	db, _ := rb.GetDiscoveryResponse()
	if da == db || len(da.GetResources()) == 0 || da.GetResources()[0] != db.GetResources()[0] {
		t.Fatal("the two nodes' responses do not share the encoded listener (or share the response message)")
	}
	// The edge listener's jwt_authn config has a map (requirement_map)
	// inside an Any: its encoding, and so the version, must not depend on
	// map order.
	for i := range 20 {
		again := build(in, a)
		for _, typ := range Types {
			if again.versions[typ] != ba.versions[typ] {
				t.Fatalf("build %d: %s version %s then %s for the same content", i, ShortType(typ), ba.versions[typ], again.versions[typ])
			}
		}
	}
}
