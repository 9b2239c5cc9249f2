// Package petstest serves the real pets API in-process, over a real store
// on a loopback socket, for the tests of the pets service and of its
// clients (the sync service).
package petstest

import (
	"net/http/httptest"
	"testing"

	"github.com/petmesh/petmesh/internal/telemetry"
	"github.com/petmesh/petmesh/services/pets"
	"github.com/petmesh/petmesh/services/pets/store"
)

// Server is the pets API that Serve runs.
type Server struct {
	*httptest.Server
	// Store is the store the API serves from, for checking what it holds.
	Store *store.SQLStore
}

// Serve opens the store at dsn (sqlite://PATH or a PostgreSQL URL, as
// store.Open takes), traced by and registering its metrics with tel, and
// serves the pets API over it with opts on a 127.0.0.1 socket. The server
// and then the store are closed when the test ends.
func Serve(t testing.TB, dsn string, tel *telemetry.Telemetry, opts pets.HandlerOptions) *Server {
	t.Helper()
	st, err := store.Open(t.Context(), dsn, store.Options{Tracer: tel.Tracer("store"), Registerer: tel.Registry})
	if err != nil {
		t.Fatalf("open store %s: %v", dsn, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	h, err := pets.NewHandler(st, tel, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Server{Server: srv, Store: st}
}
