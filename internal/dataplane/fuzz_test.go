package dataplane

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	bufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/buffer/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/petmesh/petmesh/internal/identity"
)

// fuzzSeeds are valid resources of each kind (0 listener, 1 route
// configuration, 2 cluster, 3 load assignment).
func fuzzSeeds(t testing.TB) [][2]any {
	c := edsCluster("a")
	panicky := edsCluster("a")
	panicky.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 30}}
	avoiding := retryRoute("5xx", 2, false)
	previousHostsPolicy(t, avoiding.GetRoute().GetRetryPolicy())
	limited := perRouteBuffer(t, prefixRoute("big", "/big", "a"), &bufferv3.BufferPerRoute{Override: &bufferv3.BufferPerRoute_Buffer{
		Buffer: &bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(1 << 20)}}})
	return [][2]any{
		{byte(0), listenerRDS(t, testListener, "r")},
		{byte(1), routeConfig("r", retryRoute("5xx,reset", 2, true), prefixRoute("p", "/pets", "a"))},
		{byte(2), c},
		{byte(3), loadAssignment(t, "a", "127.0.0.1:8080", "10.0.0.2:9000")},
		{byte(0), listenerRDS(t, testListener, "r", filter(t, "envoy.filters.http.buffer", &bufferv3.Buffer{MaxRequestBytes: wrapperspb.UInt32(1024)}))},
		{byte(1), routeConfig("r", limited, avoiding)},
		{byte(2), panicky},
	}
}

// FuzzBuild feeds arbitrary bytes, decoded as each resource type, into the
// build step alongside a valid configuration: the result must be applied
// or rejected with an error, never a panic.
func FuzzBuild(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		b, err := proto.Marshal(s[1].(proto.Message))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s[0].(byte), b)
	}
	auth := func(*jwtv3.JwtAuthentication) (Authenticator, error) {
		return AuthenticatorFunc(func(*http.Request, *AuthRequirement) (identity.Identity, error) { return identity.Identity{}, nil }), nil
	}
	dp, err := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Auth: auth})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		res := resources(listenerRDS(t, testListener, "r"), routeConfig("r", prefixRoute("p", "/", "a")),
			[]*cluster.Cluster{edsCluster("a")}, loadAssignment(t, "a", "127.0.0.1:1"))
		switch kind % 4 {
		case 0:
			var m listener.Listener
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			res.Listeners[m.GetName()] = &m
		case 1:
			var m route.RouteConfiguration
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			res.Routes[m.GetName()] = &m
		case 2:
			var m cluster.Cluster
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			res.Clusters[m.GetName()] = &m
		case 3:
			var m endpoint.ClusterLoadAssignment
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			res.Endpoints[m.GetClusterName()] = &m
		}
		if err := dp.Validate(res); err != nil && strings.Contains(err.Error(), "internal error") {
			t.Fatalf("build panicked: %v", err)
		}
	})
}

// TestWriteFuzzCorpus regenerates the committed seed corpus under
// testdata/fuzz/FuzzBuild when PETMESH_UPDATE_FUZZ_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("PETMESH_UPDATE_FUZZ_CORPUS") != "1" {
		t.Skip("set PETMESH_UPDATE_FUZZ_CORPUS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzBuild")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds(t) {
		b, err := proto.Marshal(s[1].(proto.Message))
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", s[0].(byte), b)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
