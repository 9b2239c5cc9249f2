// Package xdstest runs the real control-plane xDS server (controlplane/xds)
// for tests: a file route store seeded with the default table, the
// built-in registry and the server's change loop, serving gRPC on a free
// loopback port with the given server options (token interceptors, TLS).
// Everything stops when the test ends.
package xdstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/controlplane/xds"
	tu "github.com/petmesh/petmesh/internal/testutil"
	"github.com/petmesh/petmesh/internal/xds/client"
	"github.com/petmesh/petmesh/internal/xds/resource"
)

// TranslateOptions returns the translate options Start uses when none are
// given: the edge's JWT provider and its local address.
func TranslateOptions() translate.Options {
	return translate.Options{
		JWTProviders: []translate.JWTProvider{{
			Name: "petmesh", Issuer: "petmesh-edge", Audiences: []string{"petmesh"},
			JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json",
		}},
		EdgeLocalAddress: "127.0.0.1:8080",
	}
}

// Options configure Start.
type Options struct {
	// Server configures the xDS server. Start sets Tables, Registry and
	// Registerer; Translate defaults to TranslateOptions when it has no
	// JWT provider, and QuietPeriod and MaxDelay to 20ms and 200ms when
	// both are zero.
	Server xds.Options
	// ServeOptions are passed to every Serve (interceptors, credentials).
	ServeOptions []grpc.ServerOption
}

// ControlPlane is a running xDS server and its inputs. Its gRPC serving
// can be stopped and started again on the same address (a control-plane
// restart as the proxies see it) while its state stays. Stop, Serve,
// Restart and Addr are safe for concurrent use.
type ControlPlane struct {
	Server   *xds.Server
	Store    *store.FileStore
	Registry *registry.Memory
	Metrics  *prometheus.Registry // the server's metrics

	serveOpts []grpc.ServerOption

	mu        sync.Mutex
	addr      string
	stopServe context.CancelFunc
	served    chan struct{}
}

// Start runs the control plane until the test ends and returns it once
// its xDS state is built.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, 0, routes.Default(), "test", "seed"); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.NewMemory(registry.MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	prom := prometheus.NewRegistry()
	so := opts.Server
	so.Tables, so.Registry, so.Registerer = st, reg, prom
	if so.Translate.JWTProviders == nil {
		so.Translate = TranslateOptions()
	}
	if so.QuietPeriod == 0 && so.MaxDelay == 0 {
		so.QuietPeriod, so.MaxDelay = 20*time.Millisecond, 200*time.Millisecond
	}
	srv, err := xds.New(so)
	if err != nil {
		t.Fatal(err)
	}
	cp := &ControlPlane{Server: srv, Store: st, Registry: reg, Metrics: prom, serveOpts: opts.ServeOptions}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := reg.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() {
		if err := srv.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	cp.Serve(t, "127.0.0.1:0")
	t.Cleanup(func() {
		cp.Stop()
		cancel()
		wg.Wait()
		_ = st.Close()
	})
	tu.Eventually(t, 5*time.Second, func() error {
		if !srv.Ready() {
			return errors.New("xds state not built yet")
		}
		return nil
	})
	return cp
}

// Addr is the address gRPC is served on.
func (cp *ControlPlane) Addr() string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.addr
}

// Serve starts serving gRPC on addr, retrying while the address is still
// taken (a socket of the previous Serve may linger). Call Stop first if
// it is serving.
func (cp *ControlPlane) Serve(t testing.TB, addr string) {
	t.Helper()
	var ln net.Listener
	tu.Eventually(t, 5*time.Second, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := cp.Server.Serve(ctx, ln, cp.serveOpts...); err != nil {
			t.Error(err)
		}
	}()
	cp.mu.Lock()
	cp.addr, cp.stopServe, cp.served = ln.Addr().String(), cancel, done
	cp.mu.Unlock()
}

// Stop stops serving gRPC (every stream ends) and waits until it has.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	stop, done := cp.stopServe, cp.served
	cp.stopServe = nil
	cp.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// Restart stops serving and serves again on the same address.
func (cp *ControlPlane) Restart(t testing.TB) {
	t.Helper()
	cp.Stop()
	cp.Serve(t, cp.Addr())
}

// StartClient creates an ADS client with cfg and runs it until the test
// ends; Run returning an error fails the test.
func StartClient(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// EdgeNode is the node of edge instance inst, listening on 8080.
func EdgeNode(inst string) *core.Node {
	return &core.Node{Id: resource.EdgeNodeID(inst), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()}
}

// Synced waits until srv reports the proxy id in sync (every type ACKed
// at its latest version) and c, that proxy's client, holds those
// versions; it returns the proxy's status.
func Synced(t testing.TB, srv *xds.Server, c *client.Client, id string) xds.ProxyStatus {
	t.Helper()
	var st xds.ProxyStatus
	tu.Eventually(t, 10*time.Second, func() error {
		var ok bool
		st, ok = srv.Proxy(id)
		if !ok {
			return fmt.Errorf("%s unknown to the control plane (client stream error: %v)", id, c.StreamError())
		}
		if !st.Synced || len(st.Types) != 4 {
			return fmt.Errorf("%s not synced: %+v", id, st.Types)
		}
		v := c.Versions()
		for _, ts := range st.Types {
			if v[ts.TypeURL] != ts.Latest {
				return fmt.Errorf("%s: client has %s %q, latest %q", id, ts.Type, v[ts.TypeURL], ts.Latest)
			}
		}
		return nil
	})
	return st
}
