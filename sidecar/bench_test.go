package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/internal/dataplane"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/meshauth"
	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// benchInbound is the sidecar's inbound listener as Run builds it: the
// control plane's translation for a sidecar node of "pets" (bulkhead 1024),
// meshauth with the issuer's keys, the loopback health bypass, the access
// log queue (written to io.Discard) and the tracer provider and propagator
// of telemetry, in front of a real app on loopback.
type benchInbound struct {
	handler http.Handler
	token   string
	auth    *meshauth.Factory
}

func newBenchInbound(b *testing.B, tp trace.TracerProvider) *benchInbound {
	b.Helper()
	body := []byte(`{"id":"42","name":"Rex","species":"Dog","age":3,"tags":["good","boy"]}`)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(app.Close)
	_, portStr, _ := net.SplitHostPort(app.Listener.Addr().String())
	appPort, _ := strconv.Atoi(portStr)

	ks, err := jwtauth.OpenKeyStore(jwtauth.KeyStoreConfig{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	is, err := jwtauth.NewIssuer(jwtauth.IssuerConfig{Issuer: "bench", Audience: []string{"petmesh"}, TTL: time.Hour, Keys: ks})
	if err != nil {
		b.Fatal(err)
	}
	tok, err := is.Issue("bench-user", []string{"viewer"})
	if err != nil {
		b.Fatal(err)
	}

	tab, err := routes.Load([]byte("routes:\n  - name: pets\n    match: {prefix: /pets}\n    targets: [{service: pets}]\nservices:\n  pets:\n    bulkhead: {max_concurrent: 1024}\n"), routes.ValidateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	node := translate.Node{
		ID:   resource.NodeID{Kind: resource.KindSidecar, Service: "pets", Instance: "pets-bench"},
		Meta: resource.NodeMeta{Service: "pets", Version: "v1", InboundPort: 15001, OutboundPort: 15002, AppPort: appPort},
	}
	tr, err := translate.Translate(tab, nil, node, translate.Options{
		JWTProviders: []translate.JWTProvider{{Name: "petmesh", Issuer: "bench", Audiences: []string{"petmesh"}, JWKSURI: "http://127.0.0.1:1/jwks"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	res := dataplane.Resources{
		Listeners: map[string]*listenerv3.Listener{}, Routes: map[string]*routev3.RouteConfiguration{},
		Clusters: map[string]*clusterv3.Cluster{}, Endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
	}
	for _, x := range tr.Listeners {
		res.Listeners[x.GetName()] = x
	}
	for _, x := range tr.Routes {
		res.Routes[x.GetName()] = x
	}
	for _, x := range tr.Clusters {
		res.Clusters[x.GetName()] = x
	}
	for _, x := range tr.Endpoints {
		res.Endpoints[x.GetClusterName()] = x
	}
	adapted, err := meshauth.Adapt(&res)
	if err != nil {
		b.Fatal(err)
	}

	tel := telemetry.NewTest(io.Discard)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	auth, err := meshauth.New(meshauth.Options{Logger: log, Local: map[string]jwtauth.KeySource{"bench": ks}})
	if err != nil {
		b.Fatal(err)
	}
	al, err := newAccessLog(io.Discard, slog.LevelInfo, []any{"service", "sidecar-pets"}, log, 4096, time.Second, tel.Registry)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { al.run(ctx) })
	b.Cleanup(func() { cancel(); wg.Wait() })
	dp, err := dataplane.New(dataplane.Options{
		Logger: log, Registerer: tel.Registry,
		Auth:           healthBypass(auth.AuthFactory(), "/health"),
		AccessLog:      al.record,
		TracerProvider: tp, Propagator: tel.Propagator,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(dp.Close)
	if err := dp.Apply(context.Background(), adapted); err != nil {
		b.Fatal(err)
	}
	return &benchInbound{handler: &gate{next: dp.Handler(resource.ListenerInbound)}, token: tok.Raw, auth: auth}
}

// BenchmarkInbound measures the inbound hot path with a cached token
// verification: "handler" calls the listener's handler directly (the
// sidecar's own work and the upstream round trip to the app), "tcp" goes
// through a real HTTP server and a keep-alive client on loopback as the
// edge would (its allocations include the client's). The in-process app's
// own allocations are included in both (about 30 per request). allocs/op
// is the figure to watch: unlike time on a shared machine it is not noisy.
//
//	go test -run XXX -bench Inbound -benchtime 5000x ./sidecar/
func BenchmarkInbound(b *testing.B) {
	tel := telemetry.NewTest(io.Discard)
	for _, v := range []struct {
		name string
		tp   trace.TracerProvider
	}{
		// As Run configures it without an OTLP trace exporter: no-op spans.
		{"default", spanProvider(tel.TracerProvider, func(string) string { return "" })},
		// With an exporter: a recorded server and client span per request.
		{"spans-exported", spanProvider(tel.TracerProvider, func(k string) string {
			return map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}[k]
		})},
	} {
		b.Run(v.name, func(b *testing.B) {
			bi := newBenchInbound(b, v.tp)
			bi.handler.(*gate).open.Store(true)
			check := func(b *testing.B, code int) {
				if code != http.StatusOK {
					b.Fatalf("status %d", code)
				}
			}
			b.Run("handler", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					req := httptest.NewRequest(http.MethodGet, "http://pets/pets/42", nil)
					req.RemoteAddr = "127.0.0.1:5555"
					req.Header.Set("Authorization", "Bearer "+bi.token)
					w := httptest.NewRecorder()
					bi.handler.ServeHTTP(w, req)
					check(b, w.Code)
				}
			})
			b.Run("tcp", func(b *testing.B) {
				srv := httptest.NewServer(bi.handler)
				defer srv.Close()
				client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				defer client.CloseIdleConnections()
				hdr := "Bearer " + bi.token
				b.ReportAllocs()
				for b.Loop() {
					req, _ := http.NewRequest(http.MethodGet, srv.URL+"/pets/42", nil)
					req.Header.Set("Authorization", hdr)
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					check(b, resp.StatusCode)
				}
			})
			if s := bi.auth.Stats(); s.SignatureChecks > 1 {
				b.Fatalf("%d signature checks, want the token verified once and then cached", s.SignatureChecks)
			}
		})
	}
}
