// Package apitest starts the control-plane API over real parts for tests
// of the API and of petctl: a file route store seeded with the default
// table, the built-in registry with three instances, the xDS server on a
// loopback port, and tokens from a real issuer, behind an httptest server
// on 127.0.0.1:0.
package apitest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/petmesh/petmesh/controlplane/api"
	"github.com/petmesh/petmesh/controlplane/registry"
	"github.com/petmesh/petmesh/controlplane/routes"
	"github.com/petmesh/petmesh/controlplane/store"
	"github.com/petmesh/petmesh/controlplane/translate"
	"github.com/petmesh/petmesh/controlplane/xds"
	"github.com/petmesh/petmesh/internal/httpx"
	"github.com/petmesh/petmesh/internal/jwtauth"
	"github.com/petmesh/petmesh/internal/jwtauth/jwttest"
	"github.com/petmesh/petmesh/internal/telemetry"
)

// Env is a running control-plane API and its parts.
type Env struct {
	URL      string // the API's base URL
	XDSAddr  string // host:port of the ADS server
	Store    *store.FileStore
	Registry *registry.Memory
	XDS      *xds.Server
	// Tokens of subjects alice (admin), bob (viewer) and carol (no role).
	Admin, Viewer, Nobody string

	ctx context.Context
	wg  *sync.WaitGroup
}

// Registrations are the instances the registry starts with.
var Registrations = []registry.Registration{
	{Service: "pets", ID: "pets-1", Address: "127.0.0.1", Port: 7001, Version: "v1", TTL: time.Hour},
	{Service: "pets", ID: "pets-2", Address: "127.0.0.1", Port: 7011, Version: "v2", TTL: time.Hour},
	{Service: "stats", ID: "stats-1", Address: "127.0.0.1", Port: 7003, TTL: time.Hour},
}

// Start starts an Env; everything stops when t ends.
func Start(t *testing.T) *Env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	e := &Env{ctx: ctx, wg: &wg}

	st, err := store.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Put(ctx, 0, routes.Default(), "seed", "initial table"); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.NewMemory(registry.MemoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range Registrations {
		if err := reg.Register(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := xds.New(xds.Options{Tables: st, Registry: reg, Translate: translate.Options{
		JWTProviders: []translate.JWTProvider{{
			Name: "petmesh", Issuer: "petmesh-test", Audiences: []string{"petmesh"},
			JWKSURI: "http://127.0.0.1:8080/.well-known/jwks.json",
		}},
		EdgeLocalAddress: "127.0.0.1:8080",
	}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []func(context.Context) error{reg.Run, srv.Run, func(ctx context.Context) error { return srv.Serve(ctx, ln) }} {
		wg.Go(func() {
			if err := f(ctx); err != nil {
				t.Error(err)
			}
		})
	}

	is := jwttest.New(t, "petmesh-test")
	v, err := jwtauth.NewVerifier(jwtauth.VerifierConfig{Issuers: []jwtauth.TrustedIssuer{{Issuer: "petmesh-test", Audiences: []string{"petmesh"}, Keys: is.Keys}}})
	if err != nil {
		t.Fatal(err)
	}
	var ready httpx.Readiness
	ready.SetCheck(func(context.Context) error {
		if !srv.Ready() {
			return errors.New("xds state not built yet")
		}
		return nil
	})
	ready.SetReady(true)
	h, err := api.New(api.Options{Store: st, Proxies: srv, Registry: reg, Verifier: v, Telemetry: telemetry.NewTest(io.Discard), Ready: &ready})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)

	e.URL, e.XDSAddr, e.Store, e.Registry, e.XDS = hs.URL, ln.Addr().String(), st, reg, srv
	e.Admin, e.Viewer, e.Nobody = is.Token("alice", api.RoleAdmin), is.Token("bob", api.RoleViewer), is.Token("carol")
	return e
}

// Go runs f until t ends (f must return when its context is done).
func (e *Env) Go(f func(context.Context)) {
	e.wg.Go(func() { f(e.ctx) })
}
