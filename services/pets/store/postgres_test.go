package store_test

import (
	"sync"
	"testing"

	"github.com/petmesh/petmesh/internal/testutil/pgtest"
	"github.com/petmesh/petmesh/services/pets/store"
)

func newPostgres(t *testing.T) store.Store {
	t.Helper()
	dsn := pgtest.FreshSchema(t, pgtest.DSN(t), "pets_test")
	s, err := store.Open(t.Context(), dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestPostgresConformance(t *testing.T) {
	pgtest.DSN(t)
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
		{desc: "postgres", dsn: func(t *testing.T) string { return pgtest.FreshSchema(t, pgtest.DSN(t), "pets_test") }},
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
