package store_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/petmesh/petmesh/services/pets/store"
)

// postgresDSN returns the test server's DSN, skipping the test when none
// is configured, unless PETMESH_REQUIRE_REAL=1 demands it.
func postgresDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("PETMESH_TEST_POSTGRES_DSN")
	if dsn == "" {
		if os.Getenv("PETMESH_REQUIRE_REAL") == "1" {
			t.Fatal("PETMESH_TEST_POSTGRES_DSN is not set and PETMESH_REQUIRE_REAL=1")
		}
		t.Skip("PETMESH_TEST_POSTGRES_DSN is not set")
	}
	return dsn
}

// freshSchema creates an empty schema, dropped when the test ends, and
// returns dsn with search_path set to it, so that every test (and every
// run) starts from an empty database.
func freshSchema(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	admin := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { _ = admin.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "pets_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func newPostgres(t *testing.T) store.Store {
	t.Helper()
	dsn := freshSchema(t, postgresDSN(t))
	s, err := store.Open(t.Context(), dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestPostgresConformance(t *testing.T) {
	postgresDSN(t)
	runConformance(t, newPostgres)
}

// TestConcurrentMigrations opens several stores on one empty database at
// once, as instances starting together do; each migration must apply once.
func TestConcurrentMigrations(t *testing.T) {
	tests := []struct {
		desc string
		dsn  func(t *testing.T) string
	}{
		{desc: "sqlite", dsn: func(t *testing.T) string { return "sqlite://" + t.TempDir() + "/pets.db" }},
		{desc: "postgres", dsn: func(t *testing.T) string { return freshSchema(t, postgresDSN(t)) }},
	}
	for _, tc := range tests {
		t.Run(tc.desc, func(t *testing.T) {
			dsn := tc.dsn(t)
			var wg sync.WaitGroup
			errs := make([]error, 5)
			stores := make([]*store.SQLStore, len(errs))
			for i := range errs {
				wg.Go(func() { stores[i], errs[i] = store.Open(t.Context(), dsn, store.Options{}) })
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("open %d: %v", i, err)
				}
				t.Cleanup(func() { _ = stores[i].Close() })
			}
			var n int
			if err := stores[0].DB().QueryRowContext(t.Context(), `SELECT count(*) FROM pets_schema_migrations`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Fatalf("%d migration rows, want 1", n)
			}
			if _, err := stores[1].Upsert(t.Context(), fixtures(3)); err != nil {
				t.Fatal(err)
			}
			if c, err := stores[4].Count(t.Context()); err != nil || c != 3 {
				t.Fatalf("count via another store = %d, %v", c, err)
			}
		})
	}
}
