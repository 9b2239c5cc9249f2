package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
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

// realCP is the real control-plane xDS server (controlplane/xds) with a
// file route store and the built-in registry, serving on a loopback
// socket. Its gRPC serving can be stopped and started again on the same
// address (a control-plane restart as the proxies see it) while its state
// stays.
type realCP struct {
	srv   *xds.Server
	store *store.FileStore
	reg   *registry.Memory
	prom  *prometheus.Registry
	addr  string
	opts  []grpc.ServerOption

	mu        sync.Mutex
	stopServe context.CancelFunc
	served    chan struct{}
}

func startRealCP(t testing.TB, serveOpts ...grpc.ServerOption) *realCP {
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
	srv, err := xds.New(xds.Options{
		Tables: st, Registry: reg, Registerer: prom,
		Translate: translate.Options{
			JWTProviders: []translate.JWTProvider{{
				Name: "petmesh", Issuer: "petmesh-edge", Audiences: []string{"petmesh"},
				JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json",
			}},
			EdgeLocalAddress: "127.0.0.1:8080",
		},
		QuietPeriod: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	cp := &realCP{srv: srv, store: st, reg: reg, prom: prom, opts: serveOpts}
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
	cp.serve(t, "127.0.0.1:0")
	t.Cleanup(func() {
		cp.stop()
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

// serve starts serving gRPC on addr.
func (cp *realCP) serve(t testing.TB, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	tu.Eventually(t, 5*time.Second, func() error { // the old socket may linger
		ln, err = net.Listen("tcp", addr)
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := cp.srv.Serve(ctx, ln, cp.opts...); err != nil {
			t.Error(err)
		}
	}()
	cp.mu.Lock()
	cp.addr, cp.stopServe, cp.served = ln.Addr().String(), cancel, done
	cp.mu.Unlock()
}

// stop stops serving gRPC (every stream ends).
func (cp *realCP) stop() {
	cp.mu.Lock()
	stop, done := cp.stopServe, cp.served
	cp.stopServe = nil
	cp.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// restart stops serving and serves again on the same address.
func (cp *realCP) restart(t testing.TB) {
	cp.stop()
	cp.serve(t, cp.addr)
}

func edgeNode(inst string) *core.Node {
	return &core.Node{Id: resource.EdgeNodeID(inst), Metadata: resource.NodeMeta{ListenPort: 8080}.Struct()}
}

// proxy is an ADS client of the real control plane whose Apply records
// every snapshot it accepts and can be told to reject.
type proxy struct {
	c    *client.Client
	prom *prometheus.Registry

	mu      sync.Mutex
	applied []*client.Snapshot
	reject  func(*client.Snapshot) error
}

func (p *proxy) applies() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.applied)
}

// startProxy runs a client with cfg (Server, Node, Apply and the backoff
// filled in when empty) until the test ends.
func startProxy(t testing.TB, cfg client.Config) *proxy {
	t.Helper()
	p := &proxy{prom: prometheus.NewRegistry()}
	if cfg.Node == nil {
		cfg.Node = edgeNode("e1")
	}
	cfg.Apply = func(_ context.Context, s *client.Snapshot) error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.reject != nil {
			if err := p.reject(s); err != nil {
				return err
			}
		}
		p.applied = append(p.applied, s)
		return nil
	}
	if cfg.BackoffMin == 0 {
		cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Registerer = p.prom
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.c = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// synced waits until the control plane reports the proxy in sync at its
// latest versions and the client holds them.
func synced(t testing.TB, cp *realCP, p *proxy, id string) xds.ProxyStatus {
	t.Helper()
	var st xds.ProxyStatus
	tu.Eventually(t, 10*time.Second, func() error {
		var ok bool
		st, ok = cp.srv.Proxy(id)
		if !ok {
			return fmt.Errorf("%s unknown to the control plane (client stream error: %v)", id, p.c.StreamError())
		}
		if !st.Synced || len(st.Types) != 4 {
			return fmt.Errorf("%s not synced: %+v", id, st.Types)
		}
		v := p.c.Versions()
		for _, ts := range st.Types {
			if v[ts.TypeURL] != ts.Latest {
				return fmt.Errorf("%s: client has %s %q, latest %q", id, ts.Type, v[ts.TypeURL], ts.Latest)
			}
		}
		return nil
	})
	return st
}

// metric returns the value of a counter or gauge in reg (0 when absent)
// whose labels include want.
func metric(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// testCA writes a CA certificate and a server certificate (for
// "xds.petmesh.test" and 127.0.0.1) signed by it into dir.
func testCA(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "petmesh test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "xds.petmesh.test"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"xds.petmesh.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}
